/*
 * cancel.c -- the cancel lane: server cancel requests that never hold up
 * a task, the loop, or the shared offload workers.
 *
 * libpq's PQcancel opens a fresh *blocking* socket, connects, sends the
 * cancel key and blocks in recv() until the postmaster closes the
 * connection -- with no timeout at all.  A postmaster that does not answer
 * (stopped, overloaded, a proxy that accepts and forwards nothing) keeps
 * it there forever; the kernel completes the TCP handshake all the same.
 * So the shim never lets a task wait for a cancel it sends on its own:
 *
 *   - Requests go to the shim's own threads (the lane), never to
 *     awaitlet's offload pool, so host name lookups and other offloaded
 *     work never queue behind a hung cancel.  Threads are started on
 *     demand (at most LANE_MAX), block every signal (so a signal storm
 *     cannot stretch their bounds through EINTR retries), and end after
 *     LANE_IDLE s without work.
 *   - Each request is bounded: on a lane thread, the shim's exported
 *     connect() -- which libpq reaches through its PLT -- sets SO_SNDTIMEO
 *     and SO_RCVTIMEO on the new socket (half of pqawait_set_cancel_timeout
 *     each; on Linux SO_SNDTIMEO bounds connect() too).  PQcancel then
 *     gives up on its own: connect fails with EINPROGRESS, or recv fails
 *     with EAGAIN, which PQcancel takes as "sent".  Outside lane threads
 *     connect is a pure pass-through.  libpq's text for the first
 *     ("PQcancel() -- connect() failed: error 115") names neither the
 *     cause nor the server, so the shim puts a line before it that does
 *     (first: a short errbuf truncates libpq's part, not the cause).
 *   - The interrupted scope hands its request over and keeps waiting on
 *     its own socket for the statement to end; the request's state
 *     (answered, unanswered, failed) stays readable while the scope holds
 *     a reference.
 *
 * pqawait_cancel, the public call, keeps PQcancel's contract: inside a task
 * it queues the request on the lane and waits for the outcome (bounded,
 * cooperatively); outside a task, in a signal handler, or with no lane
 * thread, it is PQcancel itself.
 */
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>

#include <awaitlet.h>
#include <pqawait.h>

#include "cancel.h"
#include "real.h"
#include "tsan.h"

#define LANE_MAX 16           /* threads at most; more requests queue */
#define LANE_IDLE 10          /* s: an idle thread ends */
#define LANE_STACK (256 << 10)

struct pqawait__cancel {
    PGcancel *cancel;
    int owned;                /* free cancel when done */
    int state;                /* PQAWAIT__CANCEL_*, atomic */
    int refs;                 /* atomic */
    pqawait__cancel *next;    /* queue */
    char errbuf[256];
};

/* Taken through pqawait__lock/unlock: pqawait__cancel_start runs inside
 * the shim's poll too (a task's interruption timeline), where TSan does
 * not see the lock itself (tsan.h). */
static pthread_mutex_t lane_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t lane_cv;
static pthread_once_t lane_once = PTHREAD_ONCE_INIT;
static pqawait__cancel *queue_head, *queue_tail;
static int lane_threads, lane_idle;
static double cancel_timeout = 5.0; /* seconds, atomic access */

/* Set on lane threads (and around an inline request): connect() bounds
 * the socket it connects by this much each way; 0 elsewhere. */
static PQAWAIT__TLS struct timeval lane_bound;
static PQAWAIT__TLS int lane_active;
static PQAWAIT__TLS double lane_connected_at;
/* The request's connect gave up (its SO_SNDTIMEO bound), and where to. */
static PQAWAIT__TLS int lane_connect_timed_out;
static PQAWAIT__TLS struct sockaddr_storage lane_addr;
static PQAWAIT__TLS socklen_t lane_addr_len;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

PQAWAIT_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (!PQAWAIT__REAL(connect)) {
        errno = ENOSYS;
        return -1;
    }
    if (__builtin_expect(lane_active, 0)) {
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &lane_bound, sizeof lane_bound);
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &lane_bound, sizeof lane_bound);
        int r = pqawait__real.connect(fd, addr, len);
        int e = errno;
        lane_connected_at = mono();
        /* a blocking connect fails with EINPROGRESS only when its bound passed */
        lane_connect_timed_out = r < 0 && e == EINPROGRESS;
        lane_addr_len = len < (socklen_t)sizeof lane_addr ? len : (socklen_t)sizeof lane_addr;
        memcpy(&lane_addr, addr, lane_addr_len);
        errno = e;
        return r;
    }
    return pqawait__real.connect(fd, addr, len);
}

