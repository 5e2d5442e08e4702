/*
 * test_hooks.c -- the shim's poll and getaddrinfo act for libpq's own
 * waits only, and a libpq call made from a callback gets its own scope.
 *
 * - Inside a task's libpq call, user code called back by libpq (a notice
 *   processor or receiver) that polls, or looks a host name up, gets the
 *   real poll / getaddrinfo: no task switch behind its back.
 * - What the shim's poll returns to its caller is what the kernel would
 *   say: a connection whose server went away reads POLLIN|POLLHUP, not
 *   just POLLIN.  (Observed by a poll of this program placed in front of
 *   the shim's, as a sanitizer's interceptor would be.)
 * - A connect to an address literal (host=127.0.0.1) looks nothing up on
 *   a worker; one to a name (localhost) does.
 * - A notice receiver running a query on another connection: that
 *   connection is owned by the task while the nested call runs (another
 *   task is refused with EBUSY), and an interruption arriving during the
 *   nested call cancels the nested statement, not the outer one.
 */
#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "pqawait.h"

/* ---- a poll in front of the shim's: what does it answer? ---- */

static int watch_fd = -1;
static unsigned long watched, mismatches, hups;
static short last_shim, last_kernel;

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    static int (*next)(struct pollfd *, nfds_t, int);
    if (!next)
        next = (int (*)(struct pollfd *, nfds_t, int))dlsym(RTLD_NEXT, "poll");
    int rc = next(fds, nfds, timeout);
    if (nfds == 1 && fds[0].fd == watch_fd && watch_fd >= 0 && rc > 0) {
        int e = errno;
        struct pollfd k = {.fd = fds[0].fd, .events = fds[0].events};
        static const struct timespec zero;
        if (ppoll(&k, 1, &zero, NULL) == 1) { /* the kernel's view, same moment */
            watched++;
            if (k.revents & POLLHUP)
                hups++;
            if (k.revents != fds[0].revents) {
                mismatches++;
                last_shim = fds[0].revents;
                last_kernel = k.revents;
            }
        }
        errno = e;
    }
    return rc;
}

START_TEST(test_interposed)
{
    ck_assert_int_eq(pqawait_interposed(), 1);
}
END_TEST

/* ---- a ticker: proves whether a call suspended the task ---- */

struct ticker {
    unsigned long turns;
    int stop;
};

static void *ticker_task(void *arg)
{
    struct ticker *tk = arg;
    while (!tk->stop) {
        awaitlet_yield();
        tk->turns++;
    }
    return NULL;
}

/* ---- user code called back inside libpq ---- */

struct cb {
    int pipe_fd[2];
    struct ticker *tk;
    int in_cb;
    int poll_rc;
    unsigned long poll_turns, gai_turns;
    int gai_rc;
    int called;
};

static void poll_processor(void *arg, const char *msg)
{
    (void)msg;
    struct cb *cb = arg;
    cb->called++;
    cb->in_cb = 1;
    unsigned long before = cb->tk->turns;
    struct pollfd p = {.fd = cb->pipe_fd[0], .events = POLLIN};
    cb->poll_rc = poll(&p, 1, 30); /* nobody writes while this runs */
    cb->poll_turns = cb->tk->turns - before;
    before = cb->tk->turns;
    struct addrinfo *ai = NULL, hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    cb->gai_rc = getaddrinfo("localhost", "5432", &hints, &ai);
    cb->gai_turns = cb->tk->turns - before;
    if (ai)
        freeaddrinfo(ai);
    cb->in_cb = 0;
}

static void *writer_task(void *arg)
{
    struct cb *cb = arg;
    while (!cb->tk->stop) {
        if (cb->in_cb) /* only reachable if the callback's poll switched tasks */
            (void)!write(cb->pipe_fd[1], "w", 1);
        awaitlet_sleep(0.001);
    }
    return NULL;
}

static void *notice_query_task(void *arg)
{
    struct cb *cb = arg;
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    PQsetNoticeProcessor(c, poll_processor, cb);
    PGresult *r = PQexec(c, "do $$ begin raise notice 'poll from here'; end $$");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    PQfinish(c);
    cb->tk->stop = 1;
    return NULL;
}

