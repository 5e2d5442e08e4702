/*
 * shim_query.c -- what libpqawait costs per query, against plain blocking
 * libpq and against the libev state machine an expert would write by hand.
 *
 * The point of the shim is that unmodified blocking libpq code, started as
 * an awaitlet task, shares a libev loop with everything else.  That is only
 * worth having if it costs (a) nothing for code that is not in a task -- the
 * program is relinked with the shim ahead of libpq, so every libpq call goes
 * through it -- and (b) little next to the hand-written alternative, which
 * drives libpq's async API from ev_io callbacks.  The variants, all running
 * "SELECT 1" against a real server over its unix socket:
 *
 *   blocking  PQexec N times outside any task: the baseline.  Linked with the
 *             shim, the calls forward to libpq; the same source built with
 *             -DNO_SHIM (bench-shim-query-plain) is the same loop without the
 *             shim, and script/bench compares the two (pass-through cost).
 *   task      the same PQexec loop inside one awaitlet task (cooperative).
 *   evloop    PQsendQuery + an ev_io on PQsocket that stays started;
 *             its callback does PQconsumeInput, then PQgetResult while not
 *             PQisBusy, until NULL; then the next query.  One at a time.
 *   task8     8 connections, one task each doing the PQexec loop.
 *   evloop8   8 connections driven by 8 evloop state machines at once.
 *
 * An operation is one query (for the 8-connection variants: one query of
 * the N shared among the connections; ns/query is wall time over N, so its
 * inverse is throughput).  Connections are made on a variant's first run,
 * outside its timing, and kept: one set per variant, so no variant inherits
 * another's socket state or fd numbers.
 *
 * The server: PQAWAIT_TEST_HOST / PQAWAIT_TEST_PORT / PQAWAIT_TEST_DB from
 * tests/pg/pgserver (script/bench starts one), user pqa_trust; or a full
 * conninfo string in BENCH_PG_CONNINFO.
 */
#include "bench.h"

#include <dlfcn.h>
#include <ev.h>
#include <libpq-fe.h>
#ifndef NO_SHIM
#include <awaitlet.h>
#include <pqawait.h>
#endif

#define QUERY "SELECT 1"
#define NCONC 8

static struct ev_loop *loop;
static char conninfo[1024];

static PGconn *conn_blocking[1], *conn_evloop[1], *conn_evloop8[NCONC];
#ifndef NO_SHIM
static PGconn *conn_task[1], *conn_task8[NCONC];
#endif

__attribute__((noreturn)) static void die_pq(PGconn *c, const char *what)
{
    fprintf(stderr, "bench: %s: %s", what, c ? PQerrorMessage(c) : "out of memory\n");
    exit(1);
}

static void setup_conninfo(void)
{
    const char *ci = getenv("BENCH_PG_CONNINFO");
    const char *host = getenv("PQAWAIT_TEST_HOST"), *port = getenv("PQAWAIT_TEST_PORT");
    const char *db = getenv("PQAWAIT_TEST_DB");
    int len;
    if (ci)
        len = snprintf(conninfo, sizeof conninfo, "%s", ci);
    else if (host && port)
        len = snprintf(conninfo, sizeof conninfo, "host='%s' port=%s user=pqa_trust dbname=%s",
                       host, port, db ? db : "pqawait");
    else {
        fprintf(stderr, "bench: no server: set PQAWAIT_TEST_HOST and PQAWAIT_TEST_PORT "
                        "(eval \"$(tests/pg/pgserver env DIR)\") or BENCH_PG_CONNINFO\n");
        exit(2);
    }
    if (len < 0 || (size_t)len >= sizeof conninfo) {
        fprintf(stderr, "bench: connection string too long\n");
        exit(2);
    }
}

/* Connect a variant's set on its first run (outside its timing). */
static void connect_set(PGconn **set, int k, int nonblocking)
{
    for (int i = 0; i < k; i++) {
        if (set[i])
            continue;
        set[i] = PQconnectdb(conninfo);
        if (!set[i] || PQstatus(set[i]) != CONNECTION_OK)
            die_pq(set[i], "connect");
        if (nonblocking && PQsetnonblocking(set[i], 1) != 0)
            die_pq(set[i], "PQsetnonblocking");
    }
}

static void finish_set(PGconn **set, int k)
{
    for (int i = 0; i < k; i++)
        if (set[i])
            PQfinish(set[i]);
}

