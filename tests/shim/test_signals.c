/*
 * test_signals.c -- signals and the shim.
 *
 * - A process under an interval timer or a profiler (a signal every 100 us,
 *   handlers without SA_RESTART) gets exactly the results it gets without
 *   one: a signal interrupting one of libpq's zero-timeout readiness checks
 *   (pqReadReady & co.) is not an interruption of the task, so no statement
 *   is cancelled (no SQLSTATE 57014).
 * - Every handler the program installs (sigaction, signal, sigset,
 *   bsd_signal, sysv_signal) runs marked as a signal handler for awaitlet
 *   (awaitlet_in_signal_handler), so a poll it makes inside a task's libpq
 *   call is the real poll, never a task switch; while sigaction(2) and
 *   friends report and behave exactly as without the shim (the user's own
 *   handler, SA_SIGINFO, SA_RESETHAND, SA_NODEFER, SIG_IGN, SIG_DFL).
 * - A handler that leaves by siglongjmp leaves the marking too.
 * - A task's stack-overflow message survives a SIGSEGV handler the
 *   application installs after the first task started (the trampoline asks
 *   awaitlet_overflow_report first).
 *
 * The program puts its own poll() in front of the shim's, the way a
 * sanitizer's interceptor or a tracing library sits between libpq and the
 * shim: it forwards to the next definition (the shim's) and, when asked,
 * adds the zero-timeout looks libpq itself makes (pqReadReady) or raises a
 * signal in the middle of libpq's call.
 */
#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "pqawait.h"

/* glibc exports it; its header declares it only for old X/Open levels */
extern __sighandler_t bsd_signal(int sig, __sighandler_t handler);

/* ---- the poll in front of the shim's ---- */

static int probes_per_wait;       /* zero-timeout looks added before each wait */
static unsigned long probes, probe_eintr;
static volatile sig_atomic_t raise_in_poll; /* raise this signal inside the next wait */

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    static int (*next)(struct pollfd *, nfds_t, int);
    if (!next)
        next = (int (*)(struct pollfd *, nfds_t, int))dlsym(RTLD_NEXT, "poll");
    if (nfds == 1 && timeout != 0 && awaitlet_in_context() && !awaitlet_in_signal_handler()) {
        for (int i = 0; i < probes_per_wait; i++) {
            struct pollfd look = {.fd = fds[0].fd, .events = fds[0].events};
            int e = errno;
            if (next(&look, 1, 0) < 0 && errno == EINTR)
                probe_eintr++;
            probes++;
            errno = e;
        }
        int sig = raise_in_poll;
        if (sig) {
            raise_in_poll = 0;
            raise(sig);
        }
    }
    return next(fds, nfds, timeout);
}

START_TEST(test_interposed)
{
    /* libpq's poll reaches the shim through the poll above */
    ck_assert_int_eq(pqawait_interposed(), 1);
    struct ev_loop *loop = pqa_loop_new();
    ev_loop_destroy(loop);
}
END_TEST

/* ---- a timer storm changes nothing ---- */

static atomic_ulong ticks;

static void on_tick(int sig)
{
    (void)sig;
    atomic_fetch_add(&ticks, 1);
}

struct storm {
    int kind, ok, rounds;
    char err[300];
};

#define STORM_ROUNDS 12
#define COPY_ROWS 3000

static void storm_fail(struct storm *s, PGconn *c, const char *what, PGresult *r)
{
    if (s->err[0])
        return;
    const char *ss = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    snprintf(s->err, sizeof s->err, "%s: %s %s", what, ss ? ss : "-", PQerrorMessage(c));
}

