/*
 * slowgai.c -- a slow resolver for one name, for the interruption bounds
 * (test_bound.c): a host-name lookup that takes seconds, reliably, on a
 * machine without network or DNS.
 *
 * Built as a small shared library linked into the test program *after*
 * libpqawait, so it sits between the shim and libc in the lookup order:
 * the shim's getaddrinfo hook (what libpq calls) runs the "real"
 * getaddrinfo -- the next definition after the shim, this one -- on its
 * worker thread, exactly as it would run libc's.  For the name
 * PQA_SLOW_HOST this one sleeps pqa_slowgai_seconds and then answers
 * 127.0.0.1; every other name goes to libc unchanged.  The counters let a
 * test see that an abandoned lookup still ran to its end (and, under ASan
 * or valgrind, that its late answer was freed).
 */

#include <dlfcn.h>
#include <netdb.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "slowgai.h"

double pqa_slowgai_seconds = 2.0;
atomic_int pqa_slowgai_started, pqa_slowgai_finished;

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

__attribute__((visibility("default"))) int getaddrinfo(const char *node, const char *service,
                                                        const struct addrinfo *hints,
                                                        struct addrinfo **res)
{
    static gai_fn next;
    if (!next)
        next = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (!node || strcmp(node, PQA_SLOW_HOST) != 0)
        return next(node, service, hints, res);
    atomic_fetch_add(&pqa_slowgai_started, 1);
    double s = pqa_slowgai_seconds;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
    struct addrinfo h = {0};
    if (hints) {
        h.ai_family = hints->ai_family;
        h.ai_socktype = hints->ai_socktype;
        h.ai_protocol = hints->ai_protocol;
        h.ai_flags = hints->ai_flags;
    }
    h.ai_flags |= AI_NUMERICHOST;
    int rc = next("127.0.0.1", service, &h, res);
    atomic_fetch_add(&pqa_slowgai_finished, 1);
    return rc;
}
