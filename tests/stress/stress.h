/*
 * stress.h -- the randomized stress program's shared state (issue 9,
 * item 3).
 *
 * One run: a printed seed, N slots spread over K threads (one libev loop
 * each).  A slot is a connection and the task currently driving it; the
 * task picks operations at random (ops.c), every result carrying a value
 * unique to the slot and the operation, checked.  Beside them, on every
 * loop, a chaos task and a libev timer callback (chaos.c) cancel tasks,
 * give them deadlines, cancel their statements, PQfinish their
 * connections while they are in use, terminate their backends, and try to
 * use busy connections from outside any task.  A supervisor task per loop
 * restarts cancelled slots, ends the run, runs the final checks (every
 * notification delivered, every session idle) and closes everything
 * (stress.c).  Afterwards main checks the server: nothing of ours left.
 *
 * Everything a loop owns is touched by that loop's thread only; what the
 * run shares (counters, the failure log) is atomic or under run->mu.
 */
#ifndef PQA_STRESS_H
#define PQA_STRESS_H

#include <ev.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdint.h>

#include "awaitlet.h"

/* What each operation did, counted per kind for the summary. */
enum st_op {
    OP_SIMPLE, OP_PARAMS, OP_PREPARED, OP_COPY_OUT, OP_COPY_IN, OP_LO, OP_TXN, OP_NOTIFY, OP_PIPELINE,
    OP_SLEEP, OP_RESET, N_OPS
};

/* What chaos did. */
enum st_fault {
    F_CANCEL, F_DEADLINE, F_PQCANCEL, F_FINISH, F_TERMINATE, F_CB_CANCEL, F_CB_DEADLINE, F_CB_REFUSED,
    N_FAULTS
};

/* A write in flight: recorded before it starts, cleared once its rows are
 * checked and deleted -- by the operation itself, or after a failure once
 * the session works again (session.c). */
struct st_pending {
    int kind;               /* 0 none, OP_COPY_IN, OP_TXN */
    unsigned long seq;
    long rows;              /* COPY IN: lines sent */
    long long sumlen, sumfirst;
    int succeeded;          /* the write itself reported success */
    int survived;           /* failed, and the session was still up after */
};

typedef struct st_run st_run;
typedef struct st_loop st_loop;

typedef struct st_slot {
    st_loop *lp;
    int id;                 /* unique in the run */
    PGconn *conn;
    awaitlet_task *task;    /* the task driving it now */
    uint64_t rng;
    unsigned long seq;      /* operations so far: part of every token */
    int in_call;            /* inside a libpq call right now (chaos may
                               PQfinish the connection only then) */
    int foreign_finished;   /* chaos PQfinish'ed it while in use: the slot
                               must PQfinish it itself and connect anew */
    int prepared;           /* its named statement exists in this session */
    int backend;            /* pid of the session's backend */
    int terminated;         /* a backend chaos's pg_terminate_backend ended
                               (excuses that session's failures, however late) */
    double last_fault;      /* when chaos last hit this slot */
    int last_kind;          /* and how (enum st_fault), for a failure's message */
    double last_cancel;     /* when chaos last made a cancel request for it */
    unsigned long instances;/* tasks that have driven it */
    char channel[64];       /* its LISTEN channel */
    unsigned long notified; /* notifications received (all checked) */
    int final_got;          /* the final round's notification arrived */
    int warming;            /* st_warm_up: largest sizes */
    int warmed;             /* its warm-up is done */
    struct st_pending pending;
} st_slot;

struct st_loop {
    st_run *run;
    int index;
    struct ev_loop *loop;
    pthread_t thread;
    st_slot *slots;
    int nslots;
    uint64_t rng;
    int stopping;           /* the run's time is up: no new operations */
    ev_timer chaos_cb;      /* chaos from outside any task */
    PGconn *killer;         /* the chaos task's own connection */
    double slowest_kill;    /* s: longest pg_terminate_backend round trip */
    int final_ready;        /* slots ready for the final round */
};

