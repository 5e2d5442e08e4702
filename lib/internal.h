/*
 * internal.h -- what task.c, loop.c, wait.c, fdwait.c and offload.c share
 * (internal).
 *
 * The model: a task runs on its own stack until it waits.  Waiting arms a
 * libev watcher owned by the task and switches back to whoever resumed it
 * (the loop, or the task that started it).  The watcher's callback resumes
 * the task directly -- so a wake-up costs one libev callback plus two
 * switches.  Wake-ups that do not come from a libev callback (cancel, a
 * joined task ending, a yield) go through the loop's ready list, which a
 * lowest-priority ev_check watcher drains after each poll, once every other
 * ready watcher has run.
 *
 * The task lifecycle (docs/runtime.md has the whole state machine):
 *   ST_NEW -> ST_RUNNING <-> ST_SUSPENDED -> ... -> ST_RUNNING
 *          -> ST_DONE (function returned) -> ST_EXITING (on_exit runs)
 *          -> ST_DONE -> released (magic AWAITLET__DEAD, on the free list)
 * Only awaitlet__resume moves a task to ST_RUNNING, only the task itself
 * (awaitlet__suspend, from a wait) to ST_SUSPENDED, and only the resumer's
 * end step (task.c) through ST_EXITING; a task is released by its join, by
 * its detach once ended, or by the end step of a detached task.
 */
#ifndef AWAITLET_INTERNAL_H
#define AWAITLET_INTERNAL_H

#include <assert.h>
#include <ev.h>
#include <pthread.h>
#include <stdint.h>

#include "awaitlet.h"
#include "stack.h"
#include "switch.h"

#if defined(__SANITIZE_ADDRESS__)
#define AWAITLET_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AWAITLET_ASAN 1
#endif
#endif

/* ThreadSanitizer: every task is a TSan fiber (task.c), so TSan keeps a
 * shadow call stack and a clock per task and orders a switch like a
 * handoff between the two. */
#if defined(__SANITIZE_THREAD__)
#define AWAITLET_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define AWAITLET_TSAN 1
#endif
#endif

#define AWAITLET__TLS __thread __attribute__((tls_model("initial-exec")))
#define AWAITLET__MAGIC 0x61776169u /* "awai" */
#define AWAITLET__DEAD  0xdead7a5cu
#define AWAITLET__KEYS 16

/* ST_EXITING comes last so that the gdb script's numbering stays. */
enum awaitlet__state { ST_NEW, ST_RUNNING, ST_SUSPENDED, ST_DONE, ST_EXITING };

/* What a suspended task waits for; decides who may wake it. */
enum awaitlet__wait { W_NONE, W_IO, W_SLEEP, W_JOIN, W_READY, W_OFFLOAD,
                      W_JOB /* awaitlet_offload_wait: interruptible, timed */,
                      W_SYNC /* awaitlet_cond/awaitlet_sem (lib/sync.c) */ };

typedef struct awaitlet__loop awaitlet__loop;

struct awaitlet_task {
    /* One word libpqawait keeps per task (shim/scope.h, pqawait__pass: which
     * connection libpq is running on in the task's innermost scope), first
     * so that its wrappers reach it with no offset to load; zero when the
     * task starts, never read or written here otherwise. */
    uintptr_t ext;
    uint32_t magic;
    uint8_t state, wait, detached;
    uint8_t cancelled, deadline_passed, assert_await;
    uint8_t suspended_once;
    uint8_t outer_join;          /* being joined from outside a task: OUTER_JOIN_* */
    uint8_t fd_linked;           /* io is in this thread's fd index (fdwait.c) */
    int shield;
    uint32_t intr_told;          /* bit k: shield level k+1 was given its EINTR */
    int wake;                    /* outcome of the last wait: >0 events, 0, -errno */
    awaitlet__ctx ctx;           /* saved when suspended */
    awaitlet__ctx *back;         /* the resumer's context, in its frame */
    awaitlet__stack *stack;
    awaitlet__loop *ls;
    awaitlet_fn fn;
    void *arg, *result;
    ev_io io;                    /* kept armed across consecutive equal waits */
    ev_timer timer;              /* io timeout / sleep */
    ev_timer deadline;
    awaitlet_task *joiner;       /* task suspended in awaitlet_join(this) */
    awaitlet_task *joining;      /* task this one waits to join */
    struct awaitlet__syncnode *sync; /* its place in a cond/sem queue (sync.c),
                                        from the wait until it runs again */
    awaitlet_task *ready_next;
    awaitlet_task *all_prev, *all_next; /* registry, for the gdb script */
    awaitlet_task *loop_prev, *loop_next; /* the loop's unreleased tasks */
    awaitlet_task *fd_prev, *fd_next;   /* armed on the same fd (fdwait.c) */
    int fd_slot;                 /* the fd it is indexed under */
    const char *name;
    unsigned long id;
    awaitlet_exit_cb on_exit;
    void *on_exit_data;
    void *locals[AWAITLET__KEYS];
#ifdef AWAITLET_ASAN
    void *asan_fake;
    const void *back_bottom;
    size_t back_size;
#endif
#ifdef AWAITLET_TSAN
    void *tsan_fiber;            /* this task's TSan fiber, NULL once dropped */
    void *tsan_back;             /* the resumer's fiber, set by each resume */
#endif
};

