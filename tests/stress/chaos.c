/*
 * chaos.c -- what breaks the stress program's slots, from a task and from
 * a libev callback (see stress.h).
 *
 * The chaos task of each loop wakes every 2-20 ms and hits one slot of its
 * loop at random (one per 100 slots: a loop busy with many slots wakes its
 * timers late): awaitlet_cancel of its task, a deadline 1-50 ms away,
 * pqawait_cancel of its statement, PQfinish of its connection while the
 * slot's task is inside libpq on it, or pg_terminate_backend of its
 * backend (over the chaos task's own connection).  The chaos timer -- a
 * plain libev callback every 20 ms, outside any task -- cancels tasks, gives deadlines,
 * and calls PQexec on a connection a slot is using, which the shim must
 * refuse (NULL, errno EBUSY) without touching it.
 *
 * A slot's in_call says that its task is suspended inside a libpq call on
 * its connection (ops.c): only then is a foreign PQfinish the shim's
 * "shut the session down, the owner frees it" case.  Every hit is noted
 * first (st_hit), so the slot's failures that follow are excused.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pqawait.h"
#include "stress.h"

static st_slot *pick(st_loop *lp)
{
    return &lp->slots[st_rand(&lp->rng, (uint32_t)lp->nslots)];
}

/* Hits per wake-up: a busy loop wakes its timers late, so the rate per
 * slot stays about the same with more slots. */
static int per_wake(const st_loop *lp)
{
    return lp->nslots > 100 ? lp->nslots / 100 : 1;
}

static void chaos_hit(st_loop *lp, st_slot *s);

static int alive(const st_slot *s)
{
    return s->task && !awaitlet_done(s->task);
}

static void chaos_connect(st_loop *lp)
{
    char ci[1024];
    snprintf(ci, sizeof ci, "host='%s' port=%s dbname=%s user=pqa_trust application_name=%s-chaos%d",
             getenv("PQAWAIT_TEST_HOST"), getenv("PQAWAIT_TEST_PORT"), getenv("PQAWAIT_TEST_DB"), lp->run->prefix,
             lp->index);
    lp->killer = PQconnectdb(ci);
    PQsetNoticeProcessor(lp->killer, st_notice, lp->run);
    if (PQstatus(lp->killer) != CONNECTION_OK) {
        st_fail(lp->run, "chaos connection: %s", PQerrorMessage(lp->killer));
        PQfinish(lp->killer);
        lp->killer = NULL;
    }
}

static void terminate(st_loop *lp, st_slot *s)
{
    if (!lp->killer || !s->backend)
        return;
    /* s->backend may be stale (the session died and is not repaired yet)
     * and its pid reused by another slot's new backend: the server checks
     * that the pid is still this slot's session */
    char sql[256];
    snprintf(sql, sizeof sql,
             "select pg_terminate_backend(pid) from pg_stat_activity where pid = %d and application_name = '%s-%d'",
             s->backend, lp->run->prefix, s->id);
    int pid = s->backend;
    double t0 = st_now();
    st_hit(s, F_TERMINATE);
    /* Suspends: on a loaded server the round trip takes seconds (3.2 s
     * seen), and the session ends only when the server runs the statement.
     * So the fault is noted again when it returns, and the backend it
     * ended is remembered: that session's failure is this fault's however
     * late the slot notices it. */
    PGresult *r = PQexec(lp->killer, sql);
    double took = st_now() - t0;
    if (took > lp->slowest_kill)
        lp->slowest_kill = took;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        st_fail(lp->run, "chaos: pg_terminate_backend: %s", PQerrorMessage(lp->killer));
    else if (PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0) {
        s->terminated = pid;
        s->last_fault = st_now();
    }
    PQclear(r);
}

void *st_chaos_task(void *arg)
{
    st_loop *lp = arg;
    chaos_connect(lp);
    while (!lp->stopping && !st_all_warm(lp->run)) /* no chaos while warming up */
        awaitlet_sleep(0.01);
    while (!lp->stopping && awaitlet_sleep((2 + st_rand(&lp->rng, 19)) / 1000.0) == 0) {
        for (int k = 0; k < per_wake(lp) && !lp->stopping; k++)
            chaos_hit(lp, pick(lp));
    }
    PQfinish(lp->killer);
    lp->killer = NULL;
    return NULL;
}

/* One hit from the chaos task (it may suspend: pqawait_cancel, and
 * pg_terminate_backend over its own connection). */
static void chaos_hit(st_loop *lp, st_slot *s)
{
    switch (st_rand(&lp->rng, 5)) {
    case 0:
        if (alive(s)) {
            st_hit(s, F_CANCEL);
            awaitlet_cancel(s->task);
        }
        break;
    case 1:
        if (alive(s)) {
            st_hit(s, F_DEADLINE);
            awaitlet_set_deadline(s->task, (1 + st_rand(&lp->rng, 50)) / 1000.0);
        }
        break;
    case 2:
        if (s->conn && s->in_call) {
            PGcancel *c = PQgetCancel(s->conn);
            char err[256];
            st_hit(s, F_PQCANCEL);
            /* 0 is an outcome too: on a server too loaded to accept the
             * request's connection within half of the cancel timeout (0.5
             * s here), libpq's "connect() failed: error 115" (EINPROGRESS) */
            if (c && pqawait_cancel(c, err, sizeof err) != 1)
                ST_ADD(lp->run->cancel_failed, 1);
            PQfreeCancel(c);
        }
        break;
    case 3:
        if (s->conn && s->in_call && !s->foreign_finished) {
            st_hit(s, F_FINISH);
            s->foreign_finished = 1; /* the slot frees it (session.c) */
            PQfinish(s->conn);
        }
        break;
    default:
        terminate(lp, s);
        break;
    }
}

