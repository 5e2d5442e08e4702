/*
 * hooks.c -- poll and getaddrinfo: the two places where libpq blocks.
 *
 * libpq's socket is always nonblocking; every wait it makes (connect steps
 * with connect_timeout, PQgetResult, flushing, COPY, PQfn...) goes through
 * pqSocketPoll, which is one poll() on its connection's socket asking for
 * POLLIN and/or POLLOUT (plus POLLERR).  Host names are looked up with
 * getaddrinfo.  Both are reached through libpq's PLT, so defining them
 * here puts the shim in the path without copying any of libpq's logic:
 * results are byte-identical to libpq's because libpq's own code produced
 * them.
 *
 * They cooperate only for libpq's own waits, and are the real functions
 * for everybody else -- libev, the application, other threads, tasks
 * outside libpq, signal handlers, and user code that libpq calls back
 * (notice processors: callbacks.c).  Inside a scope (scope.h):
 *   poll, one descriptor, the scope's connection socket (any descriptor
 *   while a connect has no connection yet), POLLIN and/or POLLOUT asked
 *   (POLLERR/POLLHUP/POLLNVAL allowed), a timeout:
 *       -> awaitlet_io on it, the timeout kept across retries;
 *   the same with timeout 0 (libpq's pqReadReady/pqWriteReady looks)
 *       -> the real poll: the kernel's answer, EINTR included;
 *   any other poll -> the real poll, except the program's own waits in
 *       a task outside libpq, which select.c makes awaitlet_poll;
 *   getaddrinfo in a connect -> the real one on a worker thread, as an
 *       abandonable offload (awaitlet_offload_start/_wait) that the
 *       interruption timeline (scope.c) may give up; unless there is
 *       nothing to look up (an address literal such as host=127.0.0.1
 *       and a numeric port): the real one at once, as anywhere else.
 * __poll_chk, what _FORTIFY_SOURCE builds may call instead of poll, is
 * routed the same way.
 *
 * What a cooperative poll returns is what the kernel's would: after the
 * wake-up, one zero-timeout poll of the descriptor gives the exact revents
 * (POLLIN|POLLHUP for a readable hang-up, POLLERR...).  That look is
 * skipped when libpq's own code is the caller (the return address lies in
 * libpq's text): pqSocketPoll reads only poll's count, never revents, so
 * nobody could observe the difference, and the query path stays at no
 * extra system call.  Whatever sits between libpq and us (a sanitizer's
 * interceptor, a tracer) gets the exact answer.
 *
 * A signal interrupting the kernel's poll is not an interruption of the
 * task.  A real one (awaitlet_interrupted) starts the scope's interruption
 * timeline (scope.c): from then on each wait lasts at most until the
 * timeline's next point, where the statement's cancel goes out or the call
 * is abandoned -- a statement's poll then reports its (dead) socket ready,
 * a connect's or PQfinish's poll fails with ETIMEDOUT or ECANCELED, and a
 * lookup returns EAI_SYSTEM, leaving its job to the worker.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <awaitlet.h>

#include "preload.h"
#include "real.h"
#include "scope.h"

/* libpq's executable segment, found once (pqawait__hooks_init) */
static uintptr_t libpq_lo, libpq_hi;

struct text_find {
    uintptr_t addr, lo, hi;
};

static int text_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct text_find *f = data;
    if (!info->dlpi_name || !info->dlpi_name[0])
        return 0; /* libpq inside the executable: its code is the program's too */
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (f->addr >= lo && f->addr < hi) {
            f->lo = lo;
            f->hi = hi;
            return 1;
        }
    }
    return 0;
}

void pqawait__hooks_init(const void *libpq_fn)
{
    if (!libpq_fn)
        return;
    struct text_find f = {(uintptr_t)libpq_fn, 0, 0};
    dl_iterate_phdr(text_cb, &f);
    libpq_lo = f.lo;
    libpq_hi = f.hi;
}