START_TEST(test_callback_calls_are_real)
{
    struct ticker tk = {0};
    struct cb cb = {.tk = &tk, .poll_rc = -2, .gai_rc = -100};
    ck_assert_int_eq(pipe(cb.pipe_fd), 0);
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t1 = awaitlet_async_def(loop, ticker_task, &tk);
    awaitlet_task *t2 = awaitlet_async_def(loop, writer_task, &cb);
    awaitlet_task *t3 = awaitlet_async_def(loop, notice_query_task, &cb);
    ck_assert(t1 && t2 && t3);
    awaitlet_join(t3);
    awaitlet_join(t2);
    awaitlet_join(t1);
    ev_loop_destroy(loop);
    printf("notice processor: poll %d (loop turned %lu times meanwhile), getaddrinfo %d (%lu turns)\n",
           cb.poll_rc, cb.poll_turns, cb.gai_rc, cb.gai_turns);
    fflush(stdout);
    ck_assert_int_eq(cb.called, 1);
    ck_assert_msg(cb.poll_rc == 0 && cb.poll_turns == 0, "the notice processor's poll switched tasks "
                  "(returned %d, %lu loop turns)", cb.poll_rc, cb.poll_turns);
    ck_assert_msg(cb.gai_rc == 0, "getaddrinfo in the notice processor: %s", gai_strerror(cb.gai_rc));
    ck_assert_msg(cb.gai_turns == 0, "the notice processor's getaddrinfo suspended the task (%lu turns)",
                  cb.gai_turns);
    close(cb.pipe_fd[0]);
    close(cb.pipe_fd[1]);
}
END_TEST

/* ---- revents as the kernel says ---- */

struct hangup {
    PGconn *victim;
    int pid;
    ExecStatusType status;
};

static void *hangup_task(void *arg)
{
    struct hangup *h = arg;
    watch_fd = PQsocket(h->victim);
    PGresult *r = PQexec(h->victim, "select pg_sleep(5)");
    h->status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    PQclear(r);
    watch_fd = -1;
    return NULL;
}

static void terminate_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct hangup *h = w->data;
    PGconn *admin = pqa_connect(PQA_UNIX, NULL); /* outside any task: plain libpq */
    char sql[64];
    snprintf(sql, sizeof sql, "select pg_terminate_backend(%d)", h->pid);
    PQclear(pqa_exec_ok(admin, sql, PGRES_TUPLES_OK));
    PQfinish(admin);
}

START_TEST(test_revents_exact)
{
    struct hangup h = {0};
    h.victim = pqa_connect(PQA_UNIX, NULL);
    h.pid = PQbackendPID(h.victim);
    struct ev_loop *loop = pqa_loop_new();
    ev_timer term;
    ev_timer_init(&term, terminate_cb, 0.2, 0);
    term.data = &h;
    ev_timer_start(loop, &term);
    awaitlet_task *t = awaitlet_async_def(loop, hangup_task, &h);
    ck_assert_ptr_nonnull(t);
    awaitlet_join(t);
    ev_loop_destroy(loop);
    printf("server went away: %lu polls answered, %lu with POLLHUP, %lu differ from the kernel "
           "(last: shim 0x%x, kernel 0x%x)\n", watched, hups, mismatches, (unsigned)last_shim,
           (unsigned)last_kernel);
    fflush(stdout);
    ck_assert_int_eq(h.status, PGRES_FATAL_ERROR);
    ck_assert_msg(hups > 0, "the test never saw the hang-up it is about");
    ck_assert_msg(mismatches == 0, "the shim's poll answered 0x%x where the kernel says 0x%x",
                  (unsigned)last_shim, (unsigned)last_kernel);
    PQfinish(h.victim);
}
END_TEST

/* ---- a query on another connection from a notice receiver ---- */

struct nested {
    PGconn *outer, *inner;
    int interrupt;           /* 1: the task's deadline passes during the nested call */
    ExecStatusType outer_status, inner_status;
    char inner_state[8], outer_state[8];
    char inner_msg[256];
    double inner_s;
    int next_errno;
    /* another task using the inner connection meanwhile */
    PGresult *stolen;
    int stolen_errno, stolen_ran;
};