static void cb_hit(st_loop *lp, st_slot *s);

void st_chaos_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    st_loop *lp = w->data;
    if (lp->stopping || !st_all_warm(lp->run))
        return;
    for (int k = 0; k < per_wake(lp); k++)
        cb_hit(lp, pick(lp));
}

/* One hit from the libev callback: outside any task, never suspends. */
static void cb_hit(st_loop *lp, st_slot *s)
{
    switch (st_rand(&lp->rng, 3)) {
    case 0:
        if (alive(s)) {
            st_hit(s, F_CB_CANCEL);
            awaitlet_cancel(s->task);
        }
        break;
    case 1:
        if (alive(s)) {
            st_hit(s, F_CB_DEADLINE);
            awaitlet_set_deadline(s->task, (1 + st_rand(&lp->rng, 50)) / 1000.0);
        }
        break;
    default:
        if (s->conn && s->in_call && !s->foreign_finished) {
            /* the slot's task is inside libpq on it: refused, untouched */
            ST_ADD(lp->run->faults[F_CB_REFUSED], 1);
            errno = 0;
            PGresult *r = PQexec(s->conn, "select 'intruder'");
            if (r != NULL || errno != EBUSY)
                st_fail(lp->run, "a libev callback's PQexec on slot %d's busy connection gave %s (errno %d)", s->id,
                        r ? PQresStatus(PQresultStatus(r)) : "NULL", errno);
            PQclear(r);
        }
        break;
    }
}

/* Outside any task (plain libpq through the shim): one TLS slot, its
 * backend terminated the chaos task's way, its next statement run later
 * than ST_FAULT_WINDOW after the hit -- what a 3.2 s round trip of the
 * chaos connection's statement did in a 4-thread run. */
int st_check_late_terminate(st_run *run)
{
    st_loop lp = {.run = run, .index = 0, .nslots = 1};
    st_slot s = {.lp = &lp, .id = 2 /* id % 3 == 2: TLS through "localhost" */};
    lp.slots = &s;
    snprintf(s.channel, sizeof s.channel, "%s-%d", run->prefix, s.id);
    chaos_connect(&lp);
    int rc = 1;
    if (lp.killer && st_connect(&s) == 0 && st_session_setup(&s) == 0) {
        int pid = s.backend;
        terminate(&lp, &s);
        struct timespec pause = {(time_t)ST_FAULT_WINDOW, 500000000};
        nanosleep(&pause, NULL);
        int op = st_op(&s, OP_SIMPLE);
        printf("stress: backend %d terminated; the next statement %s %.1f s after the hit; %lu failure(s)\n", pid,
               op < 0 ? "failed" : "succeeded", st_now() - s.last_fault, run->failures);
        rc = op < 0 && run->failures == 0 ? 0 : 1;
    }
    PQfinish(s.conn);
    PQfinish(lp.killer);
    return rc;
}

/* --check late-finish: chaos's PQfinish of a slot's connection while the
 * slot's task is inside libpq on it, then the loop held up for longer than
 * ST_FAULT_WINDOW before the slot's task runs again (on a loaded 2-core
 * machine a loop of 250 slots took that long: "no fault for 3.1 s" after a
 * foreign PQfinish, seen in the server log and a trace of shutdown(2)). */
static void *late_finish_slot(void *arg)
{
    st_slot *s = arg;
    for (int i = 0; i < 1000 && !s->foreign_finished; i++)
        (void)st_op(s, OP_SIMPLE);
    st_drop_finished(s);
    return NULL;
}

static void *late_finish_main(void *arg)
{
    st_slot *s = arg;
    s->task = awaitlet_async_def(awaitlet_current_loop(), late_finish_slot, s);
    while (!(s->conn && s->in_call) && !awaitlet_done(s->task))
        (void)awaitlet_sleep(0);
    if (!awaitlet_done(s->task)) {
        st_hit(s, F_FINISH);
        s->foreign_finished = 1;
        PQfinish(s->conn); /* refused (EBUSY): the session is shut down */
        struct timespec pause = {(time_t)ST_FAULT_WINDOW, 500000000};
        nanosleep(&pause, NULL); /* the loop, busy elsewhere */
    }
    awaitlet_join_ex(s->task, NULL);
    return NULL;
}

int st_check_late_finish(st_run *run)
{
    st_loop lp = {.run = run, .index = 0, .nslots = 1};
    st_slot s = {.lp = &lp, .id = 2 /* TLS through "localhost" */};
    lp.slots = &s;
    snprintf(s.channel, sizeof s.channel, "%s-%d", run->prefix, s.id);
    if (st_connect(&s) < 0 || st_session_setup(&s) < 0)
        return 1;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    int rc = awaitlet_run_ex(loop, late_finish_main, &s, NULL);
    printf("stress: foreign PQfinish %s; the slot failed %.1f s after it; %lu failure(s)\n",
           s.foreign_finished || !s.conn ? "done" : "not done", st_now() - s.last_fault, run->failures);
    rc = rc == 0 && !s.conn && run->failures == 0 ? 0 : 1;
    if (awaitlet_loop_close(loop) < 0)
        rc = 1;
    ev_loop_destroy(loop);
    PQfinish(s.conn);
    return rc;
}