/* Per-loop state (loop.c); found by loop pointer, bound to the first thread
 * that starts a task on the loop until awaitlet_loop_close. */
/* awaitlet_task.outer_join: the joiner runs the loop one iteration at a
 * time (from inside a callback), or until the task's end breaks it. */
enum { OUTER_JOIN_STEP = 1, OUTER_JOIN_TOP = 2 };

struct awaitlet__loop {
    struct ev_loop *loop;
    awaitlet__loop *next;
    pthread_t owner;
    unsigned ntasks;             /* written by the owner, read by anyone:
                                    __atomic accesses only */
    awaitlet_task *tasks;        /* unreleased tasks, newest first */
    awaitlet_task *walk_next;    /* a walk's cursor; releases keep it valid */
    int walking;
    int orphaned;                /* its loop was destroyed under live tasks that
                                    could not be reclaimed (loop.c) */
    ev_prepare join_break;       /* a top-level join's task ended in a nested
                                    ev_run: break at depth 1 (task.c, loop.c) */
    awaitlet_task *ready_head, *ready_tail;
    ev_check check;              /* drains the ready list after the poll, last */
    ev_idle idle;                /* keeps the poll from blocking meanwhile */
    ev_cleanup cleanup;          /* ev_loop_destroy: forget this state */
    ev_async async;              /* offload completions from worker threads */
    unsigned offloads;           /* offloads of this loop not yet delivered */
    struct awaitlet__job *done;  /* finished jobs; offload.c's pool lock guards it */
};

extern AWAITLET__TLS awaitlet_task *awaitlet__cur;
/* Depth of awaitlet_signal_enter on this thread: > 0 inside a marked signal
 * handler, where nothing may switch or reschedule. */
extern AWAITLET__TLS int awaitlet__sigdepth;
/* Depth of runtime callbacks into user code (on_exit, walk callbacks) on
 * this thread.  They run with awaitlet__cur NULL, so they cannot suspend;
 * this says that a join from "outside a task" must not run the loop. */
extern AWAITLET__TLS int awaitlet__cbdepth;

/* task.c */
void awaitlet__resume(awaitlet_task *t);
/* awaitlet__resume for a task suspended in a wait of kind `wait`: the waker
 * names what it wakes, and a mismatch is a runtime bug (asserted). */
void awaitlet__wake(awaitlet_task *t, int wait);
void awaitlet__suspend(awaitlet_task *t);
int awaitlet__check_thread(const awaitlet_task *t);
int awaitlet__valid(const awaitlet_task *t);
void awaitlet__release(awaitlet_task *t);
/* Release a task of a destroyed loop without running it (loop.c). */
void awaitlet__reclaim(awaitlet_task *t);
void awaitlet__registry_lock(void);
void awaitlet__registry_unlock(void);

/* loop.c */
/* The calling thread's state for loop, created and bound on first use; NULL
 * with errno ENOMEM, or EXDEV when another thread owns the loop. */
awaitlet__loop *awaitlet__loop_get(struct ev_loop *loop);
void awaitlet__loop_link(awaitlet__loop *ls, awaitlet_task *t);
void awaitlet__loop_unlink(awaitlet__loop *ls, awaitlet_task *t);
void awaitlet__make_ready(awaitlet_task *t, int wake);
/* Keep the loop's next poll from blocking (see fdwait.c). */
void awaitlet__loop_nudge(awaitlet__loop *ls);

/* wait.c */
void awaitlet__task_watchers_init(awaitlet_task *t);
void awaitlet__task_watchers_stop(awaitlet_task *t);
void awaitlet__disarm_io(awaitlet_task *t);
int awaitlet__interrupt(awaitlet_task *t);

/* fdwait.c */
/* (Re)register t's io watcher on fd: 0, or -EBADF (fd not open) or
 * -ENOMEM (no memory for the fd index). */
int awaitlet__io_arm(awaitlet_task *t, int fd, int events);
/* Stop t's io watcher and drop it from the fd index. */
void awaitlet__io_disarm(awaitlet_task *t);
/* libev stopped t's watcher itself (EV_ERROR): drop it from the index. */
void awaitlet__io_forget(awaitlet_task *t);
/* The errno behind an EV_ERROR on fd (the error path only). */
int awaitlet__io_error(struct ev_loop *loop, int fd, int events);

/* sync.c */
/* t's cond/sem wait ends without a wake-up from the object (timeout,
 * interruption, reclaim): leave its queue.  A task already woken by the
 * object (queued to run) gives the wake-up back instead. */
void awaitlet__sync_abort(awaitlet_task *t);

/* offload.c */
void awaitlet__async_cb(struct ev_loop *loop, ev_async *w, int revents);

#endif