static void nested_receiver(void *arg, const PGresult *res)
{
    (void)res;
    struct nested *n = arg;
    double t0 = pqa_now();
    PGresult *r = PQexec(n->inner, n->interrupt ? "select pg_sleep(3)" : "select pg_sleep(0.3), 'inner'");
    n->inner_s = pqa_now() - t0;
    n->inner_status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    const char *ss = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    snprintf(n->inner_state, sizeof n->inner_state, "%s", ss ? ss : "-");
    snprintf(n->inner_msg, sizeof n->inner_msg, "%s", PQerrorMessage(n->inner));
    PQclear(r);
}

static void *nested_task(void *arg)
{
    struct nested *n = arg;
    PQsetNoticeReceiver(n->outer, nested_receiver, n);
    /* The outer statement outlasts the nested one however slow the machine
     * is when the deadline cancels the nested one (valgrind under load took
     * 0.75 s to get its 57014: a 0.5 s outer sleep had ended by then). */
    PGresult *r = PQexec(n->outer, n->interrupt ? "do $$ begin raise notice 'go'; perform pg_sleep(30); end $$"
                                                : "do $$ begin raise notice 'go'; perform pg_sleep(0.5); end $$");
    n->outer_status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    const char *ss = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    snprintf(n->outer_state, sizeof n->outer_state, "%s", ss ? ss : "-");
    PQclear(r);
    errno = 0;
    awaitlet_sleep(0);
    n->next_errno = errno;
    return NULL;
}

static void *thief_task(void *arg)
{
    struct nested *n = arg;
    awaitlet_sleep(0.15); /* the nested query is running by then */
    n->stolen_ran = 1;
    errno = 0;
    n->stolen = PQexec(n->inner, "select 'stolen'");
    n->stolen_errno = errno;
    return NULL;
}

START_TEST(test_nested_call_owns_its_conn)
{
    struct nested n = {0};
    n.outer = pqa_connect(PQA_UNIX, NULL);
    n.inner = pqa_connect(PQA_TCP, NULL);
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *a = awaitlet_async_def(loop, nested_task, &n);
    awaitlet_task *b = awaitlet_async_def(loop, thief_task, &n);
    ck_assert(a && b);
    awaitlet_join(a);
    awaitlet_join(b);
    ev_loop_destroy(loop);
    ck_assert_msg(n.outer_status == PGRES_COMMAND_OK, "outer: %s %s", PQresStatus(n.outer_status),
                  n.outer_state);
    ck_assert_msg(n.inner_status == PGRES_TUPLES_OK, "inner: %s %s %s", PQresStatus(n.inner_status),
                  n.inner_state, n.inner_msg);
    ck_assert(n.stolen_ran);
    ck_assert_msg(n.stolen == NULL && n.stolen_errno == EBUSY,
                  "another task used the connection of a nested call (%s, errno %s)",
                  n.stolen ? PQresStatus(PQresultStatus(n.stolen)) : "NULL", strerror(n.stolen_errno));
    PQclear(n.stolen);
    PQclear(pqa_exec_ok(n.inner, "select 1", PGRES_TUPLES_OK));
    PQclear(pqa_exec_ok(n.outer, "select 1", PGRES_TUPLES_OK));
    PQfinish(n.inner);
    PQfinish(n.outer);
}
END_TEST

START_TEST(test_nested_call_interrupted)
{
    struct nested n = {.interrupt = 1};
    n.outer = pqa_connect(PQA_UNIX, NULL);
    n.inner = pqa_connect(PQA_TCP, NULL);
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *a = awaitlet_async_def(loop, nested_task, &n);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(awaitlet_set_deadline(a, 0.15), 0);
    awaitlet_join(a);
    ev_loop_destroy(loop);
    printf("deadline during a nested call: inner %s %s after %.3f s, outer %s %s\n",
           PQresStatus(n.inner_status), n.inner_state, n.inner_s, PQresStatus(n.outer_status),
           n.outer_state);
    fflush(stdout);
    ck_assert_msg(n.inner_status == PGRES_FATAL_ERROR && strcmp(n.inner_state, "57014") == 0,
                  "the nested statement was not cancelled: %s %s", PQresStatus(n.inner_status),
                  n.inner_state);
    ck_assert_msg(n.inner_s < 2.0, "the nested statement ran %.3f s", n.inner_s);
    /* The deadline hit the statement running when it passed -- the nested
     * one -- first.  The outer statement, still running for a task past its
     * deadline, is then cancelled in its turn when its own wait resumes
     * (each shield level gets its EINTR), never instead of the inner. */
    ck_assert_msg(n.outer_status == PGRES_FATAL_ERROR && strcmp(n.outer_state, "57014") == 0,
                  "the outer statement of a task past its deadline: %s %s",
                  PQresStatus(n.outer_status), n.outer_state);
    ck_assert_int_eq(n.next_errno, ETIMEDOUT);
    PQclear(pqa_exec_ok(n.inner, "select 1", PGRES_TUPLES_OK));
    PQclear(pqa_exec_ok(n.outer, "select 1", PGRES_TUPLES_OK));
    PQfinish(n.inner);
    PQfinish(n.outer);
}
END_TEST

