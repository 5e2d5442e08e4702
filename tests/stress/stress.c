/*
 * stress.c -- the randomized stress program (issue 9, item 3): options,
 * loops and threads, the supervisor, the final checks (see stress.h).
 *
 *   stress [--seed S] [--tasks N] [--seconds T] [--threads K]   (T, and at least T/2 after the warm-up)
 *
 * The server comes from the environment (PQAWAIT_TEST_HOST, _PORT, _DB,
 * _SSLROOT: tests/pg/with-pg or script/stress set them).  The seed is
 * printed first; the operations each slot picks follow from it (the
 * timing of the server and of chaos does not).  Each loop's supervisor:
 *   - starts a task per slot, and a new one whenever chaos cancelled the
 *     last (a cancelled task finishes its operation and ends); a slot's
 *     first task warms up first (every operation once, at its largest
 *     size), and chaos starts once every slot of the run has;
 *   - samples the process's RSS once warmed up and a quarter into the run,
 *     and at the end;
 *   - at the end stops chaos and the slots, then runs the final round: each
 *     slot repairs its session, sends a notification to the next slot of
 *     its loop and waits for its own, and must be idle;
 *   - closes every session.
 * main then checks, over a connection of its own, that the server holds no
 * session of the run any more and that its tables are empty, and prints
 * the figures with a Check-style summary line of the invariants checked
 * (script/count-tests.py counts them).  Exit status 0 only if all held.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pqawait.h"
#include "stress.h"

#ifdef PQA_HAVE_VALGRIND
#include <valgrind/valgrind.h>
#else
#define RUNNING_ON_VALGRIND 0
#endif

static char table_copy[64], table_kv[64];

double st_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* splitmix64 */
uint32_t st_rand(uint64_t *state, uint32_t n)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return n ? (uint32_t)(z % n) : 0;
}

void st_fail(st_run *run, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&run->mu);
    unsigned long n = ++run->failures;
    if (n == 1)
        snprintf(run->first_failure, sizeof run->first_failure, "%s", msg);
    pthread_mutex_unlock(&run->mu);
    if (n <= 20)
        fprintf(stderr, "stress: FAILED: %s\n", msg);
}

int st_all_warm(st_run *run)
{
    return __atomic_load_n(&run->warmed, __ATOMIC_RELAXED) >= (unsigned long)run->tasks;
}