static void *storm_task(void *arg)
{
    struct storm *s = arg;
    PGconn *c = pqa_connect((pqa_kind)s->kind, NULL);
    s->ok = 1;
    PGresult *r = PQexec(c, "create temp table st(a int, b text)");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        s->ok = 0, storm_fail(s, c, "create", r);
    PQclear(r);
    for (int i = 0; i < STORM_ROUNDS && s->ok; i++) {
        char sql[96];
        snprintf(sql, sizeof sql, "select pg_sleep(0.05), %d", i);
        r = PQexec(c, sql);
        char want[16];
        snprintf(want, sizeof want, "%d", i);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || strcmp(PQgetvalue(r, 0, 1), want) != 0)
            s->ok = 0, storm_fail(s, c, "pg_sleep", r);
        PQclear(r);
        /* COPY in ... */
        r = PQexec(c, "copy st from stdin");
        if (PQresultStatus(r) != PGRES_COPY_IN)
            s->ok = 0, storm_fail(s, c, "copy in", r);
        PQclear(r);
        for (int k = 0; k < COPY_ROWS && s->ok; k++) {
            char line[64];
            int n = snprintf(line, sizeof line, "%d\trow %d of round %d\n", k, k, i);
            if (PQputCopyData(c, line, n) != 1)
                s->ok = 0, storm_fail(s, c, "put", NULL);
        }
        if (PQputCopyEnd(c, NULL) != 1)
            s->ok = 0, storm_fail(s, c, "copy end", NULL);
        r = PQgetResult(c);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            s->ok = 0, storm_fail(s, c, "copy in result", r);
        PQclear(r);
        while ((r = PQgetResult(c)) != NULL)
            PQclear(r);
        /* ... and out again, row for row */
        r = PQexec(c, "copy (select a, b from st order by a) to stdout");
        if (PQresultStatus(r) != PGRES_COPY_OUT)
            s->ok = 0, storm_fail(s, c, "copy out", r);
        PQclear(r);
        char *buf;
        int n, rows = 0;
        while ((n = PQgetCopyData(c, &buf, 0)) > 0) {
            char line[64];
            snprintf(line, sizeof line, "%d\trow %d of round %d\n", rows, rows, i);
            if (strcmp(buf, line) != 0 && s->ok)
                s->ok = 0, snprintf(s->err, sizeof s->err, "copy out row %d: %s", rows, buf);
            rows++;
            PQfreemem(buf);
        }
        r = PQgetResult(c);
        if (PQresultStatus(r) != PGRES_COMMAND_OK || rows != COPY_ROWS)
            s->ok = 0, storm_fail(s, c, "copy out result", r);
        PQclear(r);
        while ((r = PQgetResult(c)) != NULL)
            PQclear(r);
        r = PQexec(c, "truncate st");
        PQclear(r);
        s->rounds++;
    }
    PQfinish(c);
    return NULL;
}

/* CPU work between the queries, so that ITIMER_PROF (which counts CPU
 * time) fires as often as ITIMER_REAL does */
static void *spinner(void *arg)
{
    const int *stop = arg;
    volatile unsigned long x = 0;
    while (!*stop) {
        double t0 = pqa_now();
        while (pqa_now() - t0 < 0.0002)
            x++;
        awaitlet_yield();
    }
    return NULL;
}

static void run_storm(int which, int sig, unsigned long min_signals, int need_hits)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_tick; /* no SA_RESTART: system calls see EINTR */
    ck_assert_int_eq(sigaction(sig, &sa, NULL), 0);
    probes_per_wait = 40; /* at 100 us a signal meets about one look in a thousand */
    struct itimerval it = {{0, 100}, {0, 100}};
    ck_assert_int_eq(setitimer(which, &it, NULL), 0);

    enum { N = 4 };
    static const pqa_kind kinds[N] = {PQA_UNIX, PQA_TCP, PQA_SSL, PQA_UNIX};
    struct storm s[N];
    awaitlet_task *t[N];
    struct ev_loop *loop = pqa_loop_new();
    for (int i = 0; i < N; i++) {
        memset(&s[i], 0, sizeof s[i]);
        s[i].kind = kinds[i];
        ck_assert_ptr_nonnull(t[i] = awaitlet_async_def(loop, storm_task, &s[i]));
    }
    int stop = 0;
    awaitlet_task *spin = awaitlet_async_def(loop, spinner, &stop);
    ck_assert_ptr_nonnull(spin);
    for (int i = 0; i < N; i++)
        awaitlet_join(t[i]);
    stop = 1;
    awaitlet_join(spin);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(which, &off, NULL);
    ev_loop_destroy(loop);
    probes_per_wait = 0;
    printf("%s storm: %lu signals, %lu zero-timeout looks (%lu interrupted by a signal)\n",
           which == ITIMER_REAL ? "ITIMER_REAL" : "ITIMER_PROF", (unsigned long)atomic_load(&ticks),
           probes, probe_eintr);
    fflush(stdout);
    for (int i = 0; i < N; i++)
        ck_assert_msg(s[i].ok && s[i].rounds == STORM_ROUNDS, "task %d (round %d): %s", i, s[i].rounds,
                      s[i].err);
    ck_assert_msg(atomic_load(&ticks) >= min_signals, "only %lu signals: the storm did not happen",
                  (unsigned long)atomic_load(&ticks));
    /* the test proves something only if signals really hit those looks */
    if (need_hits)
        ck_assert_msg(probe_eintr > 0, "no zero-timeout look was interrupted in %lu tries", probes);
}