static int from_libpq(const void *ra)
{
    uintptr_t a = (uintptr_t)ra;
    return a >= libpq_lo && a < libpq_hi;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds left of a poll timeout in ms started at t0; -1: none. */
static double remaining(int timeout_ms, double t0)
{
    if (timeout_ms < 0)
        return -1;
    double left = (double)timeout_ms * 1e-3 - (mono() - t0);
    return left > 0 ? left : 0;
}

/* What libpq asks for; anything else is not one of its waits. */
static int libpq_events(short ev)
{
    return (ev & (POLLIN | POLLOUT)) && !(ev & ~(POLLIN | POLLOUT | POLLERR | POLLHUP | POLLNVAL));
}

/* The kernel's answer now, a signal notwithstanding. */
static int look(struct pollfd *p)
{
    int n;
    do
        n = pqawait__real.poll(p, 1, 0);
    while (n < 0 && errno == EINTR);
    return n;
}

/* The call is abandoned (scope.c's timeline): no wait any more.  A
 * statement's socket is dead by now, so the kernel's answer is "ready"
 * (end-of-file, hang-up) and libpq's own read ends the call; a connect or
 * PQfinish gets the wait's failure, which ends it in libpq. */
static int abandoned_poll(pqawait__scope *sc, struct pollfd *p)
{
    if (sc->flags & PQAWAIT__F_CANCEL)
        return look(p);
    errno = sc->cause;
    return -1;
}

/* libpq's wait inside scope sc.  Inlined, with wait_of, into poll_in_task
 * (and __poll_chk): the compiler kept both out of line, three frames per
 * wait where one does. */
static inline __attribute__((always_inline)) int coop_poll(pqawait__scope *sc, struct pollfd *p, int timeout_ms,
                                                            const void *ra)
{
    if (timeout_ms == 0)
        return pqawait__real.poll(p, 1, 0);
    int events = (p->events & POLLIN ? AWAITLET_READ : 0) | (p->events & POLLOUT ? AWAITLET_WRITE : 0);
    double t0 = timeout_ms < 0 ? 0 : mono(); /* libpq's query waits have none */
    for (;;) {
        double left = remaining(timeout_ms, t0);
        if (left == 0)
            return pqawait__real.poll(p, 1, 0);
        /* an interrupted call waits only up to its timeline's next point */
        if (sc->tl && pqawait__timeline(sc, &left))
            return abandoned_poll(sc, p);
        /* suspension point 1 */
        PQAWAIT__STAT(WAITS);
        int r = awaitlet_io(p->fd, events | pqawait__wait_flags(sc, p->fd), left);
        pqawait__waited(sc, r);
        if (r > 0) {
            if (from_libpq(ra)) { /* pqSocketPoll: only the count is read */
                p->revents = (short)((r & AWAITLET_READ ? POLLIN : 0) | (r & AWAITLET_WRITE ? POLLOUT : 0));
                return 1;
            }
            int n = look(p);
            if (n != 0)
                return n;
            continue; /* no longer ready: wait on */
        }
        if (r == 0) {
            if (sc->tl && remaining(timeout_ms, t0) != 0)
                continue; /* a point of the timeline, not libpq's timeout */
            p->revents = 0;
            return 0;
        }
        if (errno == EBADF) {
            p->revents = POLLNVAL; /* what poll says about a closed descriptor */
            return 1;
        }
        if (errno == EINTR && awaitlet_interrupted()) {
            pqawait__interrupted(sc); /* the timeline starts; never waits */
            continue;
        }
        return -1; /* an unshielded wait cancelled (PQsocketPoll), or a real error */
    }
}

/* The scope whose wait this poll is, or NULL. */
static inline __attribute__((always_inline)) pqawait__scope *wait_of(struct pollfd *fds, nfds_t nfds)
{
    if (nfds != 1 || !libpq_events(fds[0].events))
        return NULL;
    pqawait__scope *sc = pqawait__wait_scope();
    return sc && pqawait__owns_fd(sc, fds[0].fd) ? sc : NULL;
}

/* poll inside a task: libpq's own wait (a suspension point, in coop_poll),
 * the program's own (select.c), or anything else straight on.  Out of line
 * so that the exported poll builds no frame on its path outside tasks.
 * ra: the exported poll's return address (coop_poll's statistics site). */
static __attribute__((noinline)) int poll_in_task(__typeof__(poll) *real, struct pollfd *fds,
                                                  nfds_t nfds, int timeout, const void *ra)
{
    pqawait__scope *sc = wait_of(fds, nfds);
    if (sc)
        return coop_poll(sc, fds, timeout, ra);
    if (timeout != 0 && pqawait__prog_ok(nfds)) /* the program's own wait in a task: select.c */
        return pqawait__prog_poll(fds, nfds, timeout);
    return real(fds, nfds, timeout);
}

/* Not resolved yet (another library's constructor polls), or no poll. */
static __attribute__((noinline, cold)) int poll_late(struct pollfd *fds, nfds_t nfds, int timeout)
{
    if (!PQAWAIT__REAL(poll)) {
        errno = ENOSYS;
        return -1;
    }
    return poll(fds, nfds, timeout);
}

PQAWAIT_EXPORT int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    __typeof__(poll) *real = __atomic_load_n(&pqawait__real.poll, __ATOMIC_ACQUIRE);
    if (__builtin_expect(!real, 0))
        return poll_late(fds, nfds, timeout);
    /* outside tasks (libev's own poll backend, plain libpq): straight on;
     * pqawait__prog_ok answers 0 there too (awaitlet_in_context) */
    if (__builtin_expect(awaitlet__cur == NULL, 1))
        return real(fds, nfds, timeout);
    return poll_in_task(real, fds, nfds, timeout, __builtin_return_address(0));
}

