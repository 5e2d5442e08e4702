/*
 * bound.c -- the interruption timeline's memory beyond one call (scope.c
 * has the timeline itself): which statements were seen interrupted and
 * since when, which connections the shim abandoned, and the messages that
 * say why.
 *
 * Statement records.  A statement can span many calls (a COPY is one
 * PQgetCopyData per row, a query result one PQgetResult per statement, a
 * pipeline many), so the point where its interruption was first seen, and
 * its cancel requests, are kept per connection: from
 * the first wait that sees the task interrupted until a query-type call
 * leaves the connection idle or broken (the statement is over), the task
 * stops being interrupted, PQreset or PQfinish.  The next statement -- the
 * ROLLBACK after a cancelled one -- starts afresh with its own grace.
 *
 * Cancel requests.  PostgreSQL applies a cancel only to a statement that
 * is executing: a request that reaches the backend while it is still
 * waiting for the statement's bytes (a loaded machine, a slow network) is
 * dropped, and the statement would run on to the give-up point, costing
 * the connection.  So while the statement has not ended the request goes
 * again, as the pool's reset does (pool_tasks.c, stop_running): 20 ms
 * after the first, then 40, 80 ... (at most 1 s) apart, until the give-up
 * point.  Never two at once: the next one waits until the lane is done
 * with the last (answered, unanswered within its bound, or failed), so a
 * postmaster that answers nothing costs one lane thread per statement,
 * whatever the pauses.  A request that arrives after the statement ended
 * finds the backend idle and does nothing; one still on its way then is
 * the "flying" case below.
 *
 * Abandoning.  When a statement has not ended by its give-up point, its
 * socket is replaced by a dead one: dup3() of one end of a socketpair whose
 * other end is closed, over the connection's descriptor number.  The swap
 * is atomic (libpq's descriptor never refers to nothing, nor to somebody
 * else's file), the old TCP socket is closed with it (nothing of the old
 * session can ever be read again, so no later call can misread it), and
 * libpq's own next read sees end-of-file and drops the connection itself:
 * CONNECTION_BAD, its usual failure value, its usual message.  Whatever
 * the epoll set held for the old socket vanished with it; the close
 * generation (scope.c) makes the next wait on that number fresh.
 *
 * Messages.  libpq's messages for these ends ("server closed the
 * connection unexpectedly", "select() failed: Connection timed out") do not
 * say why.  libpq has no public way to add text to a connection's message
 * without I/O, so the shim wraps PQerrorMessage, PQresultErrorMessage and
 * PQresultVerboseErrorMessage: for a connection it abandoned (while it is
 * CONNECTION_BAD), and for the result the abandoned call returned, they
 * return libpq's text followed by one line "pqawait: ...".  Every other
 * call of theirs, and everything while nothing is marked (one relaxed
 * load), is libpq's own string.  The returned string lives until the
 * connection's message changes, or until PQfinish/PQreset (PQclear for a
 * result) -- as libpq's own; the verbose one is the caller's to PQfreemem,
 * as libpq's own (the line is appended to libpq's malloc'd string).
 *
 * Cancels still flying.  PostgreSQL's cancel process signals the backend
 * twice (the process and its group); when the statement ends on the first
 * signal, the second one can arrive after the client already sent its next
 * statement, which then fails with 57014 too -- a statement of a task that
 * may no longer be interrupted.  So a record whose statement ended while
 * its cancel request was still on its way (the lane had not seen the
 * postmaster close the request's connection, which it does after both
 * signals) stays on a "flying" list, and the next query-type call on that
 * connection waits for it first, briefly (scope.c, pqawait__before_call).
 *
 * One process-wide mutex guards the lists; it is taken only while records
 * or marks exist.  A record is only ever changed by the thread using its
 * connection (libpq's own rule), so the mutex orders list changes, not
 * uses.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <pqawait.h>

#include "bound.h"
#include "preload.h"
#include "real.h"
#include "scope.h"
#include "tsan.h"

struct rec {
    PGconn *conn;
    awaitlet_task *task;      /* statement records: the interrupted task */
    double since;             /* where its timeline started */
    int cause;                /* ECANCELED / ETIMEDOUT */
    int sent;                 /* cancel requests started for the statement */
    int no_more;              /* none (more) can be sent: broken, or no PGcancel */
    double next_at;           /* when to look at the requests again */
    double pause;             /* then the one after: the back-off */
    pqawait__cancel *cancel;  /* the lane's last request, NULL when none or inline */
    char *line;               /* marks: the line naming the cause */
    char *base, *built;       /* marks: libpq's message last seen, and it + line */
    struct rec *next;
};