START_TEST(test_itimer_real_storm)
{
    run_storm(ITIMER_REAL, SIGALRM, 1000, 1);
}
END_TEST

START_TEST(test_itimer_prof_storm)
{
    /* the kernel accounts CPU time per tick (HZ), so a profiler's timer
     * fires at most a few hundred times a second whatever it asks for:
     * enough to hit libpq mid-call, too rare to hit a zero-timeout look
     * reliably (the ITIMER_REAL storm above does that) */
    run_storm(ITIMER_PROF, SIGPROF, 50, 0);
}
END_TEST

/* ---- a handler's poll inside a task's libpq call ---- */

static int pipe_fd[2];
static volatile sig_atomic_t in_handler;
static int handler_marked = -1, handler_poll_rc = -2;

static void poll_handler(int sig)
{
    (void)sig;
    handler_marked = awaitlet_in_signal_handler();
    in_handler = 1;
    struct pollfd p = {.fd = pipe_fd[0], .events = POLLIN};
    handler_poll_rc = poll(&p, 1, 30); /* nothing writes while the handler runs */
    in_handler = 0;
}

static void *writer_task(void *arg)
{
    int *stop = arg;
    while (!*stop) {
        if (in_handler) /* only reachable if the handler's poll switched tasks */
            (void)!write(pipe_fd[1], "w", 1);
        awaitlet_sleep(0.001);
    }
    return NULL;
}

struct handler_query {
    int ok, stop;
};

static void *handler_query_task(void *arg)
{
    struct handler_query *hq = arg;
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    raise_in_poll = SIGUSR1; /* inside libpq's wait, inside the scope */
    PGresult *r = PQexec(c, "select pg_sleep(0.1), 5");
    hq->ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 1), "5") == 0;
    PQclear(r);
    PQfinish(c);
    hq->stop = 1;
    return NULL;
}