void st_hit(st_slot *s, enum st_fault f)
{
    s->last_fault = st_now();
    s->last_kind = (int)f;
    if (f == F_CANCEL || f == F_DEADLINE || f == F_PQCANCEL || f == F_CB_CANCEL || f == F_CB_DEADLINE)
        s->last_cancel = s->last_fault;
    ST_ADD(s->lp->run->faults[f], 1);
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* ---- slots ---- */

static void *slot_task(void *arg)
{
    st_slot *s = arg;
    s->instances++;
    if (!s->warmed) {
        while (st_warm_up(s) < 0 && !s->lp->run->failures && !s->lp->stopping)
            st_repair(s);
        s->warmed = 1;
        if (ST_ADD(s->lp->run->warmed, 1) == (unsigned long)s->lp->run->tasks) {
            double now = st_now();
            __atomic_store(&s->lp->run->t_warm, &now, __ATOMIC_RELEASE);
        }
    }
    while (!s->lp->stopping) {
        if (st_op(s, -1) < 0 || s->foreign_finished)
            st_repair(s);
        if (s->lp->run->failures)
            break;
        /* a deadline is cleared and the work goes on; a cancellation ends
         * this task (the supervisor starts another) */
        if (st_cancelled())
            break;
        if (awaitlet_sleep(st_rand(&s->rng, 5) / 1000.0) < 0 && st_cancelled())
            break;
    }
    st_drop_finished(s); /* ours to free, before this task ends */
    return NULL;
}

/* The final round of one slot: a healthy, idle session that gets the
 * notification the previous slot sends it. */
static void *final_task(void *arg)
{
    st_slot *s = arg;
    st_loop *lp = s->lp;
    s->final_got = 0;
    if (lp->run->failures) {
        /* the run failed already: what follows would only echo it */
        lp->final_ready++;
        return NULL;
    }
    /* A session chaos broke while it was idle shows it only now, at its
     * first use: probe, repair (still excused), probe again. */
    int healthy = 0;
    for (int i = 0; i < 5 && !healthy; i++) {
        st_repair(s); /* also checks a pending write */
        if (s->conn && PQstatus(s->conn) == CONNECTION_OK && s->backend) {
            PGresult *r = PQexec(s->conn, "select 'ready'");
            healthy = PQresultStatus(r) == PGRES_TUPLES_OK && PQtransactionStatus(s->conn) == PQTRANS_IDLE;
            PQclear(r);
        }
    }
    /* everyone listens before anyone sends (a slot that failed counts as
     * arrived: the run ends either way) */
    lp->final_ready++;
    if (!healthy) {
        st_fail(lp->run, "slot %d: no healthy session at the end: %s", s->id,
                s->conn ? PQerrorMessage(s->conn) : "(none)");
        return NULL;
    }
    s->last_fault = 0; /* chaos is over: nothing excuses a failure now */
    double until = st_now() + 30;
    while (lp->final_ready < lp->nslots && st_now() < until && awaitlet_sleep(0.005) == 0)
        ;
    st_slot *next = &lp->slots[(s - lp->slots + 1) % lp->nslots];
    char payload[64];
    snprintf(payload, sizeof payload, "final:%d:%d", s->id, next->id);
    const char *pv[2] = {next->channel, payload};
    PGresult *r = PQexecParams(s->conn, "select pg_notify($1, $2)", 2, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        st_fail(lp->run, "slot %d: final notify: %s", s->id, PQerrorMessage(s->conn));
    PQclear(r);
    double end = st_now() + 10;
    while (!s->final_got && st_now() < end) {
        if (!PQconsumeInput(s->conn))
            break;
        st_take_notifies(s);
        if (!s->final_got)
            awaitlet_io(PQsocket(s->conn), AWAITLET_READ, 0.1);
    }
    if (!s->final_got)
        st_fail(lp->run, "slot %d: the final notification never arrived", s->id);
    if (PQtransactionStatus(s->conn) != PQTRANS_IDLE || PQstatus(s->conn) != CONNECTION_OK)
        st_fail(lp->run, "slot %d: session not idle at the end", s->id);
    return NULL;
}

/* The run lasts --seconds, and at least half of that after the last slot's
 * warm-up (no chaos before it): a slow machine (ASan under load warmed up
 * for 11 s of a 10 s run) still gets its chaos instead of "did nothing". */
static int keep_running(st_run *run)
{
    double now = st_now(), warm;
    if (now < run->t_end)
        return 1;
    __atomic_load(&run->t_warm, &warm, __ATOMIC_ACQUIRE);
    if (warm == 0) /* still warming up: at most another --seconds */
        return now < run->t_end + run->seconds;
    return now < warm + run->seconds / 2;
}

static void *supervisor_task(void *arg)
{
    st_loop *lp = arg;
    st_run *run = lp->run;
    for (int i = 0; i < lp->nslots; i++)
        lp->slots[i].task = awaitlet_async_def(lp->loop, slot_task, &lp->slots[i]);
    awaitlet_task *chaos = awaitlet_async_def(lp->loop, st_chaos_task, lp);
    double warm_at = run->t_start + (run->seconds > 4 ? run->seconds / 4 : 1);
    while (!run->failures && keep_running(run)) {
        if (lp->index == 0 && !run->rss_warm_kb && st_all_warm(run) && st_now() >= warm_at)
            run->rss_warm_kb = rss_kb();
        for (int i = 0; i < lp->nslots; i++) {
            st_slot *s = &lp->slots[i];
            if (s->task && awaitlet_done(s->task)) {
                awaitlet_join_ex(s->task, NULL);
                ST_ADD(run->restarts, 1);
                s->task = awaitlet_async_def(lp->loop, slot_task, s);
                if (!s->task)
                    st_fail(run, "slot %d: restarting its task: %s", s->id, strerror(errno));
            }
        }
        awaitlet_sleep(0.01);
    }
    if (lp->index == 0)
        run->rss_end_kb = rss_kb();
    lp->stopping = 1;
    ev_timer_stop(lp->loop, &lp->chaos_cb);
    awaitlet_join_ex(chaos, NULL);
    for (int i = 0; i < lp->nslots; i++)
        if (lp->slots[i].task)
            awaitlet_join_ex(lp->slots[i].task, NULL);
    /* a cancel request sent by chaos may still be on its way (each is
     * bounded by pqawait_set_cancel_timeout, 1 s here): let them land
     * before the final round, where no failure is excused */
    awaitlet_sleep(1.2);
    /* the final round, every slot at once */
    awaitlet_task **fin = calloc((size_t)lp->nslots, sizeof *fin);
    for (int i = 0; i < lp->nslots && fin; i++)
        fin[i] = awaitlet_async_def(lp->loop, final_task, &lp->slots[i]);
    for (int i = 0; i < lp->nslots && fin; i++)
        if (fin[i])
            awaitlet_join_ex(fin[i], NULL);
    free(fin);
    for (int i = 0; i < lp->nslots; i++) {
        st_slot *s = &lp->slots[i];
        PGconn *c = s->conn;
        s->conn = NULL;
        PQfinish(c);
    }
    return NULL;
}

static void *loop_thread(void *arg)
{
    st_loop *lp = arg;
    lp->loop = ev_loop_new(EVFLAG_AUTO);
    ev_timer_init(&lp->chaos_cb, st_chaos_cb, 0.02, 0.02);
    lp->chaos_cb.data = lp;
    ev_timer_start(lp->loop, &lp->chaos_cb);
    if (awaitlet_run_ex(lp->loop, supervisor_task, lp, NULL) < 0)
        st_fail(lp->run, "loop %d: supervisor: %s", lp->index, strerror(errno));
    if (awaitlet_loop_tasks(lp->loop) != 0)
        st_fail(lp->run, "loop %d: %u tasks never ended", lp->index, awaitlet_loop_tasks(lp->loop));
    else if (awaitlet_loop_close(lp->loop) < 0)
        st_fail(lp->run, "loop %d: awaitlet_loop_close: %s", lp->index, strerror(errno));
    else
        ev_loop_destroy(lp->loop);
    return NULL;
}

/* ---- the server, before and after ---- */

static PGconn *admin(st_run *run)
{
    char ci[1024];
    snprintf(ci, sizeof ci, "host='%s' port=%s dbname=%s user=pqa_trust application_name=stress-admin",
             getenv("PQAWAIT_TEST_HOST"), getenv("PQAWAIT_TEST_PORT"), getenv("PQAWAIT_TEST_DB"));
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "stress: cannot reach the server: %s", PQerrorMessage(c));
        exit(2);
    }
    (void)run;
    return c;
}

