/*
 * pg.h -- what the parts of the PostgreSQL throughput driver share
 * (bench-pg and bench-pg-plain; docs/performance.md describes the bench).
 *
 * One program, one variant per process, so every variant runs the same
 * workload code against the same server with the same connection string,
 * the same warm-up and the same measurement window:
 *
 *   a  pqawait     blocking libpq calls (PQexec, PQexecPrepared...) as
 *                  awaitlet tasks, one task per session, one libev loop
 *   b  pqawait-mt  the same with one loop (thread) per CPU, sessions dealt
 *                  round-robin
 *   c  threads     one thread per session, the same blocking code
 *   d  libev       a hand-written libev + libpq-async state machine per
 *                  session on one loop (what an expert writes)
 *
 * bench-pg links libpqawait ahead of libpq (as users relink); it runs all
 * four.  bench-pg-plain is the same source built with -DNO_SHIM and without
 * the shim: it runs c and d, so "plain libpq" is plain libpq.  (pgbench,
 * variant e, is run by script/bench.)  bench-pg-floor (-DPGB_FLOOR) is
 * variant a without libpqawait: floor.c turns libpq's poll into
 * awaitlet_io and does nothing else, the floor under the in-task target.
 *
 * A run: every session connects (not timed), then all start together on a
 * "go" eventfd; after the warm-up the main thread samples the sessions'
 * operation counters, sleeps for the window and samples again (timed mode),
 * or the sessions run a fixed number of operations and stop (count mode,
 * for perf/strace/callgrind: runs at N and 2N operations are subtracted so
 * start-up cancels out).  Counters are per session, written only by their
 * session with relaxed atomics: the hot path makes no system call and takes
 * no lock for the measurement.
 */
#ifndef PQAWAIT_BENCH_PG_H
#define PQAWAIT_BENCH_PG_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>

#define PGB_COPY_BYTES (1L << 20) /* what one COPY OUT must deliver */
#define PGB_POINT_ROWS 100000     /* pgbench_accounts at scale 1 */

enum pgb_variant { PGB_TASKS, PGB_TASKS_MT, PGB_THREADS, PGB_LIBEV };

enum pgb_workload {
    PGB_SELECT1,  /* "SELECT 1", simple query protocol */
    PGB_POINT,    /* prepared point select on pgbench_accounts */
    PGB_EXTENDED, /* the same select, unnamed (PQexecParams): pgbouncer */
    PGB_COPY,     /* COPY bench_copy TO STDOUT: 1 MiB */
    PGB_STORM,    /* connect, SELECT 1, disconnect */
};

extern const char *const pgb_workload_names[];
extern const char *const pgb_point_sql;
extern const char *const pgb_copy_sql;

struct pgb_session {
    _Atomic unsigned long ops; /* completed operations; written by the session only */
    PGconn *conn;
    int fd;           /* PQsocket after connecting (-1 for storm) */
    int index;
    long quota;       /* count mode: operations to run; 0: until stop */
    unsigned rng;     /* xorshift state for the point select */
    char pad[64];     /* keep sessions of different threads off one line */
};

struct pgb_run {
    enum pgb_variant variant;
    enum pgb_workload workload;
    int sessions;
    int loops;          /* b: loops (threads); others 1 */
    double warmup, duration;
    long count;         /* count mode: total operations (0: timed mode) */
    int churn;          /* a/b/c: one more session connecting and disconnecting */
    int hold;           /* memory mode: connect, one query, hold until go */
    int hold_queries;   /* memory mode: queries per session after go */
    char conninfo[1024];

    struct pgb_session *s;
    int go_fd;                    /* eventfd, readable once the run starts */
    atomic_int connected;         /* sessions ready (connected, prepared) */
    atomic_int failed;            /* sessions that gave up */
    atomic_int stop;              /* timed mode: the window is over */
    atomic_int finished;          /* sessions done with their work */
    _Atomic unsigned long errors; /* failed operations, all sessions */
    _Atomic unsigned long churn_ops;
    long rss_base;                /* memory mode: bytes before the sessions */
};

extern struct pgb_run pgb;

/* The variants, each in its own file: start spawns the threads and returns;
 * join waits for them.  pgb_tasks_* exist only in the shim build. */
void pgb_tasks_start(void);
extern unsigned long pgb_floor_polls; /* bench-pg-floor: libpq's waits seen by floor.c */
void pgb_tasks_join(void);
void pgb_threads_start(void);
void pgb_threads_join(void);
void pgb_libev_start(void);
void pgb_libev_join(void);

/* The blocking workload code shared by a, b and c (pg_work.c).  Each
 * returns 0, or -1 after reporting the failure (pgb_fail). */
int pgb_connect(struct pgb_session *s);     /* connect + per-session setup */
int pgb_op(struct pgb_session *s);          /* one operation of pgb.workload */
void pgb_disconnect(struct pgb_session *s);
int pgb_churn_once(void);                   /* connect, SELECT 1, PQfinish */

/* A session's whole life as blocking code (a, b, c): connect, mark ready,
 * wait_go(), operations until pgb_keep_going says stop, disconnect.  The
 * churn side session: connect/SELECT 1/disconnect from go until the
 * measured sessions are done.  wait_go returns 0, or -1 on failure. */
void pgb_session_main(struct pgb_session *s, int (*wait_go)(void));
void pgb_churn_main(int (*wait_go)(void));

/* Checks every variant applies to what it got (the hand-written state
 * machine included): 0, or -1 after pgb_fail. */
int pgb_check_tuples(PGconn *c, PGresult *r);
int pgb_check_copy_end(PGconn *c, PGresult *r, long bytes);
/* The point select's parameter for the session's next operation. */
const char *pgb_next_aid(struct pgb_session *s, char buf[16]);

/* Report a failure (the first few are printed) and count it. */
void pgb_fail(PGconn *c, const char *what);
/* Session bookkeeping shared by all variants. */
void pgb_mark_connected(struct pgb_session *s);
void pgb_mark_failed(void);
int pgb_keep_going(const struct pgb_session *s);
void pgb_count(struct pgb_session *s);
long pgb_rss_bytes(void);

#endif