START_TEST(test_handler_poll_is_real)
{
    ck_assert_int_eq(pipe(pipe_fd), 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = poll_handler;
    ck_assert_int_eq(sigaction(SIGUSR1, &sa, NULL), 0);
    struct handler_query hq = {0};
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *w = awaitlet_async_def(loop, writer_task, &hq.stop);
    awaitlet_task *q = awaitlet_async_def(loop, handler_query_task, &hq);
    ck_assert_ptr_nonnull(w);
    ck_assert_ptr_nonnull(q);
    awaitlet_join(q);
    awaitlet_join(w);
    ev_loop_destroy(loop);
    ck_assert_msg(hq.ok, "the query around the signal failed");
    ck_assert_msg(handler_marked == 1, "the handler ran unmarked (awaitlet_in_signal_handler %d)",
                  handler_marked);
    ck_assert_msg(handler_poll_rc == 0, "the handler's poll returned %d: it switched tasks instead "
                  "of being the real poll", handler_poll_rc);
    ck_assert_int_eq(awaitlet_in_signal_handler(), 0);
    close(pipe_fd[0]);
    close(pipe_fd[1]);
}
END_TEST

/* ---- sigaction & co. behave exactly as without the shim ---- */

static volatile sig_atomic_t calls, marked, nested_marked, depth, max_depth;
static volatile int seen_signo, seen_code;

static void note_call(void)
{
    calls++;
    marked += awaitlet_in_signal_handler();
}

static void plain_h(int sig)
{
    (void)sig;
    note_call();
}

static void plain_h2(int sig)
{
    (void)sig;
    note_call();
}

static void info_h(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    note_call();
    seen_signo = si->si_signo;
    seen_code = si->si_code;
}

static void nodefer_h(int sig)
{
    note_call();
    depth++;
    if (depth > max_depth)
        max_depth = depth;
    if (depth == 1)
        raise(sig); /* SA_NODEFER: runs nested, at once */
    if (depth == 1)
        nested_marked = awaitlet_in_signal_handler(); /* still inside the outer handler */
    depth--;
}

static void reset_counts(void)
{
    calls = marked = nested_marked = depth = max_depth = 0;
    seen_signo = seen_code = 0;
}

START_TEST(test_sigaction_semantics)
{
    struct sigaction sa, old;
    /* SA_SIGINFO handler with a mask and flags: reported back unchanged */
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = info_h;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR2);
    ck_assert_int_eq(sigaction(SIGUSR1, &sa, NULL), 0);
    memset(&old, 0, sizeof old);
    ck_assert_int_eq(sigaction(SIGUSR1, NULL, &old), 0);
    ck_assert_msg(old.sa_sigaction == info_h, "sigaction reports %p, not the user's handler %p",
                  (void *)old.sa_sigaction, (void *)info_h);
    ck_assert(old.sa_flags & SA_SIGINFO);
    ck_assert(old.sa_flags & SA_RESTART);
    ck_assert(!(old.sa_flags & SA_RESETHAND));
    ck_assert(sigismember(&old.sa_mask, SIGUSR2));
    reset_counts();
    raise(SIGUSR1);
    ck_assert_int_eq(calls, 1);
    ck_assert_int_eq(seen_signo, SIGUSR1);
    ck_assert_int_eq(seen_code, SI_TKILL);
    ck_assert_msg(marked == 1, "the SA_SIGINFO handler ran unmarked");
    ck_assert_int_eq(awaitlet_in_signal_handler(), 0);

    /* SIG_IGN: ignored; the old value is the user's handler */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    ck_assert_int_eq(sigaction(SIGUSR1, &sa, &old), 0);
    ck_assert(old.sa_sigaction == info_h);
    reset_counts();
    raise(SIGUSR1);
    ck_assert_int_eq(calls, 0);
    ck_assert_int_eq(sigaction(SIGUSR1, NULL, &old), 0);
    ck_assert(old.sa_handler == SIG_IGN);

    /* SA_RESETHAND: one call, then back to SIG_DFL */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = plain_h;
    sa.sa_flags = SA_RESETHAND;
    ck_assert_int_eq(sigaction(SIGUSR1, &sa, &old), 0);
    ck_assert(old.sa_handler == SIG_IGN);
    ck_assert_int_eq(sigaction(SIGUSR1, NULL, &old), 0);
    ck_assert(old.sa_handler == plain_h);
    ck_assert(old.sa_flags & SA_RESETHAND);
    reset_counts();
    raise(SIGUSR1);
    ck_assert_int_eq(calls, 1);
    ck_assert_int_eq(marked, 1);
    ck_assert_int_eq(sigaction(SIGUSR1, NULL, &old), 0);
    ck_assert_msg(old.sa_handler == SIG_DFL, "SA_RESETHAND did not reset the handler");

    /* SA_NODEFER: the handler may run nested inside itself */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = nodefer_h;
    sa.sa_flags = SA_NODEFER;
    ck_assert_int_eq(sigaction(SIGUSR1, &sa, NULL), 0);
    reset_counts();
    raise(SIGUSR1);
    ck_assert_int_eq(calls, 2);
    ck_assert_int_eq(max_depth, 2);
    ck_assert_int_eq(marked, 2);
    ck_assert_msg(nested_marked == 1, "the outer handler lost its marking when the nested one left");
    ck_assert_int_eq(awaitlet_in_signal_handler(), 0);

    /* SIG_DFL reported as such */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    ck_assert_int_eq(sigaction(SIGUSR1, &sa, &old), 0);
    ck_assert(old.sa_handler == nodefer_h);
    ck_assert_int_eq(sigaction(SIGUSR1, NULL, &old), 0);
    ck_assert(old.sa_handler == SIG_DFL);

    /* errors are the kernel's (a handler: valgrind accepts SIG_DFL here) */
    sa.sa_handler = plain_h;
    errno = 0;
    ck_assert_int_eq(sigaction(SIGKILL, &sa, NULL), -1);
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_int_eq(sigaction(1000, NULL, &old), -1);
    ck_assert_int_eq(errno, EINVAL);
}
END_TEST

