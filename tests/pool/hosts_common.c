/*
 * hosts_common.c -- see hosts_common.h.
 */
#include "hosts_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PTR(i) ((void *)(intptr_t)(i))

int ph_silent_tries(int fd)
{
    int n = 0, c;
    while ((c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        close(c);
        n++;
    }
    ck_assert_msg(errno == EAGAIN || errno == EWOULDBLOCK, "accept: %s", strerror(errno));
    return n;
}

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = 0;
}

/* libpq's own blocking connect, outside any task. */
static void reference(struct ph_scenario *sc)
{
    ck_assert_ptr_null(awaitlet_current());
    double t0 = pqa_now();
    PGconn *c = PQconnectdb(sc->ci);
    sc->ref.secs = pqa_now() - t0;
    sc->ref.ok = PQstatus(c) == CONNECTION_OK;
    snprintf(sc->ref.host, sizeof sc->ref.host, "%s", PQhost(c) ? PQhost(c) : "");
    snprintf(sc->ref.port, sizeof sc->ref.port, "%s", PQport(c) ? PQport(c) : "");
    snprintf(sc->ref.msg, sizeof sc->ref.msg, "%s", PQerrorMessage(c));
    trim(sc->ref.msg);
    PQfinish(c);
}

/* The pool with the same conninfo: its first connect must end as libpq's. */
static void *pool_task(void *arg)
{
    struct ph_scenario *sc = arg;
    /* a connect starts when a task waits (success) or for min_size (failure) */
    pqawait_pool_options o = pt_options(sc->ref.ok ? 0 : 1, 1);
    o.connect_timeout = 30; /* the conninfo's (or the service's) per-host timeout decides */
    o.backoff_max = 5;
    double limit = sc->ref.secs + 6;
    o.timeout = limit; /* acquire waits for the first connect at most this long */
    double t0 = pqa_now();
    pqawait_pool *p = pqawait_pool_new(awaitlet_current_loop(), sc->ci, &o);
    ck_assert_msg(p != NULL, "pqawait_pool_new: %s", strerror(errno));
    struct pqawait_pool_stats s;
    if (sc->ref.ok) {
        PGconn *c = pqawait_pool_acquire(p);
        double secs = pqa_now() - t0;
        ck_assert_msg(c != NULL, "%s: libpq connected to %s:%s after %.2f s, the pool failed after %.2f s: %s",
                      sc->name, sc->ref.host, sc->ref.port, sc->ref.secs, secs,
                      pqawait_pool_error(p) ? pqawait_pool_error(p) : strerror(errno));
        ck_assert_msg(strcmp(PQhost(c), sc->ref.host) == 0 && strcmp(PQport(c), sc->ref.port) == 0,
                      "%s: libpq connected to %s:%s, the pool to %s:%s", sc->name, sc->ref.host,
                      sc->ref.port, PQhost(c), PQport(c));
        ck_assert_int_eq(pt_int(c, "select 1"), 1);
        if (sc->silent_fd >= 0) { /* the silent host was waited on as often as libpq did */
            int tries = ph_silent_tries(sc->silent_fd);
            ck_assert_msg(tries == sc->ref_tries, "%s: libpq tried the silent host %d times, the pool %d",
                          sc->name, sc->ref_tries, tries);
        }
        /* never before libpq could have (its timer counts whole seconds: at most 1 s early per host) */
        ck_assert_msg(secs >= sc->ref.secs - 1.5, "%s: the pool connected after %.2f s, libpq after %.2f s",
                      sc->name, secs, sc->ref.secs);
        pqawait_pool_release(p, c);
        pqawait_pool_stats(p, &s);
        ck_assert_uint_eq(s.connect_failures, 0);
    } else {
        do {
            awaitlet_sleep(0.02);
            pqawait_pool_stats(p, &s);
        } while (s.connect_failures == 0 && s.opened == 0 && pqa_now() - t0 < limit);
        double secs = pqa_now() - t0;
        ck_assert_msg(s.opened == 0, "%s: libpq failed, the pool connected", sc->name);
        ck_assert_msg(s.connect_failures > 0, "%s: the pool's connect did not end in %.2f s (libpq's took %.2f s)",
                      sc->name, secs, sc->ref.secs);
        const char *m = pqawait_pool_error(p);
        ck_assert_msg(m && strcmp(m, sc->ref.msg) == 0,
                      "%s: the pool's error differs from libpq's\n--- libpq:\n%s\n--- pool:\n%s\n---", sc->name,
                      sc->ref.msg, m ? m : "(none)");
        ck_assert_msg(secs >= sc->ref.secs - 1.5, "%s: the pool failed after %.2f s, libpq after %.2f s", sc->name,
                      secs, sc->ref.secs);
        if (sc->silent_fd >= 0) {
            int tries = ph_silent_tries(sc->silent_fd);
            ck_assert_msg(tries == sc->ref_tries, "%s: libpq tried the silent host %d times, the pool %d",
                          sc->name, sc->ref_tries, tries);
        }
    }
    pqawait_pool_close(p);
    return PTR(1);
}