struct res_mark {
    const PGresult *res;
    char *msg;                /* libpq's message + the line */
    const char *line;         /* in msg: the line, for PQresultVerboseErrorMessage */
    struct res_mark *next;
};

/* Taken through pqawait__lock/unlock: a statement's timeline runs inside
 * the shim's poll (pqawait__interrupted, pqawait__timeline), where TSan
 * does not see the lock itself (tsan.h). */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct rec *stmts, *marks, *flying;
static struct res_mark *results;
int pqawait__stmts;           /* records in `stmts`, atomic */
int pqawait__flying;          /* records in `flying`, atomic */
static int n_marks, n_results; /* atomic */

static double grace_s = 0.1, give_up_s = 1.0; /* atomic access */

/* fork(): no other thread may hold mu across it (the child would find it
 * taken for ever). */
static void fork_prepare(void) { pthread_mutex_lock(&mu); }
static void fork_release(void) { pthread_mutex_unlock(&mu); }

__attribute__((constructor)) static void bound_atfork(void)
{
    (void)pthread_atfork(fork_prepare, fork_release, fork_release);
}

PQAWAIT_EXPORT int pqawait_set_interrupt_bounds(double grace, double give_up)
{
    if (isnan(grace) || isnan(give_up) || grace < 0 || give_up <= grace || give_up > 3600) {
        errno = EINVAL;
        return -1;
    }
    __atomic_store(&grace_s, &grace, __ATOMIC_RELAXED);
    __atomic_store(&give_up_s, &give_up, __ATOMIC_RELAXED);
    return 0;
}

double pqawait__grace(void)
{
    double v;
    __atomic_load(&grace_s, &v, __ATOMIC_RELAXED);
    return v;
}

double pqawait__give_up(void)
{
    double v;
    __atomic_load(&give_up_s, &v, __ATOMIC_RELAXED);
    return v;
}

static int load(const int *n)
{
    return __atomic_load_n(n, __ATOMIC_RELAXED);
}

static void add(int *n, int d)
{
    __atomic_add_fetch(n, d, __ATOMIC_RELAXED);
}

/* With mu held: unlink conn's record from *list, or NULL. */
static struct rec *take_locked(struct rec **list, const PGconn *conn)
{
    for (struct rec **p = list; *p; p = &(*p)->next) {
        struct rec *r = *p;
        if (r->conn == conn) {
            *p = r->next;
            r->next = NULL;
            return r;
        }
    }
    return NULL;
}

static struct rec *find_locked(struct rec *list, const PGconn *conn)
{
    for (; list; list = list->next)
        if (list->conn == conn)
            return list;
    return NULL;
}

static void rec_free(struct rec *r)
{
    if (!r)
        return;
    if (r->cancel)
        pqawait__cancel_release(r->cancel);
    free(r->line);
    free(r->base);
    free(r->built);
    free(r);
}

/* ---- statement records ---- */

double pqawait__stmt_seen(PGconn *conn, awaitlet_task *task, double now, int cause)
{
    pqawait__lock(&mu);
    struct rec *r = find_locked(stmts, conn);
    if (r && r->task == task) {
        now = r->since;
    } else if (r) {
        r->task = task; /* another task goes on with the same statement */
        r->since = now;
        r->cause = cause;
    } else if ((r = calloc(1, sizeof *r)) != NULL) {
        r->conn = conn;
        r->task = task;
        r->since = now;
        r->cause = cause;
        r->next = stmts;
        stmts = r;
        add(&pqawait__stmts, 1);
    } /* no memory: the statement's timeline starts at every call */
    pqawait__unlock(&mu);
    return now;
}

static int in_flight(const struct rec *r)
{
    return r->cancel && pqawait__cancel_state(r->cancel) == PQAWAIT__CANCEL_PENDING;
}

#define PAUSE_FIRST 0.02
#define PAUSE_MAX 1.0