/* a connect from a notice receiver: a connect of its own, cooperative */
struct nested_connect {
    struct ticker *tk;
    int ok;
    unsigned long turns;
};

static void connect_receiver(void *arg, const PGresult *res)
{
    (void)res;
    struct nested_connect *nc = arg;
    unsigned long before = nc->tk->turns;
    PGconn *c = pqa_connect(PQA_SSL, NULL);
    PGresult *r = PQexec(c, "select 'inside'");
    nc->ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    PQfinish(c);
    nc->turns = nc->tk->turns - before;
}

static void *nested_connect_task(void *arg)
{
    struct nested_connect *nc = arg;
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    PQsetNoticeReceiver(c, connect_receiver, nc);
    PQclear(pqa_exec_ok(c, "do $$ begin raise notice 'connect'; end $$", PGRES_COMMAND_OK));
    PQfinish(c);
    nc->tk->stop = 1;
    return NULL;
}

START_TEST(test_nested_connect)
{
    struct ticker tk = {0};
    struct nested_connect nc = {.tk = &tk};
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t1 = awaitlet_async_def(loop, ticker_task, &tk);
    awaitlet_task *t2 = awaitlet_async_def(loop, nested_connect_task, &nc);
    ck_assert(t1 && t2);
    awaitlet_join(t2);
    awaitlet_join(t1);
    ev_loop_destroy(loop);
    ck_assert_msg(nc.ok, "the nested connect and query failed");
    ck_assert_msg(nc.turns > 0, "the nested TLS connect never let the loop turn");
}
END_TEST

/* ---- the pass word follows the frames ----
 * Inside a task a wrapper passes a call straight to libpq, without a scope,
 * when the task's pass word (shim/scope.h) says libpq is running on that
 * connection in the task's innermost scope.  Each call below is the
 * application's own, made right after a frame on the same connection went
 * away: it must run in a scope of its own -- its wait lets the loop turn,
 * and another task's call on the connection meanwhile is refused (EBUSY).
 * Passed through, the call would own nothing. */
enum { PASS_CASES = 4 };

struct pass_case {
    PGconn *other;
    PGconn *target;            /* probed by the other task while set */
    int step;
    unsigned long turns[PASS_CASES];
    int probe[PASS_CASES];     /* 1 refused with EBUSY, 2 not refused, 0 not probed */
    int ok, stop;
};

static void *pass_prober(void *arg)
{
    struct pass_case *pc = arg;
    while (!pc->stop) {
        awaitlet_yield();
        pc->turns[pc->step]++;
        if (pc->target && !pc->probe[pc->step]) {
            errno = 0;
            int r = PQsendQuery(pc->target, "select 1");
            pc->probe[pc->step] = r == 0 && errno == EBUSY ? 1 : 2;
        }
    }
    return NULL;
}

static void pass_query(struct pass_case *pc, int step, PGconn *c)
{
    pc->step = step;
    pc->target = c;
    PGresult *r = PQexec(c, "select pg_sleep(0.02)");
    pc->target = NULL;
    pc->ok &= PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
}

/* runs inside PQexec on the task's first connection: a callback frame */
static void pass_receiver(void *arg, const PGresult *res)
{
    (void)res;
    struct pass_case *pc = arg;
    pass_query(pc, 2, pc->other);
    pass_query(pc, 3, pc->other); /* after its scope went back to the callback frame */
}