PQAWAIT_EXPORT int pqawait_set_cancel_timeout(double seconds)
{
    if (isnan(seconds) || seconds <= 0 || seconds > 3600) {
        errno = EINVAL;
        return -1;
    }
    __atomic_store(&cancel_timeout, &seconds, __ATOMIC_RELAXED);
    return 0;
}

/* "HOST:PORT", "[HOST]:PORT" or the socket's path, of lane_addr. */
static void format_addr(char *buf, size_t n)
{
    char host[INET6_ADDRSTRLEN] = "?";
    const struct sockaddr *sa = (const struct sockaddr *)&lane_addr;
    if (lane_addr_len < (socklen_t)sizeof sa->sa_family) {
        snprintf(buf, n, "the server");
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&lane_addr;
        (void)inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(buf, n, "%s:%u", host, (unsigned)ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&lane_addr;
        (void)inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(buf, n, "[%s]:%u", host, (unsigned)ntohs(in6->sin6_port));
    } else if (sa->sa_family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)&lane_addr;
        size_t max = lane_addr_len - offsetof(struct sockaddr_un, sun_path);
        snprintf(buf, n, "%.*s", (int)strnlen(un->sun_path, max), un->sun_path);
    } else {
        snprintf(buf, n, "the server");
    }
}

/* The request could not connect within `bound` s: the cause, then libpq's
 * own text (errbuf holds it). */
static void name_connect_timeout(char *errbuf, int errbufsize, double bound, double timeout)
{
    char libpq[256], where[128];
    snprintf(libpq, sizeof libpq, "%s", errbuf);
    size_t n = strlen(libpq);
    while (n && libpq[n - 1] == '\n')
        libpq[--n] = '\0';
    format_addr(where, sizeof where);
    snprintf(errbuf, (size_t)errbufsize,
             "pqawait: the cancel request to %s was not accepted within %.3g s (half of the cancel timeout, "
             "%.3g s: pqawait_set_cancel_timeout); libpq: %s\n",
             where, bound, timeout, libpq);
}

/* PQcancel with this thread's connect bounded; the outcome as a state. */
static int bounded_cancel(PGcancel *cancel, char *errbuf, int errbufsize)
{
    double t;
    __atomic_load(&cancel_timeout, &t, __ATOMIC_RELAXED);
    double half = t / 2;
    lane_bound.tv_sec = (time_t)half;
    lane_bound.tv_usec = (suseconds_t)((half - (double)lane_bound.tv_sec) * 1e6);
    if (lane_bound.tv_sec == 0 && lane_bound.tv_usec == 0)
        lane_bound.tv_usec = 1;
    lane_connected_at = 0;
    lane_connect_timed_out = 0;
    lane_addr_len = 0;
    lane_active = 1;
    errbuf[0] = '\0';
    int rc = PQcancel(cancel, errbuf, errbufsize);
    lane_active = 0;
    if (!rc) {
        if (lane_connect_timed_out && errbufsize > 0)
            name_connect_timeout(errbuf, errbufsize, half, t);
        return PQAWAIT__CANCEL_FAILED;
    }
    /* PQcancel ignores its recv's error: a timed-out wait for the answer
     * also says "sent" */
    if (lane_connected_at > 0 && mono() - lane_connected_at >= half * 0.9)
        return PQAWAIT__CANCEL_UNANSWERED;
    return PQAWAIT__CANCEL_ANSWERED;
}

int pqawait__cancel_inline(PGcancel *cancel, char *errbuf, int errbufsize)
{
    int saved = lane_active;
    struct timeval tv = lane_bound;
    int st = bounded_cancel(cancel, errbuf, errbufsize);
    lane_active = saved;
    lane_bound = tv;
    return st != PQAWAIT__CANCEL_FAILED;
}

static void release(pqawait__cancel *c)
{
    /* the caller's reference may be dropped inside the shim's poll: the
     * count's ordering said to TSan too (tsan.h) */
    PQAWAIT__TSAN_RELEASE(&c->refs);
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    PQAWAIT__TSAN_ACQUIRE(&c->refs);
    if (c->owned && c->cancel)
        PQfreeCancel(c->cancel);
    free(c);
}

