/*
 * internal.h -- what task.c, wait.c and offload.c share (internal).
 *
 * The model: a task runs on its own stack until it waits.  Waiting arms a
 * libev watcher owned by the task and switches back to whoever resumed it
 * (the loop, or the task that started it).  The watcher's callback resumes
 * the task directly -- so a wake-up costs one libev callback plus two
 * switches.  Wake-ups that do not come from a libev callback (cancel, a
 * joined task ending, a yield) go through the loop's ready list, which a
 * lowest-priority ev_check watcher drains after each poll, once every other
 * ready watcher has run.
 */
#ifndef AWAITLET_INTERNAL_H
#define AWAITLET_INTERNAL_H

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

#define AWAITLET__TLS __thread __attribute__((tls_model("initial-exec")))
#define AWAITLET__MAGIC 0x61776169u /* "awai" */
#define AWAITLET__DEAD  0xdead7a5cu
#define AWAITLET__KEYS 8


enum awaitlet__state { ST_NEW, ST_RUNNING, ST_SUSPENDED, ST_DONE };

/* What a suspended task waits for; decides who may wake it. */
enum awaitlet__wait { W_NONE, W_IO, W_SLEEP, W_JOIN, W_READY, W_OFFLOAD };

typedef struct awaitlet__loop awaitlet__loop;

struct awaitlet_task {
    uint32_t magic;
    uint8_t state, wait, detached;
    uint8_t cancelled, deadline_passed, intr_reported, assert_await;
    uint8_t suspended_once;
    int shield;
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
    awaitlet_task *ready_next;
    awaitlet_task *all_prev, *all_next; /* registry, for the gdb script */
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
};

/* Per-loop state; found by loop pointer, owned by one thread at a time. */
struct awaitlet__loop {
    struct ev_loop *loop;
    awaitlet__loop *next;
    pthread_t owner;
    unsigned ntasks;
    awaitlet_task *ready_head, *ready_tail;
    ev_check check;              /* drains the ready list after the poll, last */
    ev_idle idle;                /* keeps the poll from blocking meanwhile */
    ev_async async;              /* offload completions from worker threads */
    unsigned offloads;           /* offloads of this loop not yet delivered */
    struct awaitlet__job *done;  /* finished jobs; offload.c's pool lock guards it */
};

extern AWAITLET__TLS awaitlet_task *awaitlet__cur;
/* Depth of awaitlet_signal_enter on this thread: > 0 inside a marked signal
 * handler, where nothing may switch or reschedule. */
extern AWAITLET__TLS int awaitlet__sigdepth;

/* task.c */
void awaitlet__resume(awaitlet_task *t);
void awaitlet__suspend(awaitlet_task *t);
void awaitlet__make_ready(awaitlet_task *t, int wake);
int awaitlet__check_thread(const awaitlet_task *t);
int awaitlet__valid(const awaitlet_task *t);
void awaitlet__release(awaitlet_task *t);

/* wait.c */
void awaitlet__task_watchers_init(awaitlet_task *t);
void awaitlet__task_watchers_stop(awaitlet_task *t);
void awaitlet__disarm_io(awaitlet_task *t);
int awaitlet__interrupt(awaitlet_task *t);

/* offload.c */
void awaitlet__async_cb(struct ev_loop *loop, ev_async *w, int revents);

#endif