PQAWAIT_EXPORT int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen)
{
    pqawait__scope *sc;
    if (!PQAWAIT__REAL(__poll_chk) || !pqawait__real.poll) {
        errno = ENOSYS;
        return -1;
    }
    if (awaitlet__cur && fdslen / sizeof *fds >= nfds && (sc = wait_of(fds, nfds)) != NULL)
        return coop_poll(sc, fds, timeout, __builtin_return_address(0));
    if (fdslen / sizeof *fds >= nfds && timeout != 0 && pqawait__prog_ok(nfds))
        return pqawait__prog_poll(fds, nfds, timeout); /* select.c */
    return pqawait__real.__poll_chk(fds, nfds, timeout, fdslen); /* checks, or aborts */
}

/* ---- host-name lookups ---- */

/* A lookup offloaded to a worker.  It may be abandoned (the connect's
 * timeline gave up on it) while the worker is still inside getaddrinfo, so
 * it owns copies of its inputs -- libpq frees its host strings when the
 * connection is finished -- and whoever finishes last frees it and the
 * late answer (awaitlet_offload_abandon). */
struct gai_job {
    char *node, *service;
    struct addrinfo hints;
    int has_hints;
    struct addrinfo *res;
    int rc, err;
};

static void *gai_run(void *arg)
{
    struct gai_job *g = arg;
    g->rc = pqawait__real.getaddrinfo(g->node, g->service, g->has_hints ? &g->hints : NULL, &g->res);
    g->err = errno; /* EAI_SYSTEM reports through errno */
    return NULL;
}

static void gai_free(void *arg, void *result)
{
    (void)result;
    struct gai_job *g = arg;
    if (g->rc == 0 && g->res)
        freeaddrinfo(g->res);
    free(g->node);
    free(g->service);
    free(g);
}

static struct gai_job *gai_new(const char *node, const char *service, const struct addrinfo *hints)
{
    struct gai_job *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->node = node ? strdup(node) : NULL;
    g->service = service ? strdup(service) : NULL;
    if (hints) {
        /* POSIX: the other fields of hints must be zero or NULL */
        g->hints.ai_flags = hints->ai_flags;
        g->hints.ai_family = hints->ai_family;
        g->hints.ai_socktype = hints->ai_socktype;
        g->hints.ai_protocol = hints->ai_protocol;
        g->has_hints = 1;
    }
    if ((node && !g->node) || (service && !g->service)) {
        gai_free(g, NULL);
        return NULL;
    }
    return g;
}

/* The lookup on a worker, waited for on the scope's timeline: 0 with *rc
 * getaddrinfo's answer, or -1 if it could not be offloaded this way. */