static void *pass_task(void *arg)
{
    struct pass_case *pc = arg;
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    pc->other = pqa_connect(PQA_UNIX, NULL);
    pc->ok = 1;
    /* after PQsendQuery's scope left: the application's PQgetResult */
    ck_assert_int_eq(PQsendQuery(c, "select pg_sleep(0.02)"), 1);
    pc->target = c;
    PGresult *r = PQgetResult(c);
    pc->target = NULL;
    pc->ok &= PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    pc->ok &= PQgetResult(c) == NULL;
    /* after a connect's scope, which learned its connection, left */
    PGconn *d = pqa_connect(PQA_UNIX, NULL);
    pass_query(pc, 1, d);
    PQfinish(d);
    /* a notice receiver's queries on another connection */
    PQsetNoticeReceiver(c, pass_receiver, pc);
    PQclear(pqa_exec_ok(c, "do $$ begin raise notice 'pass'; end $$", PGRES_COMMAND_OK));
    PQfinish(pc->other);
    PQfinish(c);
    pc->stop = 1;
    return NULL;
}

START_TEST(test_pass_follows_frames)
{
    struct pass_case pc = {0};
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t1 = awaitlet_async_def(loop, pass_prober, &pc);
    awaitlet_task *t2 = awaitlet_async_def(loop, pass_task, &pc);
    ck_assert(t1 && t2);
    awaitlet_join(t2);
    awaitlet_join(t1);
    ev_loop_destroy(loop);
    ck_assert(pc.ok);
    static const char *const what[PASS_CASES] = {
        "PQgetResult after PQsendQuery", "PQexec after PQconnectdb",
        "a notice receiver's PQexec on another connection", "the receiver's second PQexec there"};
    for (int i = 0; i < PASS_CASES; i++) {
        ck_assert_msg(pc.turns[i] > 0, "%s waited without letting the loop turn", what[i]);
        ck_assert_msg(pc.probe[i] == 1, "%s: another task's call on its connection was %s", what[i],
                      pc.probe[i] ? "not refused (passed through without a scope)" : "never made");
    }
}
END_TEST

/* ---- a connect to an address literal looks nothing up on a worker ---- */

struct lookup_case {
    pqa_kind kind;
    int ok;
    unsigned long long offloads;
    char err[256];
};

static void *lookup_task(void *arg)
{
    struct lookup_case *lc = arg;
    char *ci = pqa_conninfo(lc->kind, NULL);
    pqawait_stats s0, s1;
    pqawait_stats_get(&s0);
    PGconn *c = PQconnectdb(ci);
    pqawait_stats_get(&s1);
    lc->ok = PQstatus(c) == CONNECTION_OK;
    snprintf(lc->err, sizeof lc->err, "%s", PQerrorMessage(c));
    lc->offloads = s1.offloads - s0.offloads;
    PQfinish(c);
    free(ci);
    return NULL;
}

START_TEST(test_literal_address_inline)
{
    ck_assert_int_eq(pqawait_stats_enable(1), 0);
    struct lookup_case lit = {.kind = PQA_TCP}, name = {.kind = PQA_TCP_NAME};
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t1 = awaitlet_async_def(loop, lookup_task, &lit);
    ck_assert_ptr_nonnull(t1);
    ck_assert_int_eq(awaitlet_join_ex(t1, NULL), 0);
    awaitlet_task *t2 = awaitlet_async_def(loop, lookup_task, &name);
    ck_assert_ptr_nonnull(t2);
    ck_assert_int_eq(awaitlet_join_ex(t2, NULL), 0);
    ck_assert_int_eq(awaitlet_loop_close(loop), 0);
    ev_loop_destroy(loop);
    (void)pqawait_stats_enable(0);
    ck_assert_msg(lit.ok, "host=127.0.0.1: %s", lit.err);
    ck_assert_msg(name.ok, "host=localhost: %s", name.err);
    /* 127.0.0.1 is answered from the string: no worker; localhost is a
     * name: looked up on a worker */
    ck_assert_msg(lit.offloads == 0, "host=127.0.0.1 offloaded %llu lookups", lit.offloads);
    ck_assert_msg(name.offloads >= 1, "host=localhost was not looked up on a worker");
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("shim-hooks");
    TCase *tc = tcase_create("hooks");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_callback_calls_are_real);
    tcase_add_test(tc, test_revents_exact);
    tcase_add_test(tc, test_nested_call_owns_its_conn);
    tcase_add_test(tc, test_nested_call_interrupted);
    tcase_add_test(tc, test_nested_connect);
    tcase_add_test(tc, test_literal_address_inline);
    tcase_add_test(tc, test_pass_follows_frames);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
