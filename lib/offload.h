/*
 * offload.h -- the offload pool's insides shared by offload.c (the pool,
 * awaitlet_offload) and job.c (the abandonable jobs built on it).
 */
#ifndef AWAITLET_OFFLOAD_H
#define AWAITLET_OFFLOAD_H

#include <pthread.h>

#include "internal.h"

/* Where a job is; checked by assertions at every step.  J_ABANDONED: in a
 * child process, a job of a loop whose thread did not survive the fork. */
enum job_state { J_NEW, J_QUEUED, J_RUNNING, J_DONE, J_DELIVERED, J_ABANDONED,
                 J_READY /* heap job: finished, nobody waiting, in no list */ };

struct awaitlet__job {
    awaitlet_fn fn;
    void *arg, *result;
    awaitlet_task *task;
    awaitlet__loop *ls;
    struct awaitlet__job *next;                /* in the queue, then in ls->done */
    struct awaitlet__job *run_prev, *run_next; /* in the running list */
    enum job_state state;
    int err;                                   /* errno to report, or 0 */
    unsigned char heap;                        /* an awaitlet_job (see the top) */
    unsigned char abandoned;                   /* heap: given up by its task */
    unsigned char in_wait;                     /* heap: task is suspended waiting on it */
};

/* An abandonable job: the heap twin of the stack job of awaitlet_offload.
 * base.task is the task waiting on it right now (NULL: nobody). */
struct awaitlet_job {
    struct awaitlet__job base;
    void (*cleanup)(void *arg, void *result);
};

/* Guards the queue, the counts and every loop's list of finished jobs
 * (offload.c, top). */
extern pthread_mutex_t awaitlet__offload_lock;
/* pthread_atfork's error, when the fork handlers could not be registered. */
extern int awaitlet__offload_atfork_err;

/* With the lock held: queue j (j->task set), starting a worker when none
 * is idle.  0, or -1 when no worker exists or can be started.  On 0 the
 * caller unlocks, then calls awaitlet__offload_kick (wakes a worker; never
 * waits). */
int awaitlet__offload_submit_locked(struct awaitlet__job *j);
void awaitlet__offload_kick(void);

/* With the lock held: a fork child's queued jobs get their workers. */
void awaitlet__offload_restart_locked(void);

/* job.c: a posted abandonable job reaches its loop (the loop's thread,
 * without the lock). */
void awaitlet__job_deliver(struct awaitlet__job *j);

#endif