static void check_result(PGconn *c, PGresult *r)
{
    if (!r)
        die_pq(c, QUERY);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        fprintf(stderr, "bench: %s: %s", QUERY, PQresultErrorMessage(r));
        exit(1);
    }
}

/* The blocking code under test, as an application has it. */
static void exec_loop(PGconn *c, long n)
{
    for (long i = 0; i < n; i++) {
        PGresult *r = PQexec(c, QUERY);
        check_result(c, r);
        PQclear(r);
    }
}

/* How many of the n queries connection i of k runs. */
static long share(long n, int k, int i)
{
    return n / k + (i < n % k);
}

/* ---- (a) baseline: blocking PQexec outside any task ---- */

static double run_blocking(long n)
{
    double t0;
    connect_set(conn_blocking, 1, 0);
    t0 = bench_now();
    exec_loop(conn_blocking[0], n);
    return bench_now() - t0;
}

/* ---- (b), (d): the same loop in tasks ---- */

#ifndef NO_SHIM
struct job {
    PGconn *conn;
    long n;
};

static void *task_fn(void *arg)
{
    struct job *j = arg;
    exec_loop(j->conn, j->n);
    return NULL;
}

static double run_tasks(PGconn **set, int k, long n)
{
    struct job jobs[NCONC];
    awaitlet_task *t[NCONC];
    double t0, t1;
    connect_set(set, k, 0);
    for (int i = 0; i < k; i++)
        jobs[i] = (struct job){ set[i], share(n, k, i) };
    t0 = bench_now();
    for (int i = 0; i < k; i++)
        if (!(t[i] = awaitlet_async_def(loop, task_fn, &jobs[i])))
            bench_die("awaitlet_async_def");
    for (int i = 0; i < k; i++) {
        errno = 0;
        if (awaitlet_join(t[i]) == NULL && errno)
            bench_die("awaitlet_join");
    }
    t1 = bench_now();
    return t1 - t0;
}

static double run_task(long n)
{
    return run_tasks(conn_task, 1, n);
}

static double run_task8(long n)
{
    return run_tasks(conn_task8, NCONC, n);
}
#endif

/* ---- (c), (d): the hand-written libev state machine ---- */

struct sm {
    ev_io w; /* first, so the callback can cast back */
    PGconn *conn;
    long left; /* queries still to finish, the one in flight included */
};

static int sm_running; /* machines not finished yet */

static void sm_watch(struct ev_loop *l, struct sm *m, int events)
{
    ev_io_stop(l, &m->w);
    ev_io_set(&m->w, m->w.fd, events);
    ev_io_start(l, &m->w);
}

/* Send the next query.  The connection is nonblocking, so a send the
 * socket cannot take at once waits for EV_WRITE too (never for SELECT 1,
 * but that is what the hand-written code has to handle). */
static void sm_send(struct ev_loop *l, struct sm *m)
{
    int f;
    if (!PQsendQuery(m->conn, QUERY))
        die_pq(m->conn, "PQsendQuery");
    if ((f = PQflush(m->conn)) < 0)
        die_pq(m->conn, "PQflush");
    if (f > 0)
        sm_watch(l, m, EV_READ | EV_WRITE);
}

static void sm_cb(struct ev_loop *l, ev_io *w, int revents)
{
    struct sm *m = (struct sm *)w;
    if (revents & EV_WRITE) {
        int f = PQflush(m->conn);
        if (f < 0)
            die_pq(m->conn, "PQflush");
        if (f == 0)
            sm_watch(l, m, EV_READ);
    }
    if (!(revents & EV_READ))
        return;
    if (!PQconsumeInput(m->conn))
        die_pq(m->conn, "PQconsumeInput");
    while (!PQisBusy(m->conn)) {
        PGresult *r = PQgetResult(m->conn);
        if (r) {
            check_result(m->conn, r);
            PQclear(r);
            continue;
        }
        /* NULL: the query is complete. */
        if (--m->left > 0) {
            sm_send(l, m);
            return;
        }
        ev_io_stop(l, w);
        if (--sm_running == 0)
            ev_break(l, EVBREAK_ALL); /* whatever else the runtime keeps on the loop */
        return;
    }
}

