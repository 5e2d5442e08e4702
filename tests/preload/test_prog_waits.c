/*
 * test_prog_waits.c -- item 3 (the program's own waits) and PQcancel in
 * tasks, against a real PostgreSQL; relinked like a user's program.
 *
 *   notify_select    libpq's testlibpq2.c shape in a task: LISTEN, then
 *                    select() on PQsocket until the notification comes --
 *                    while two other tasks keep running their queries; the
 *                    same with poll(), ppoll() and pselect()
 *   select_contract  select's sets and count, its timeval updated to the
 *                    time not slept, EBADF; zero-timeout, descriptor-less
 *                    and sigmask'ed calls stay real (not counted)
 *   cancel_no_block  PQcancel from a task, to a postmaster that never
 *                    answers (a holding proxy): the loop keeps running,
 *                    and PQcancel reports sent once its bound passed
 *   cancel_works     PQcancel and PQrequestCancel from a task really cancel
 *                    (57014), on the cancel lane (stats offloads)
 *   cancel_handler   PQcancel in a signal handler interrupting the loop
 *                    while a task waits: libpq's own call, no lane
 */
#include <errno.h>
#include <poll.h>
#include <pqawait.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include "../shim/common.h"
#include "../shim/proxy.h"

static struct ev_loop *loop;
static int queries_done, waiting, waiting_since, listener_done;
static int queries_while_waiting;
static char channel[64];

static void *querier(void *arg)
{
    (void)arg;
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    double until = pqa_now() + 20;
    while (!listener_done && pqa_now() < until) {
        PQclear(pqa_exec_ok(c, "SELECT pg_sleep(0.002)", PGRES_TUPLES_OK));
        queries_done++;
    }
    PQfinish(c);
    return NULL;
}

static void *notifier(void *arg)
{
    (void)arg;
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    /* Notifies once the other tasks ran 10 queries while the listener
     * waits: however slow the machine (valgrind, load), a wait that blocks
     * the loop never sees its notification (its 5 s timeout fails it). */
    double until = pqa_now() + 20;
    while (!(waiting && queries_done - waiting_since >= 10) && pqa_now() < until)
        ck_assert_int_eq(awaitlet_sleep(0.002), 0);
    char sql[128];
    snprintf(sql, sizeof sql, "NOTIFY %s, 'hi'", channel);
    PQclear(pqa_exec_ok(c, sql, PGRES_COMMAND_OK));
    PQfinish(c);
    return NULL;
}

enum how { BY_SELECT, BY_POLL, BY_PPOLL, BY_PSELECT };

/* One wait for readability of fd, the program's own way; > 0: readable. */
static int wait_readable(enum how how, int fd)
{
    switch (how) {
    case BY_SELECT: {
        fd_set rs;
        FD_ZERO(&rs);
        FD_SET(fd, &rs);
        struct timeval tv = {5, 0};
        return select(fd + 1, &rs, NULL, NULL, &tv);
    }
    case BY_PSELECT: {
        fd_set rs;
        FD_ZERO(&rs);
        FD_SET(fd, &rs);
        struct timespec ts = {5, 0};
        return pselect(fd + 1, &rs, NULL, NULL, &ts, NULL);
    }
    case BY_POLL: {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        return poll(&p, 1, 5000);
    }
    default: {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        struct timespec ts = {5, 0};
        return ppoll(&p, 1, &ts, NULL);
    }
    }
}

/* testlibpq2.c, in a task */
static void *listener(void *arg)
{
    enum how how = (enum how)(intptr_t)arg;
    PGconn *c = pqa_connect(PQA_UNIX, NULL);
    char sql[128];
    snprintf(sql, sizeof sql, "LISTEN %s", channel);
    PQclear(pqa_exec_ok(c, sql, PGRES_COMMAND_OK));
    int got = 0, before = queries_done;
    waiting_since = before;
    waiting = 1;
    while (!got) {
        int r = wait_readable(how, PQsocket(c));
        ck_assert_int_gt(r, 0); /* not the 5 s timeout */
        ck_assert_int_eq(PQconsumeInput(c), 1);
        PGnotify *n;
        while ((n = PQnotifies(c))) {
            ck_assert_str_eq(n->relname, channel);
            ck_assert_str_eq(n->extra, "hi");
            got = 1;
            PQfreemem(n);
        }
    }
    queries_while_waiting = queries_done - before;
    waiting = 0;
    listener_done = 1;
    PQfinish(c);
    return NULL;
}