struct st_run {
    uint64_t seed;
    int tasks, threads;
    double seconds;
    char prefix[48];        /* application_name prefix of our sessions */
    char conninfo[1024];
    double t_start, t_end;
    st_loop *loops;
    /* counts, any thread (atomic) */
    unsigned long ops[N_OPS], faults[N_FAULTS];
    unsigned long tolerated;   /* operations that failed right after a fault */
    unsigned long late_cancels;/* 57014 from an earlier cancel request (ops.c) */
    unsigned long cancel_failed;/* pqawait_cancel calls that failed (chaos.c) */
    unsigned long reconnects, restarts, notifies_sent, notifies_got, notices;
    unsigned long failures;
    unsigned long warmed;      /* slots done with their warm-up */
    pthread_mutex_t mu;        /* the failure log */
    char first_failure[1024];
    long rss_warm_kb, rss_end_kb;
    double t_warm;             /* when the last slot finished its warm-up */
};

/* A failed invariant: counted, the first few printed and the first kept. */
void st_fail(st_run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A fault just hit slot s (chaos.c): failures of its operations within
 * the next seconds are the fault's doing. */
void st_hit(st_slot *s, enum st_fault f);

/* The slot's PRNG: uniform in [0, n). */
uint32_t st_rand(uint64_t *state, uint32_t n);

double st_now(void);

/* The run's tables (stress.c creates them). */
extern const char *st_table_copy, *st_table_kv;

/* session.c */

/* Opens (or reopens) the slot's session: connect, application_name.
 * 0, or -1 (repaired later). */
int st_connect(st_slot *s);

/* After a (re)connect: LISTEN again, note the backend.  0 or -1. */
int st_session_setup(st_slot *s);

/* PQreset: a new session, so it needs LISTEN and its statement again. */
void st_reset_session(st_slot *s);

/* Brings the session back to idle and connected (rollback, leave pipeline
 * mode, PQreset, or PQfinish and connect after a foreign PQfinish) and
 * checks a pending write. */
void st_repair(st_slot *s);

/* ops.c */

/* A failure of the slot is excused now: chaos hit it within the last few
 * seconds, or the task is interrupted. */
int st_excused(const st_slot *s);
#define ST_FAULT_WINDOW 3.0 /* s: how long a fault excuses a slot's failures */

/* stress --check late-terminate: a backend chaos terminated whose slot
 * notices only after ST_FAULT_WINDOW (a loaded server's round trip) must be
 * excused; 0 if it was, 1 if not (a failure printed). */
int st_check_late_terminate(st_run *run);

/* stress --check late-finish: the same for chaos's PQfinish of a
 * connection the slot's task is inside libpq with, the loop held up past
 * ST_FAULT_WINDOW before the slot runs again. */
int st_check_late_finish(st_run *run);

/* One operation on the slot (op < 0: a random one), checked.  Returns 0
 * when the session is fine afterwards, -1 when the caller must repair it
 * (st_repair). */
int st_op(st_slot *s, int op);

/* Before chaos starts: one operation of each kind at the largest sizes, so
 * that the sessions' buffers are full-grown when RSS is first sampled. */
int st_warm_up(st_slot *s);

/* 1 once every slot of the run is warmed up (any thread). */
int st_all_warm(st_run *run);

/* Frees the slot's connection if chaos PQfinish'ed it under the task. */
void st_drop_finished(st_slot *s);

/* Clears a deadline of the running task; 1 if it is cancelled. */
int st_cancelled(void);

/* The notice processor of every session of the run (counts). */
void st_notice(void *arg, const char *msg);

/* Drains and checks notifications that arrived on the session. */
void st_take_notifies(st_slot *s);

/* chaos.c */
void *st_chaos_task(void *arg);                /* arg: st_loop */
void st_chaos_cb(struct ev_loop *loop, ev_timer *w, int revents);

#define ST_ADD(field, n) __atomic_add_fetch(&(field), (n), __ATOMIC_RELAXED)

#endif