static double run_sms(PGconn **set, int k, long n)
{
    struct sm m[NCONC];
    double t0, t1;
    connect_set(set, k, 1);
    sm_running = 0;
    for (int i = 0; i < k; i++) {
        ev_io_init(&m[i].w, sm_cb, PQsocket(set[i]), EV_READ);
        m[i].conn = set[i];
        m[i].left = share(n, k, i);
    }
    t0 = bench_now();
    for (int i = 0; i < k; i++) {
        if (m[i].left == 0)
            continue;
        ev_io_start(loop, &m[i].w);
        sm_send(loop, &m[i]);
        sm_running++;
    }
    if (sm_running)
        ev_run(loop, 0);
    t1 = bench_now();
    return t1 - t0;
}

static double run_evloop(long n)
{
    return run_sms(conn_evloop, 1, n);
}

static double run_evloop8(long n)
{
    return run_sms(conn_evloop8, NCONC, n);
}

/* ---- main ---- */

static void report_tput(const struct bench_variant *v)
{
    char what[64];
    snprintf(what, sizeof what, "%s queries/s", v->name);
    bench_line("shimquery", what, 1e9 / v->median, "(from the median)");
}

int main(int argc, char **argv)
{
    struct bench_args args;
#ifndef NO_SHIM
    enum { BLOCKING, TASK, EVLOOP, TASK8, EVLOOP8, NV };
    static const char names[] = "blocking task evloop task8 evloop8";
    struct bench_variant v[NV] = {
        [BLOCKING] = { .name = "blocking", .run = run_blocking },
        [TASK] = { .name = "task", .run = run_task },
        [EVLOOP] = { .name = "evloop", .run = run_evloop },
        [TASK8] = { .name = "task8", .run = run_task8 },
        [EVLOOP8] = { .name = "evloop8", .run = run_evloop8 },
    };
#else
    enum { BLOCKING, EVLOOP, EVLOOP8, NV };
    static const char names[] = "blocking evloop evloop8 (built without the shim)";
    struct bench_variant v[NV] = {
        [BLOCKING] = { .name = "blocking", .run = run_blocking },
        [EVLOOP] = { .name = "evloop", .run = run_evloop },
        [EVLOOP8] = { .name = "evloop8", .run = run_evloop8 },
    };
#endif

    bench_parse(argc, argv, &args, names);
    for (int i = 0; i < NV; i++)
        v[i].n = bench_scaled(&args, 2000);
    setup_conninfo();

    /* Measure what the name says, or nothing. */
#ifndef NO_SHIM
    if (!pqawait_interposed()) {
        fprintf(stderr, "bench: libpq's calls do not reach libpqawait (link order?)\n");
        return 1;
    }
#else
    if (dlsym(RTLD_DEFAULT, "pqawait_version")) {
        fprintf(stderr, "bench: the plain build has libpqawait loaded (LD_PRELOAD?)\n");
        return 1;
    }
#endif
    if (!(loop = ev_loop_new(EVFLAG_AUTO)))
        bench_die("ev_loop_new");

    if (!bench_only(v, NV, &args)) {
        bench_interleave(v, NV, args.rounds);
        for (int i = 0; i < NV; i++)
            bench_report("shimquery", &v[i], "ns/query", args.rounds, NULL);
#ifndef NO_SHIM
        bench_ratio("shimquery", &v[TASK], &v[BLOCKING], NULL);
        bench_ratio("shimquery", &v[EVLOOP], &v[BLOCKING], NULL);
        bench_ratio("shimquery", &v[TASK], &v[EVLOOP], NULL);
        bench_ratio("shimquery", &v[TASK8], &v[EVLOOP8], NULL);
        bench_ratio("shimquery", &v[TASK8], &v[BLOCKING], NULL);
        report_tput(&v[TASK8]);
#else
        bench_ratio("shimquery", &v[EVLOOP], &v[BLOCKING], NULL);
        bench_ratio("shimquery", &v[EVLOOP8], &v[BLOCKING], NULL);
#endif
        report_tput(&v[EVLOOP8]);
        report_tput(&v[BLOCKING]);
    }

    finish_set(conn_blocking, 1);
    finish_set(conn_evloop, 1);
    finish_set(conn_evloop8, NCONC);
#ifndef NO_SHIM
    finish_set(conn_task, 1);
    finish_set(conn_task8, NCONC);
#endif
    ev_loop_destroy(loop);
    return 0;
}