static void *lane_main(void *arg)
{
    (void)arg;
    pqawait__lock(&lane_mu);
    for (;;) {
        while (!queue_head) {
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += LANE_IDLE;
            lane_idle++;
            PQAWAIT__TSAN_RELEASE(&lane_mu); /* the wait unlocks, then locks again */
            int rc = pthread_cond_timedwait(&lane_cv, &lane_mu, &until);
            PQAWAIT__TSAN_ACQUIRE(&lane_mu);
            lane_idle--;
            if (rc == ETIMEDOUT && !queue_head) {
                lane_threads--;
                pqawait__unlock(&lane_mu);
                return NULL;
            }
        }
        pqawait__cancel *c = queue_head;
        queue_head = c->next;
        if (!queue_head)
            queue_tail = NULL;
        pqawait__unlock(&lane_mu);
        int st = bounded_cancel(c->cancel, c->errbuf, (int)sizeof c->errbuf);
        if (c->owned) {
            PQfreeCancel(c->cancel);
            c->cancel = NULL;
        }
        __atomic_store_n(&c->state, st, __ATOMIC_RELEASE);
        release(c);
        pqawait__lock(&lane_mu);
    }
}

/* A child of fork has none of the parent's lane threads. */
static void lane_atfork_child(void)
{
    pthread_mutex_init(&lane_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&lane_cv, &ca);
    pthread_condattr_destroy(&ca);
    queue_head = queue_tail = NULL; /* the parent's requests are not ours to send */
    lane_threads = lane_idle = 0;
}

static void lane_init(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&lane_cv, &ca);
    pthread_condattr_destroy(&ca);
    (void)pthread_atfork(NULL, NULL, lane_atfork_child);
}

/* With lane_mu held: start one more thread.  0, or an errno value. */
static int lane_grow(void)
{
    pthread_attr_t attr;
    pthread_t th;
    sigset_t all, old;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, LANE_STACK);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread starts with every signal blocked */
    int rc = pthread_create(&th, &attr, lane_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc == 0)
        lane_threads++;
    return rc;
}

pqawait__cancel *pqawait__cancel_start(PGcancel *cancel, int owned)
{
    pthread_once(&lane_once, lane_init);
    pqawait__cancel *c = calloc(1, sizeof *c);
    if (!c) {
        errno = ENOMEM;
        return NULL;
    }
    c->cancel = cancel;
    c->owned = owned;
    c->state = PQAWAIT__CANCEL_PENDING;
    c->refs = 2; /* the caller's and the lane's */
    pqawait__lock(&lane_mu);
    if (lane_idle == 0 && lane_threads < LANE_MAX) {
        int rc = lane_grow();
        if (rc != 0 && lane_threads == 0) {
            pqawait__unlock(&lane_mu);
            free(c);
            errno = EAGAIN;
            return NULL;
        }
    }
    if (queue_tail)
        queue_tail->next = c;
    else
        queue_head = c;
    queue_tail = c;
    pthread_cond_signal(&lane_cv);
    pqawait__unlock(&lane_mu);
    return c;
}

int pqawait__cancel_state(const pqawait__cancel *c)
{
    int st = __atomic_load_n(&c->state, __ATOMIC_ACQUIRE);
    PQAWAIT__TSAN_ACQUIRE(&c->state); /* asked inside the shim's poll too (tsan.h) */
    return st;
}

const char *pqawait__cancel_error(const pqawait__cancel *c)
{
    return c->errbuf;
}

void pqawait__cancel_release(pqawait__cancel *c)
{
    release(c);
}

PQAWAIT_EXPORT int pqawait_cancel(PGcancel *cancel, char *errbuf, int errbufsize)
{
    if (!cancel || !awaitlet_in_context() || awaitlet_in_signal_handler())
        return PQcancel(cancel, errbuf, errbufsize);
    pqawait__cancel *c = pqawait__cancel_start(cancel, 0);
    if (!c) /* no lane thread: block briefly, bounded */
        return pqawait__cancel_inline(cancel, errbuf, errbufsize);
    /* Suspension point 5: poll the request's state, cooperatively.  The
     * lane bounds the request, so this ends; shielded, because the lane
     * still uses the caller's PGcancel until it is done. */
    int saved = errno;
    (void)awaitlet_shield(1);
    double step = 0.0005;
    while (pqawait__cancel_state(c) == PQAWAIT__CANCEL_PENDING) {
        (void)awaitlet_sleep(step); /* EINTR (interrupted meanwhile): go on */
        if (step < 0.01)
            step *= 2;
    }
    (void)awaitlet_shield(0);
    int st = pqawait__cancel_state(c);
    if (errbuf && errbufsize > 0) {
        size_t n = strlen(c->errbuf);
        if (n >= (size_t)errbufsize)
            n = (size_t)errbufsize - 1;
        memcpy(errbuf, c->errbuf, n);
        errbuf[n] = '\0';
    }
    release(c);
    errno = saved;
    return st != PQAWAIT__CANCEL_FAILED;
}