static void run_listen(enum how how)
{
    snprintf(channel, sizeof channel, "pqa_wait_%s_%d", pqa_unique(), (int)how);
    queries_done = queries_while_waiting = waiting = waiting_since = listener_done = 0;
    pqawait_stats s0, s1;
    pqawait_stats_get(&s0);
    awaitlet_task *l = awaitlet_async_def(loop, listener, (void *)(intptr_t)how);
    awaitlet_task *q1 = awaitlet_async_def(loop, querier, NULL);
    awaitlet_task *q2 = awaitlet_async_def(loop, querier, NULL);
    awaitlet_task *n = awaitlet_async_def(loop, notifier, NULL);
    ck_assert_int_eq(awaitlet_join_ex(l, NULL), 0);
    ck_assert_int_eq(awaitlet_join_ex(n, NULL), 0);
    ck_assert_int_eq(awaitlet_join_ex(q1, NULL), 0);
    ck_assert_int_eq(awaitlet_join_ex(q2, NULL), 0);
    pqawait_stats_get(&s1);
    /* the other tasks' 2 ms queries kept going while the listener waited */
    ck_assert_msg(queries_while_waiting >= 10, "only %d queries while the listener waited",
                  queries_while_waiting);
    ck_assert_uint_ge(s1.prog_waits - s0.prog_waits, 1);
}

START_TEST(test_notify_select)
{
    run_listen(BY_SELECT);
}
END_TEST

START_TEST(test_notify_poll)
{
    run_listen(BY_POLL);
}
END_TEST

START_TEST(test_notify_ppoll)
{
    run_listen(BY_PPOLL);
}
END_TEST

START_TEST(test_notify_pselect)
{
    run_listen(BY_PSELECT);
}
END_TEST

static void *contract(void *arg)
{
    (void)arg;
    int a[2], b[2];
    ck_assert_int_eq(pipe(a), 0);
    ck_assert_int_eq(pipe(b), 0);
    pqawait_stats s0, s1;
    pqawait_stats_get(&s0);
    /* readable a (data), writable b: two bits, sets rewritten */
    ck_assert_int_eq(write(a[1], "x", 1), 1);
    fd_set rs, ws;
    FD_ZERO(&rs);
    FD_ZERO(&ws);
    FD_SET(a[0], &rs);
    FD_SET(b[0], &rs);
    FD_SET(b[1], &ws);
    struct timeval tv = {2, 0};
    int nfds = (a[0] > b[1] ? a[0] : b[1]) + 1;
    ck_assert_int_eq(select(nfds, &rs, &ws, NULL, &tv), 2);
    ck_assert(FD_ISSET(a[0], &rs) && !FD_ISSET(b[0], &rs) && FD_ISSET(b[1], &ws));
    ck_assert(tv.tv_sec == 1 || tv.tv_sec == 2); /* the time not slept */
    /* a timeout: 0, sets emptied, timeval 0 */
    FD_ZERO(&rs);
    FD_SET(b[0], &rs);
    tv = (struct timeval){0, 30000};
    double t0 = pqa_now();
    ck_assert_int_eq(select(b[0] + 1, &rs, NULL, NULL, &tv), 0);
    ck_assert(pqa_now() - t0 >= 0.029);
    ck_assert(!FD_ISSET(b[0], &rs));
    ck_assert(tv.tv_sec == 0 && tv.tv_usec == 0);
    /* a closed descriptor: EBADF */
    int dead = dup(b[0]);
    close(dead);
    FD_ZERO(&rs);
    FD_SET(dead, &rs);
    tv = (struct timeval){1, 0};
    errno = 0;
    ck_assert_int_eq(select(dead + 1, &rs, NULL, NULL, &tv), -1);
    ck_assert_int_eq(errno, EBADF);
    pqawait_stats_get(&s1);
    ck_assert_uint_eq(s1.prog_waits - s0.prog_waits, 3);
    /* real calls: zero timeout, no descriptor (a sleep), a signal mask */
    FD_ZERO(&rs);
    FD_SET(b[0], &rs);
    tv = (struct timeval){0, 0};
    ck_assert_int_eq(select(b[0] + 1, &rs, NULL, NULL, &tv), 0);
    tv = (struct timeval){0, 1000};
    ck_assert_int_eq(select(0, NULL, NULL, NULL, &tv), 0);
    struct pollfd p = {.fd = a[0], .events = POLLIN};
    sigset_t none;
    sigemptyset(&none);
    struct timespec ts = {1, 0};
    ck_assert_int_eq(ppoll(&p, 1, &ts, &none), 1);
    ck_assert_int_eq(poll(&p, 1, 0), 1);
    pqawait_stats_get(&s0);
    ck_assert_uint_eq(s0.prog_waits, s1.prog_waits);
    close(a[0]), close(a[1]), close(b[0]), close(b[1]);
    return NULL;
}

START_TEST(test_select_contract)
{
    ck_assert_int_eq(awaitlet_run_ex(loop, contract, NULL, NULL), 0);
}
END_TEST

/* ---- PQcancel from a task ---- */

static int ticks;
static volatile int ticking;

static void *ticker(void *arg)
{
    (void)arg;
    while (ticking && awaitlet_sleep(0.005) == 0)
        ticks++;
    return NULL;
}

struct held {
    pqa_proxy *proxy;
    int rc;
    double took;
    int ticks_during;
};