double pqawait__stmt_cancel(PGconn *conn, double now)
{
    pqawait__lock(&mu);
    struct rec *r = find_locked(stmts, conn);
    pqawait__unlock(&mu);
    /* r stays: only this thread (the one using conn) removes it.  No
     * record (no memory): nothing is sent, the give-up point ends it. */
    if (!r || r->no_more)
        return -1;
    if (now < r->next_at)
        return r->next_at;
    if (r->pause == 0)
        r->pause = PAUSE_FIRST;
    r->next_at = now + r->pause;
    r->pause = r->pause * 2 < PAUSE_MAX ? r->pause * 2 : PAUSE_MAX;
    if (in_flight(r))
        return r->next_at; /* one at a time: look again later */
    /* A query-type call waiting means something is in flight (a statement,
     * a COPY, PQfn -- which libpq does not count as PQTRANS_ACTIVE); a
     * cancel that arrives when nothing runs does nothing. */
    PGcancel *c = PQstatus(conn) == CONNECTION_OK ? PQgetCancel(conn) : NULL;
    if (!c) {
        r->no_more = 1; /* broken already, or no cancel key: nothing to send */
        return -1;
    }
    int saved = errno;
    /* Fire and forget: the lane's threads send it, each request bounded;
     * r->cancel tells how it went (the next look, and the message should
     * we give up). */
    PQAWAIT__STAT(OFFLOADS);
    if (r->cancel)
        pqawait__cancel_release(r->cancel);
    r->sent++;
    r->cancel = pqawait__cancel_start(c, 1);
    if (!r->cancel) {
        /* No lane thread at all: a bounded request on this thread beats
         * leaving the statement running. */
        char errbuf[256];
        (void)pqawait__cancel_inline(c, errbuf, (int)sizeof errbuf);
        PQfreeCancel(c);
    }
    errno = saved;
    return r->next_at;
}

void pqawait__stmt_forget(PGconn *conn)
{
    if (!load(&pqawait__stmts))
        return;
    pqawait__lock(&mu);
    struct rec *r = take_locked(&stmts, conn);
    if (r) {
        add(&pqawait__stmts, -1);
        if (in_flight(r)) {
            /* its cancel may still hit the next statement: keep it */
            struct rec *old = take_locked(&flying, conn);
            if (old)
                add(&pqawait__flying, -1);
            r->next = flying;
            flying = r;
            add(&pqawait__flying, 1);
            r = old;
        }
    }
    pqawait__unlock(&mu);
    rec_free(r);
}

int pqawait__cancel_flying(const PGconn *conn)
{
    if (!load(&pqawait__flying))
        return 0;
    pqawait__lock(&mu);
    struct rec *r = find_locked(flying, conn);
    int fly = r && in_flight(r);
    if (r && !fly) {
        r = take_locked(&flying, conn);
        add(&pqawait__flying, -1);
    } else {
        r = NULL;
    }
    pqawait__unlock(&mu);
    rec_free(r);
    return fly;
}

void pqawait__stmt_leave(PGconn *conn)
{
    if (!load(&pqawait__stmts))
        return;
    if (PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) == PQTRANS_ACTIVE)
        return; /* the statement goes on (COPY, more results, a pipeline) */
    pqawait__stmt_forget(conn);
}

/* ---- abandoning ---- */

/* Make fd a socket whose peer is gone (see the top of the file). */
static void kill_socket(int fd)
{
    int sv[2];
    if (fd < 0)
        return;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0) {
        close(sv[1]);
        if (dup3(sv[0], fd, O_CLOEXEC) < 0)
            (void)shutdown(fd, SHUT_RDWR);
        close(sv[0]);
    } else {
        (void)shutdown(fd, SHUT_RDWR); /* out of descriptors: the next best end */
    }
}

static const char *cause_words(int cause)
{
    return cause == ECANCELED ? "the task was cancelled (awaitlet_cancel)"
                              : "the task's deadline passed (awaitlet_set_deadline)";
}

/* What became of a statement's cancel requests, for the message: "cancel
 * request: <the one's fate>", or "cancel requests: N sent, the last
 * <its fate>". */