START_TEST(test_signal_family)
{
    struct sigaction old;
    /* signal(): BSD semantics, returns the previous user handler */
    ck_assert(signal(SIGUSR2, plain_h) == SIG_DFL);
    ck_assert(signal(SIGUSR2, plain_h2) == plain_h);
    ck_assert_int_eq(sigaction(SIGUSR2, NULL, &old), 0);
    ck_assert(old.sa_handler == plain_h2);
    ck_assert(old.sa_flags & SA_RESTART);
    ck_assert(!(old.sa_flags & SA_RESETHAND));
    reset_counts();
    raise(SIGUSR2);
    raise(SIGUSR2);
    ck_assert_int_eq(calls, 2);
    ck_assert_msg(marked == 2, "a signal() handler ran unmarked");
    ck_assert(signal(SIGUSR2, SIG_IGN) == plain_h2);
    ck_assert(signal(SIGUSR2, SIG_DFL) == SIG_IGN);

    /* bsd_signal, sigset: same handler semantics */
    ck_assert(bsd_signal(SIGUSR2, plain_h) == SIG_DFL);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    ck_assert(sigset(SIGUSR2, plain_h2) == plain_h); /* old programs still call it */
#pragma GCC diagnostic pop
    reset_counts();
    raise(SIGUSR2);
    ck_assert_int_eq(calls, 1);
    ck_assert_int_eq(marked, 1);

    /* sysv_signal: one-shot (SA_RESETHAND) */
    ck_assert(sysv_signal(SIGUSR2, plain_h) == plain_h2);
    ck_assert_int_eq(sigaction(SIGUSR2, NULL, &old), 0);
    ck_assert(old.sa_handler == plain_h);
    ck_assert(old.sa_flags & SA_RESETHAND);
    reset_counts();
    raise(SIGUSR2);
    ck_assert_int_eq(calls, 1);
    ck_assert_int_eq(marked, 1);
    ck_assert(signal(SIGUSR2, SIG_DFL) == SIG_DFL);
    errno = 0;
    ck_assert(signal(SIGKILL, plain_h) == SIG_ERR);
    ck_assert_int_eq(errno, EINVAL);
}
END_TEST

/* ---- leaving a handler by siglongjmp ---- */

static sigjmp_buf jump_env;

static void jumping_h(int sig)
{
    (void)sig;
    marked = awaitlet_in_signal_handler();
    siglongjmp(jump_env, 1);
}

static void *sleeper(void *arg)
{
    (void)arg;
    return awaitlet_sleep(0) == 0 ? (void *)1 : NULL;
}

START_TEST(test_handler_longjmp)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = jumping_h;
    ck_assert_int_eq(sigaction(SIGUSR1, &sa, NULL), 0);
    marked = 0;
    if (sigsetjmp(jump_env, 1) == 0) {
        raise(SIGUSR1);
        ck_abort_msg("the handler did not jump");
    }
    ck_assert_int_eq(marked, 1);
    ck_assert_msg(awaitlet_in_signal_handler() == 0, "still marked as in a handler after the jump");
    /* and tasks can wait again */
    struct ev_loop *loop = pqa_loop_new();
    errno = 0;
    void *r = awaitlet_run(loop, sleeper, NULL);
    ck_assert_msg(r != NULL, "a task could not wait after the jump: %s", strerror(errno));
    ev_loop_destroy(loop);
}
END_TEST

/* ---- the stack-overflow message survives an application crash handler ---- */

static void app_crash_h(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)si, (void)uc;
    static const char msg[] = "app crash handler ran\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    _exit(7);
}

static int deep(int n)
{
    volatile char pad[1024];
    pad[0] = (char)n;
    return n > 0 ? deep(n - 1) + pad[0] : 0;
}

static void *overflower(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)deep(1 << 20);
}

static void *first_task(void *arg)
{
    return arg;
}

START_TEST(test_overflow_message_survives_app_handler)
{
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(pfd[1], 2);
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        /* awaitlet installs its overflow handler with the first task ... */
        awaitlet_join(awaitlet_async_def(loop, first_task, NULL));
        /* ... then the application installs its own crash handler, which
         * knows nothing of awaitlet */
        struct sigaction sa = {0};
        sa.sa_sigaction = app_crash_h;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, NULL);
        awaitlet_options o = {0};
        o.stack_size = 64 * 1024;
        o.name = "deep";
        awaitlet_async_def_opts(loop, overflower, NULL, &o);
        _exit(0);
    }
    close(pfd[1]);
    char out[4096];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof out - 1 && (k = read(pfd[0], out + n, sizeof out - 1 - n)) > 0)
        n += (size_t)k;
    out[n] = 0;
    close(pfd[0]);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "status %#x, stderr: %s", st, out);
    ck_assert_msg(strstr(out, "\"deep\" overflowed its stack"), "stderr: %s", out);
    ck_assert_msg(!strstr(out, "app crash handler ran"), "stderr: %s", out);
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("shim-signals");
    TCase *tc = tcase_create("signals");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_itimer_real_storm);
    tcase_add_test(tc, test_itimer_prof_storm);
    tcase_add_test(tc, test_handler_poll_is_real);
    tcase_add_test(tc, test_sigaction_semantics);
    tcase_add_test(tc, test_signal_family);
    tcase_add_test(tc, test_handler_longjmp);
    tcase_add_test(tc, test_overflow_message_survives_app_handler);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