static void *cancel_held(void *arg)
{
    struct held *h = arg;
    char *ci = pqa_conninfo_port(pqa_proxy_port(h->proxy), NULL);
    PGconn *c = PQconnectdb(ci);
    free(ci);
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    PGcancel *k = PQgetCancel(c);
    pqa_proxy_hold_new(h->proxy, 1); /* the cancel connection is never answered */
    char err[256];
    int t0 = ticks;
    double s = pqa_now();
    h->rc = PQcancel(k, err, sizeof err);
    h->took = pqa_now() - s;
    h->ticks_during = ticks - t0;
    pqa_proxy_hold_new(h->proxy, 0);
    PQfreeCancel(k);
    PQfinish(c);
    return NULL;
}

START_TEST(test_cancel_no_block)
{
    ck_assert_int_eq(pqawait_set_cancel_timeout(0.4), 0);
    struct held h = {.proxy = pqa_proxy_start(atoi(pqa_env_port()), 0)};
    ck_assert_ptr_nonnull(h.proxy);
    ticking = 1;
    ticks = 0;
    awaitlet_task *tk = awaitlet_async_def(loop, ticker, NULL);
    ck_assert_int_eq(awaitlet_run_ex(loop, cancel_held, &h, NULL), 0);
    ticking = 0;
    ck_assert_int_eq(awaitlet_join_ex(tk, NULL), 0);
    ck_assert_int_eq(h.rc, 1); /* no answer within the bound counts as sent */
    ck_assert(h.took >= 0.15 && h.took < 3);
    /* the loop ran meanwhile: 5 ms ticks all along */
    ck_assert_msg(h.ticks_during >= (int)(h.took / 0.005 / 4), "%d ticks in %.2f s",
                  h.ticks_during, h.took);
    pqa_proxy_stop(h.proxy);
}
END_TEST

static void *sleeper(void *arg)
{
    PGconn *c = arg;
    PGresult *r = PQexec(c, "SELECT pg_sleep(10)");
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    int ok = st && strcmp(st, "57014") == 0;
    PQclear(r);
    return ok ? (void *)1 : NULL;
}

static PGconn *victim;

static void *canceller(void *arg)
{
    int request = arg != NULL;
    ck_assert_int_eq(awaitlet_sleep(0.2), 0);
    if (request)
        return PQrequestCancel(victim) ? (void *)1 : NULL;
    PGcancel *k = PQgetCancel(victim);
    char err[256];
    int r = PQcancel(k, err, sizeof err);
    PQfreeCancel(k);
    return r ? (void *)1 : NULL;
}

START_TEST(test_cancel_works)
{
    for (int request = 0; request < 2; request++) {
        victim = pqa_connect(PQA_UNIX, NULL);
        pqawait_stats s0, s1;
        pqawait_stats_get(&s0);
        awaitlet_task *s = awaitlet_async_def(loop, sleeper, victim);
        awaitlet_task *k = awaitlet_async_def(loop, canceller, request ? (void *)1 : NULL);
        void *r = NULL;
        ck_assert_int_eq(awaitlet_join_ex(k, &r), 0);
        ck_assert_ptr_eq(r, (void *)1);
        ck_assert_int_eq(awaitlet_join_ex(s, &r), 0);
        ck_assert_ptr_eq(r, (void *)1);
        pqawait_stats_get(&s1);
        ck_assert_uint_ge(s1.offloads - s0.offloads, 1); /* the cancel lane */
        PQfinish(victim);
    }
}
END_TEST

static PGcancel *handler_cancel;
static volatile sig_atomic_t handler_rc = -1, handler_in_task = -1;

static void on_alarm(int sig)
{
    (void)sig;
    char err[256];
    handler_in_task = awaitlet_in_context();
    handler_rc = PQcancel(handler_cancel, err, sizeof err); /* libpq's own */
}

START_TEST(test_cancel_handler)
{
    victim = pqa_connect(PQA_UNIX, NULL);
    handler_cancel = PQgetCancel(victim);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    ck_assert_int_eq(sigaction(SIGALRM, &sa, NULL), 0);
    pqawait_stats s0, s1;
    pqawait_stats_get(&s0);
    ualarm(200000, 0);
    void *r = NULL;
    ck_assert_int_eq(awaitlet_run_ex(loop, sleeper, victim, &r), 0);
    ck_assert_ptr_eq(r, (void *)1);
    ck_assert_int_eq(handler_rc, 1);
    pqawait_stats_get(&s1);
    ck_assert_uint_eq(s1.offloads, s0.offloads); /* not the lane */
    PQfreeCancel(handler_cancel);
    PQfinish(victim);
}
END_TEST

static void setup(void)
{
    loop = pqa_loop_new();
    ck_assert_int_eq(pqawait_stats_enable(1), 0);
}

static void teardown(void)
{
    ck_assert_int_eq(awaitlet_loop_close(loop), 0);
    ev_loop_destroy(loop);
}

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("prog_waits");
    TCase *tc = tcase_create("prog_waits");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_notify_select);
    tcase_add_test(tc, test_notify_poll);
    tcase_add_test(tc, test_notify_ppoll);
    tcase_add_test(tc, test_notify_pselect);
    tcase_add_test(tc, test_select_contract);
    tcase_add_test(tc, test_cancel_no_block);
    tcase_add_test(tc, test_cancel_works);
    tcase_add_test(tc, test_cancel_handler);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
