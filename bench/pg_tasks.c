/*
 * pg_tasks.c -- variants a and b: the blocking sessions of pg_work.c as
 * awaitlet tasks, one task per session.
 *
 * a runs every session on one libev loop in one thread; b runs one loop per
 * CPU (pgb.loops threads), session i on loop i % loops.  Each loop thread
 * owns its loop: it creates it, starts its tasks and joins them (which runs
 * the loop), then closes it.  The main thread only samples counters.  The
 * libpq calls inside the tasks reach libpqawait (bench-pg is linked with it
 * ahead of libpq), so their waits suspend only their task.
 *
 * Suspension points here: awaitlet_io on the go eventfd (wait_go) and
 * everything libpq waits for inside pgb_session_main / pgb_churn_main.
 */
#include "pg.h"

#include <awaitlet.h>
#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct loop_thread {
    pthread_t th;
    int index;
};

static struct loop_thread *threads;

/* Level-triggered and never read: once written, every waiter sees it. */
static int task_wait_go(void)
{
    return awaitlet_io(pgb.go_fd, AWAITLET_READ, -1) > 0 ? 0 : -1;
}

static void *session_task(void *arg)
{
    pgb_session_main(arg, task_wait_go);
    return arg;
}

static void *churn_task(void *arg)
{
    pgb_churn_main(task_wait_go);
    return arg;
}

/* Memory mode: one complete session before the base is read, so libpq's and
 * OpenSSL's one-time initialisation, the shim's per-thread state and the
 * loop's own structures count as base, not as per-session cost. */
static void *warmup_task(void *arg)
{
    return pgb_churn_once() == 0 ? arg : NULL;
}

static void *loop_main(void *arg)
{
    struct loop_thread *lt = arg;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    awaitlet_task **t, *churn = NULL;
    int n = 0;
    if (!loop || !(t = calloc((size_t)pgb.sessions, sizeof *t))) {
        perror("bench-pg: ev_loop_new/calloc");
        exit(1);
    }
    if (pgb.hold && lt->index == 0) {
        if (!awaitlet_run(loop, warmup_task, loop)) {
            fprintf(stderr, "bench-pg: the warm-up session failed\n");
            exit(1);
        }
        pgb.rss_base = pgb_rss_bytes();
    }
    for (int i = lt->index; i < pgb.sessions; i += pgb.loops) {
        if (!(t[n] = awaitlet_async_def(loop, session_task, &pgb.s[i]))) {
            fprintf(stderr, "bench-pg: awaitlet_async_def (session %d): %s\n", i, strerror(errno));
            pgb_mark_failed();
            continue;
        }
        n++;
    }
    if (pgb.churn && lt->index == 0 && !(churn = awaitlet_async_def(loop, churn_task, loop)))
        fprintf(stderr, "bench-pg: awaitlet_async_def (churn): %s\n", strerror(errno));
    for (int i = 0; i < n; i++)
        if (!awaitlet_join(t[i]))
            fprintf(stderr, "bench-pg: awaitlet_join: %s\n", strerror(errno));
    if (churn && !awaitlet_join(churn))
        fprintf(stderr, "bench-pg: awaitlet_join (churn): %s\n", strerror(errno));
    free(t);
    if (awaitlet_loop_close(loop) != 0)
        perror("bench-pg: awaitlet_loop_close");
    ev_loop_destroy(loop);
    return NULL;
}

void pgb_tasks_start(void)
{
    if (!(threads = calloc((size_t)pgb.loops, sizeof *threads))) {
        perror("bench-pg: calloc");
        exit(1);
    }
    for (int i = 0; i < pgb.loops; i++) {
        int e;
        threads[i].index = i;
        if ((e = pthread_create(&threads[i].th, NULL, loop_main, &threads[i]))) {
            fprintf(stderr, "bench-pg: pthread_create: %s\n", strerror(e));
            exit(1);
        }
    }
}

void pgb_tasks_join(void)
{
    for (int i = 0; i < pgb.loops; i++)
        pthread_join(threads[i].th, NULL);
    free(threads);
}