static void cancel_words(const struct rec *r, char *buf, size_t n)
{
    if (!r || r->sent == 0) {
        snprintf(buf, n, "cancel request: %s", r && r->no_more ? "none could be sent" : "none was sent");
        return;
    }
    int k = r->sent > 1 ? snprintf(buf, n, "cancel requests: %d sent, the last ", r->sent)
                        : snprintf(buf, n, "cancel request: ");
    if (k < 0 || (size_t)k >= n)
        return;
    buf += k;
    n -= (size_t)k;
    if (!r->cancel) {
        snprintf(buf, n, "sent");
        return;
    }
    switch (pqawait__cancel_state(r->cancel)) {
    case PQAWAIT__CANCEL_PENDING:
        snprintf(buf, n, "no answer yet");
        break;
    case PQAWAIT__CANCEL_ANSWERED:
        snprintf(buf, n, "answered, but the statement did not end");
        break;
    case PQAWAIT__CANCEL_UNANSWERED:
        snprintf(buf, n, "not answered");
        break;
    default: {
        const char *e = pqawait__cancel_error(r->cancel);
        if (strncmp(e, "pqawait: ", 9) == 0) /* the lane's own cause line (cancel.c) */
            e += 9;
        size_t len = strlen(e);
        while (len && (e[len - 1] == '\n' || e[len - 1] == ' '))
            len--;
        snprintf(buf, n, "could not be sent: %.*s", (int)len, e);
        break;
    }
    }
}

/* With mu held: conn's mark becomes r (replacing an older one). */
static void mark_locked(struct rec *r)
{
    struct rec *old = take_locked(&marks, r->conn);
    if (old) {
        add(&n_marks, -1);
        rec_free(old);
    }
    r->next = marks;
    marks = r;
    add(&n_marks, 1);
}

void pqawait__stmt_abandon(PGconn *conn, int fd, int cause)
{
    kill_socket(fd);
    pqawait__newsock(fd); /* another socket under the same number */
    pqawait__lock(&mu);
    struct rec *r = take_locked(&stmts, conn);
    if (r)
        add(&pqawait__stmts, -1);
    pqawait__unlock(&mu);
    char cw[300], line[512];
    cancel_words(r, cw, sizeof cw);
    snprintf(line, sizeof line,
             "pqawait: connection closed: %s, and the statement had not ended %.1f s later "
             "(%s)\n",
             cause_words(cause), pqawait__give_up(), cw);
    if (!r)
        r = calloc(1, sizeof *r);
    if (!r)
        return; /* no memory: libpq's own message only */
    if (r->cancel) {
        pqawait__cancel_release(r->cancel);
        r->cancel = NULL;
    }
    r->conn = conn;
    r->line = strdup(line);
    pqawait__lock(&mu);
    mark_locked(r);
    pqawait__unlock(&mu);
}

void pqawait__connect_abandoned(PGconn *conn, int cause)
{
    if (!conn)
        return;
    char line[256];
    snprintf(line, sizeof line, "pqawait: connection attempt abandoned: %s\n", cause_words(cause));
    struct rec *r = calloc(1, sizeof *r);
    if (!r)
        return;
    r->conn = conn;
    r->line = strdup(line);
    pqawait__lock(&mu);
    mark_locked(r);
    pqawait__unlock(&mu);
}

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

void pqawait__result_abandoned(PGconn *conn, PGresult *res)
{
    if (!res || !conn || !pqawait__real.PQresultErrorMessage)
        return;
    struct res_mark *m = calloc(1, sizeof *m);
    if (!m)
        return;
    pqawait__lock(&mu);
    struct rec *r = find_locked(marks, conn);
    if (r && r->line) {
        const char *base = pqawait__real.PQresultErrorMessage(res);
        m->msg = concat(base, r->line);
        if (m->msg)
            m->line = m->msg + strlen(base);
    }
    if (m->msg) {
        m->res = res;
        m->next = results;
        results = m;
        add(&n_results, 1);
    }
    pqawait__unlock(&mu);
    if (!m->msg)
        free(m);
}

void pqawait__conn_forget(const PGconn *conn)
{
    if (!load(&pqawait__stmts) && !load(&n_marks) && !load(&pqawait__flying))
        return;
    pqawait__lock(&mu);
    struct rec *s = take_locked(&stmts, conn), *m = take_locked(&marks, conn),
               *f = take_locked(&flying, conn);
    if (s)
        add(&pqawait__stmts, -1);
    if (m)
        add(&n_marks, -1);
    if (f)
        add(&pqawait__flying, -1);
    pqawait__unlock(&mu);
    rec_free(s);
    rec_free(m);
    rec_free(f);
}