void ph_run(struct ph_scenario *sc, int expect_ok)
{
    reference(sc);
    if (sc->silent_fd >= 0)
        sc->ref_tries = ph_silent_tries(sc->silent_fd);
    ck_assert_msg(sc->ref.ok == expect_ok, "%s: the reference itself %s: %s", sc->name,
                  sc->ref.ok ? "connected" : "failed", sc->ref.msg);
    ck_assert_ptr_eq(pt_run(pool_task, sc, 5), PTR(1));
}

static struct sockaddr_in inet4(const char *addr, int port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    ck_assert_int_eq(inet_pton(AF_INET, addr, &a.sin_addr), 1);
    return a;
}

int ph_silent_listener(struct ph_scenario *sc, const char *addr, int port)
{
    struct sockaddr_in a = inet4(addr, port);
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    ck_assert_int_ge(fd, 0);
    /* an earlier test's connections to this address may be in TIME_WAIT */
    ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), 0);
    ck_assert_msg(bind(fd, (struct sockaddr *)&a, sizeof a) == 0, "bind %s:%d: %s", addr, port, strerror(errno));
    ck_assert_int_eq(listen(fd, 128), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    ck_assert_int_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    sc->silent_fd = fd; /* open until the test's process ends */
    return ntohs(a.sin_port);
}

struct fatal {
    int fd;
    size_t len;
    unsigned char pkt[256];
};

static void *fatal_server(void *arg)
{
    struct fatal *f = arg;
    for (;;) {
        int c = accept4(f->fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        unsigned char buf[1024];
        uint32_t n = 0;
        if (read(c, &n, 4) == 4) { /* the startup packet, read whole */
            n = ntohl(n);
            for (uint32_t got = 4; got < n;) {
                ssize_t k = read(c, buf, n - got < sizeof buf ? n - got : sizeof buf);
                if (k <= 0)
                    break;
                got += (uint32_t)k;
            }
            (void)!write(c, f->pkt, f->len);
        }
        close(c);
    }
    return NULL;
}

int ph_fatal_listener(const char *addr, int port, const char *sqlstate)
{
    struct fatal *f = calloc(1, sizeof *f); /* the server's until the process ends */
    ck_assert_ptr_nonnull(f);
    char body[128];
    int k = snprintf(body, sizeof body, "SFATAL%cVFATAL%cC%s%cMpqawait test: refused%c", 0, 0, sqlstate, 0, 0);
    ck_assert(k > 0 && (size_t)k < sizeof body);
    size_t blen = (size_t)k + 1; /* a final NUL ends the fields */
    uint32_t len = htonl((uint32_t)(4 + blen));
    f->pkt[0] = 'E';
    memcpy(f->pkt + 1, &len, 4);
    memcpy(f->pkt + 5, body, blen);
    f->len = 5 + blen;
    struct sockaddr_in a = inet4(addr, port);
    socklen_t alen = sizeof a;
    int one = 1;
    f->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(f->fd, 0);
    ck_assert_int_eq(setsockopt(f->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), 0);
    ck_assert_msg(bind(f->fd, (struct sockaddr *)&a, sizeof a) == 0, "bind %s:%d: %s", addr, port,
                  strerror(errno));
    ck_assert_int_eq(listen(f->fd, 16), 0);
    ck_assert_int_eq(getsockname(f->fd, (struct sockaddr *)&a, &alen), 0);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, fatal_server, f), 0);
    pthread_detach(t);
    return ntohs(a.sin_port);
}

int ph_refused_port(const char *addr)
{
    struct sockaddr_in a = inet4(addr, 0);
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

void ph_conninfo(struct ph_scenario *sc, const char *hosts)
{
    snprintf(sc->ci, sizeof sc->ci,
             "%s dbname=%s user=pqa_trust sslmode=disable gssencmode=disable application_name=%s",
             hosts, pqa_env_db(), pt_app());
}