static int gai_offload(pqawait__scope *sc, const char *node, const char *service,
                       const struct addrinfo *hints, struct addrinfo **res, int *rc)
{
    struct gai_job *g = gai_new(node, service, hints);
    awaitlet_job *job = g ? awaitlet_offload_start(gai_run, g) : NULL;
    if (!job) {
        if (g)
            gai_free(g, NULL);
        return -1;
    }
    PQAWAIT__STAT(OFFLOADS);
    for (;;) {
        double left = -1;
        if (sc->tl && pqawait__timeline(sc, &left)) {
            /* abandoned: the worker frees its late answer */
            (void)awaitlet_offload_abandon(job, gai_free);
            errno = sc->cause;
            *rc = EAI_SYSTEM;
            return 0;
        }
        /* suspension point 2 */
        int r = awaitlet_offload_wait(job, left, NULL);
        if (r == 1) {
            *rc = g->rc;
            *res = g->res;
            g->res = NULL;
            int err = g->err;
            gai_free(g, NULL);
            errno = err;
            return 0;
        }
        if (r < 0 && errno == EINTR && awaitlet_interrupted()) {
            pqawait__interrupted(sc); /* the timeline starts */
        } else if (r < 0) {
            /* EAGAIN: a fork child without workers, the job is released;
             * anything else cannot happen for a task's own job */
            if (errno != EAGAIN)
                (void)awaitlet_offload_abandon(job, gai_free);
            else
                gai_free(g, NULL);
            return -1;
        }
        /* r == 0: a point of the timeline */
    }
}

/* A lookup with nothing to look up: no node or an address literal, no
 * service or a numeric one, and no flag that makes glibc consult anything
 * (AI_CANONNAME may ask the resolver for a name, AI_ADDRCONFIG reads the
 * interfaces).  glibc answers it from the strings alone, so it runs on
 * the task's own thread: a connect to an IP address costs no thread hop
 * (two context switches, a worker's lock) and cannot wait for a worker.
 * libpq's host=ADDRESS connects are all of this kind. */
static int nothing_to_look_up(const char *node, const char *service, const struct addrinfo *hints)
{
    unsigned char addr[sizeof(struct in6_addr)];
    if (hints && (hints->ai_flags & (AI_CANONNAME | AI_ADDRCONFIG)))
        return 0;
    if (service) {
        if (!*service)
            return 0;
        for (const char *p = service; *p; p++)
            if (*p < '0' || *p > '9')
                return 0;
    }
    return !node || inet_pton(AF_INET, node, addr) == 1 || inet_pton(AF_INET6, node, addr) == 1;
}

struct gai_call {
    const char *node, *service;
    const struct addrinfo *hints;
    struct addrinfo **res;
    int rc, err;
};

static void *gai_worker(void *arg)
{
    struct gai_call *c = arg;
    c->rc = pqawait__real.getaddrinfo(c->node, c->service, c->hints, c->res);
    c->err = errno; /* EAI_SYSTEM reports through errno */
    return NULL;
}

PQAWAIT_EXPORT int getaddrinfo(const char *node, const char *service,
                               const struct addrinfo *hints, struct addrinfo **res)
{
    if (!PQAWAIT__REAL(getaddrinfo)) {
        errno = ENOSYS;
        return EAI_SYSTEM;
    }
    pqawait__scope *sc = awaitlet__cur ? pqawait__wait_scope() : NULL;
    if (!sc || !(sc->flags & PQAWAIT__F_CONNECT) || nothing_to_look_up(node, service, hints))
        return pqawait__real.getaddrinfo(node, service, hints, res);
    if (sc->tl == PQAWAIT__TL_GONE) {
        errno = sc->cause; /* the connect is abandoned: no new lookup */
        return EAI_SYSTEM;
    }
    int rc;
    if (gai_offload(sc, node, service, hints, res, &rc) == 0)
        return rc;
    /* No abandonable job (no memory, no worker): the plain offload, which
     * a deadline cannot cut short, or inline if no worker can be started. */
    struct gai_call c = { node, service, hints, res, 0, 0 };
    /* suspension point 2 */
    PQAWAIT__STAT(OFFLOADS);
    if (awaitlet_offload(gai_worker, &c, NULL) < 0)
        gai_worker(&c); /* no worker thread: block rather than fail the connection */
    errno = c.err;
    return c.rc;
}