static int admin_exec(PGconn *c, const char *sql, char *val, size_t cap)
{
    PGresult *r = PQexec(c, sql);
    int st = PQresultStatus(r);
    if (val && cap)
        snprintf(val, cap, "%s", st == PGRES_TUPLES_OK && PQntuples(r) ? PQgetvalue(r, 0, 0) : "");
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        fprintf(stderr, "stress: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr, "usage: stress [--seed S] [--tasks N] [--seconds T] [--threads K] [--check late-terminate|late-finish]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static st_run run;
    int check = 0;
    run.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    run.tasks = 100;
    run.seconds = 20;
    run.threads = 1;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (!strcmp(argv[i], "--seed"))
            run.seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--tasks"))
            run.tasks = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds"))
            run.seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--threads"))
            run.threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--check") && !strcmp(argv[i + 1], "late-terminate") && ++i)
            check = 1;
        else if (!strcmp(argv[i], "--check") && !strcmp(argv[i + 1], "late-finish") && ++i)
            check = 2;
        else
            usage();
    }
    if (run.tasks < 2 || run.tasks > 10000 || run.threads < 1 || run.threads > 16 || run.tasks < 2 * run.threads ||
        !(run.seconds > 0))
        usage();
    if (!getenv("PQAWAIT_TEST_PORT") || !getenv("PQAWAIT_TEST_HOST") || !getenv("PQAWAIT_TEST_DB") ||
        !getenv("PQAWAIT_TEST_SSLROOT")) {
        fprintf(stderr, "stress: PQAWAIT_TEST_HOST/PORT/DB/SSLROOT name no server (run it through tests/pg/with-pg)\n");
        return 2;
    }
    printf("stress: seed %llu, %d tasks on %d loop(s)/thread(s), %.0f s\n", (unsigned long long)run.seed, run.tasks,
           run.threads, run.seconds);
    fflush(stdout);
    pthread_mutex_init(&run.mu, NULL);
    snprintf(run.prefix, sizeof run.prefix, "pqa-stress-%d", (int)getpid());
    snprintf(table_copy, sizeof table_copy, "stress_copy_%d", (int)getpid());
    snprintf(table_kv, sizeof table_kv, "stress_kv_%d", (int)getpid());
    st_table_copy = table_copy;
    st_table_kv = table_kv;
    pqawait_set_cancel_timeout(1.0);

    PGconn *adm = admin(&run);
    if (check) {
        PQfinish(adm);
        int rc = check == 1 ? st_check_late_terminate(&run) : st_check_late_finish(&run);
        printf("%d%%: Checks: 1, Failures: %d, Errors: 0\n", rc ? 0 : 100, rc);
        return rc;
    }
    char sql[512];
    snprintf(sql, sizeof sql,
             "create table %s (slot int, seq bigint, line int, payload text);"
             "create table %s (slot int, seq bigint, k int)",
             table_copy, table_kv);
    if (admin_exec(adm, sql, NULL, 0) < 0)
        return 2;

    run.loops = calloc((size_t)run.threads, sizeof *run.loops);
    for (int l = 0, next = 0; l < run.threads; l++) {
        st_loop *lp = &run.loops[l];
        lp->run = &run;
        lp->index = l;
        lp->nslots = run.tasks / run.threads + (l < run.tasks % run.threads);
        lp->slots = calloc((size_t)lp->nslots, sizeof *lp->slots);
        lp->rng = run.seed ^ (0x5bd1e995ull * (uint64_t)(l + 1));
        for (int i = 0; i < lp->nslots; i++, next++) {
            st_slot *s = &lp->slots[i];
            s->lp = lp;
            s->id = next;
            s->rng = run.seed + 0x9e3779b97f4a7c15ull * (uint64_t)(next + 1);
            snprintf(s->channel, sizeof s->channel, "%s-%d", run.prefix, next);
        }
    }
    run.t_start = st_now();
    run.t_end = run.t_start + run.seconds;
    for (int l = 0; l < run.threads; l++)
        if (pthread_create(&run.loops[l].thread, NULL, loop_thread, &run.loops[l]) != 0) {
            fprintf(stderr, "stress: pthread_create failed\n");
            return 2;
        }
    for (int l = 0; l < run.threads; l++)
        pthread_join(run.loops[l].thread, NULL);
    double took = st_now() - run.t_start;

    /* the server: nothing of the run left */
    int checks = 0, bad = 0;
    char val[64] = "";
    snprintf(sql, sizeof sql,
             "select count(*) || '/' || count(*) filter (where state <> 'idle') from pg_stat_activity"
             " where application_name like '%s-%%'",
             run.prefix);
    for (int i = 0; i < 200; i++) {
        admin_exec(adm, sql, val, sizeof val);
        if (!strcmp(val, "0/0"))
            break;
        usleep(50000);
    }
    checks++;
    if (strcmp(val, "0/0") != 0) {
        st_fail(&run, "sessions of the run still on the server (all/not idle): %s", val);
        bad++;
    }
    snprintf(sql, sizeof sql, "select (select count(*) from %s) + (select count(*) from %s)", table_copy, table_kv);
    admin_exec(adm, sql, val, sizeof val);
    checks++;
    if (strcmp(val, "0") != 0) {
        st_fail(&run, "%s rows left in the run's tables", val);
        bad++;
    }
    snprintf(sql, sizeof sql, "drop table %s; drop table %s", table_copy, table_kv);
    admin_exec(adm, sql, NULL, 0);
    PQfinish(adm);

    unsigned long ops = 0, faults = 0;
    for (int i = 0; i < N_OPS; i++)
        ops += run.ops[i];
    for (int i = 0; i < N_FAULTS; i++)
        faults += run.faults[i];
    double slowest_kill = 0;
    for (int l = 0; l < run.threads; l++)
        if (run.loops[l].slowest_kill > slowest_kill)
            slowest_kill = run.loops[l].slowest_kill;
    printf("stress: %.1f s; %lu operations checked (simple %lu, params %lu, prepared %lu, copy out %lu, copy in %lu,"
           " large objects %lu, transactions %lu, notify %lu, pipelines %lu, sleeps %lu, resets %lu)\n",
           took, ops, run.ops[OP_SIMPLE], run.ops[OP_PARAMS], run.ops[OP_PREPARED], run.ops[OP_COPY_OUT],
           run.ops[OP_COPY_IN], run.ops[OP_LO], run.ops[OP_TXN], run.ops[OP_NOTIFY], run.ops[OP_PIPELINE],
           run.ops[OP_SLEEP], run.ops[OP_RESET]);
    printf("stress: %lu faults (task cancels %lu, deadlines %lu, pqawait_cancel %lu, foreign PQfinish %lu,"
           " pg_terminate_backend %lu (slowest round trip %.1f s); %lu pqawait_cancel requests failed;"
           " from libev callbacks: cancels %lu, deadlines %lu, refused calls %lu);"
           " %lu operations failed right after a fault, %lu by a late cancel; %lu reconnects, %lu task restarts;"
           " notifications %lu sent, %lu received; %lu server notices\n",
           faults, run.faults[F_CANCEL], run.faults[F_DEADLINE], run.faults[F_PQCANCEL], run.faults[F_FINISH],
           run.faults[F_TERMINATE], slowest_kill, run.cancel_failed, run.faults[F_CB_CANCEL], run.faults[F_CB_DEADLINE],
           run.faults[F_CB_REFUSED], run.tolerated, run.late_cancels, run.reconnects, run.restarts, run.notifies_sent,
           run.notifies_got, run.notices);
    printf("stress: warm-up %.1f s (no chaos meanwhile); RSS %ld KiB warm, %ld KiB at the end\n",
           run.t_warm ? run.t_warm - run.t_start : -1.0, run.rss_warm_kb, run.rss_end_kb);

    /* Invariants, one check each: every result right, every failure
     * excused, every task ended, every loop closed, every final
     * notification, every session idle (all through st_fail); nothing of
     * the run on the server; its tables empty; the run did something; RSS
     * did not grow. */
    checks += 2;
    if (run.failures > (unsigned long)bad)
        bad++;
    if (ops == 0 || faults == 0) {
        st_fail(&run, "the run did nothing (%lu operations, %lu faults)", ops, faults);
        bad++;
    }
    /* not under ASan (its quarantine grows RSS by design) nor valgrind
     * (whose own memory is in the figure) */
#if defined(__SANITIZE_ADDRESS__)
    int rss_checked = 0;
#else
    int rss_checked = !RUNNING_ON_VALGRIND && getenv("PQA_STRESS_NO_RSS") == NULL;
#endif
    checks++;
    if (rss_checked && run.rss_warm_kb && run.rss_end_kb > run.rss_warm_kb + run.rss_warm_kb / 5 + 8192) {
        st_fail(&run, "RSS grew from %ld KiB to %ld KiB", run.rss_warm_kb, run.rss_end_kb);
        bad++;
    }
    printf("stress: %lu failure(s)%s%s\n", run.failures, run.failures ? "; first: " : "", run.first_failure);
    printf("%d%%: Checks: %d, Failures: %d, Errors: 0\n", checks ? 100 * (checks - bad) / checks : 0, checks, bad);
    for (int l = 0; l < run.threads; l++)
        free(run.loops[l].slots);
    free(run.loops);
    return run.failures ? 1 : 0;
}