/* ---- the message wrappers ---- */

/* The rare paths out of line, so the common one is a load, a test and a
 * tail call. */
static __attribute__((noinline)) char *error_message_marked(const PGconn *conn, char *msg)
{
    pqawait__lock(&mu);
    struct rec *r = find_locked(marks, conn);
    if (r && r->line && PQstatus(conn) == CONNECTION_BAD) {
        if (!r->base || strcmp(r->base, msg) != 0) {
            /* libpq's message changed (a later call on conn): rebuild */
            free(r->base);
            free(r->built);
            r->base = strdup(msg);
            r->built = concat(msg, r->line);
            if (!r->base || !r->built) {
                free(r->base);
                free(r->built);
                r->base = r->built = NULL;
            }
        }
        if (r->built)
            msg = r->built;
    }
    pqawait__unlock(&mu);
    return msg;
}

PQAWAIT_EXPORT char *PQerrorMessage(const PGconn *conn)
{
    __typeof__(PQerrorMessage) *real = PQAWAIT__REAL(PQerrorMessage);
    if (!real)
        return (char *)"pqawait: PQerrorMessage is missing from libpq\n";
    char *msg = real(conn);
    if (__builtin_expect(!load(&n_marks), 1) || !conn || !msg)
        return msg;
    return error_message_marked(conn, msg);
}

static __attribute__((noinline)) char *result_message_marked(const PGresult *res)
{
    char *msg = NULL;
    pqawait__lock(&mu);
    for (struct res_mark *m = results; m; m = m->next)
        if (m->res == res) {
            msg = m->msg;
            break;
        }
    pqawait__unlock(&mu);
    return msg ? msg : pqawait__real.PQresultErrorMessage(res);
}

PQAWAIT_EXPORT char *PQresultErrorMessage(const PGresult *res)
{
    __typeof__(PQresultErrorMessage) *real = PQAWAIT__REAL(PQresultErrorMessage);
    if (!real)
        return (char *)"";
    if (__builtin_expect(!load(&n_results), 1) || !res)
        return real(res);
    return result_message_marked(res);
}

/* libpq builds this message afresh at each call (the caller frees it with
 * PQfreemem, i.e. free()), so the line is appended to libpq's own string. */
static __attribute__((noinline)) char *verbose_message_marked(const PGresult *res, char *msg)
{
    pqawait__lock(&mu);
    for (struct res_mark *m = results; m; m = m->next)
        if (m->res == res) {
            size_t la = strlen(msg), lb = strlen(m->line);
            char *s = realloc(msg, la + lb + 1);
            if (s) { /* no memory: libpq's own message only */
                memcpy(s + la, m->line, lb + 1);
                msg = s;
            }
            break;
        }
    pqawait__unlock(&mu);
    return msg;
}

PQAWAIT_EXPORT char *PQresultVerboseErrorMessage(const PGresult *res, PGVerbosity verbosity,
                                                 PGContextVisibility show_context)
{
    __typeof__(PQresultVerboseErrorMessage) *real = PQAWAIT__REAL(PQresultVerboseErrorMessage);
    if (!real) {
        errno = ENOSYS;
        return NULL; /* libpq's own failure value (no memory) */
    }
    char *msg = real(res, verbosity, show_context);
    if (__builtin_expect(!load(&n_results), 1) || !res || !msg)
        return msg;
    return verbose_message_marked(res, msg);
}

/* res is about to be freed: drop its mark. */
static __attribute__((noinline)) void clear_marked(PGresult *res)
{
    struct res_mark *gone = NULL;
    pqawait__lock(&mu);
    for (struct res_mark **p = &results; *p; p = &(*p)->next)
        if ((*p)->res == res) {
            gone = *p;
            *p = gone->next;
            add(&n_results, -1);
            break;
        }
    pqawait__unlock(&mu);
    if (gone) {
        free(gone->msg);
        free(gone);
    }
}

PQAWAIT_EXPORT void PQclear(PGresult *res)
{
    __typeof__(PQclear) *real = PQAWAIT__REAL(PQclear);
    if (!real)
        return;
    if (__builtin_expect(load(&n_results) != 0, 0) && res)
        clear_marked(res);
    real(res);
}
