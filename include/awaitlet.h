/*
 * awaitlet.h -- blocking-style C functions as tasks on a libev loop.
 *
 * The C counterpart of Python's awaitlet: awaitlet_async_def() starts a plain C
 * function on its own stack inside a libev loop; inside it, awaitlet_io() and
 * awaitlet_sleep() suspend only that task until the loop sees the event.  Code
 * written for blocking I/O keeps its shape; the loop keeps serving everything
 * else.
 *
 * Threads: a loop belongs to the thread that runs it, and so do its tasks.  A
 * task never moves to another thread.  Every function here must be called on
 * the thread of the loop concerned; two threads may each run their own loop
 * with their own tasks at the same time.  The one exception is
 * awaitlet_offload(), which runs a function on a worker thread on purpose.
 *
 * Errors are reported POSIX-style: -1 (or NULL) with errno set.  Nothing
 * here prints or aborts, except a stack overflow (see awaitlet_options).
 *
 * Lifetime: every task is either joined (awaitlet_join) or detached
 * (awaitlet_detach, or options.detached); a detached task is released when it
 * ends.  All tasks of a loop must have ended before ev_loop_destroy().
 */
#ifndef AWAITLET_H
#define AWAITLET_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ev_loop;

#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define AWAITLET_VERSION_MAJOR 0
#define AWAITLET_VERSION_MINOR 1

typedef struct awaitlet_task awaitlet_task;
typedef void *(*awaitlet_fn)(void *arg);

/* Called on the loop's thread right after a task's function returned, with
 * its result.  The task handle stays valid during the call; a detached task
 * is released when the callback returns. */
typedef void (*awaitlet_exit_cb)(awaitlet_task *task, void *result, void *data);

/* Per-task options.  Zero-initialise, then set what you need; a zeroed
 * struct (or a NULL pointer) means the defaults. */
typedef struct awaitlet_options {
    size_t stack_size;      /* usable bytes; 0: the default (256 KiB unless
                               awaitlet_set_default_stack_size changed it).
                               Rounded up to whole pages; minimum 16 KiB. */
    int no_guard;           /* 1: no PROT_NONE guard page.  A guarded stack
                               is two kernel mappings (vm.max_map_count caps
                               guarded tasks near 32k); an unguarded stack is
                               one mapping the kernel merges with its
                               neighbours, but an overflow corrupts memory
                               silently: only for very many shallow tasks. */
    int detached;           /* 1: start detached (see awaitlet_detach) */
    int assert_await_occurs;/* 1: it is an error for fn to end without ever
                               suspending; awaitlet_join then fails ENOMSG
                               (awaitlet's assert_await_occurs). */
    const char *name;       /* shown in the stack-overflow message and by the
                               gdb script; must outlive the task */
    awaitlet_exit_cb on_exit;
    void *on_exit_data;
} awaitlet_options;

/* Start fn(arg) as a task on loop.  It runs until its first suspension (or
 * its end) before this returns; so a task that never waits has finished when
 * awaitlet_async_def returns.  May be called inside a task (the new task runs
 * first, then the caller resumes) or outside one.
 * Returns NULL with errno set: EINVAL (loop or fn NULL, stack_size over
 * 1 GiB, or loop run by another thread's tasks), ENOMEM (no memory),
 * EAGAIN (the kernel refused the stack mapping: vm.max_map_count or
 * RLIMIT_AS reached). */
awaitlet_task *awaitlet_async_def(struct ev_loop *loop, awaitlet_fn fn, void *arg);

/* As awaitlet_async_def, with options (NULL: defaults). */
awaitlet_task *awaitlet_async_def_opts(struct ev_loop *loop, awaitlet_fn fn, void *arg,
                                       const awaitlet_options *opts);

/* Wait for task to end and return fn's result, releasing the task.
 * Inside a task: suspends the caller until `task` ends.  Outside a task:
 * runs the loop (ev_run ONCE at a time) until it ends.
 * On error returns NULL with errno set; since fn may itself return NULL, set
 * errno = 0 before the call when you need to tell the two apart:
 *   EINVAL   task is NULL, already joined, being joined by another task,
 *            or detached
 *   EXDEV    task belongs to another loop than the calling task's, or to
 *            another thread
 *   EDEADLK  a task joining itself, or a task that is (through a chain of
 *            joins) waiting to join the caller; or, outside a task, the loop
 *            has nothing left that could ever end the task
 *   ECANCELED / ETIMEDOUT  the joining task was cancelled / passed its
 *            deadline while waiting; `task` is not released (join it again)
 *   ENOMSG   the task had assert_await_occurs and never suspended (the task
 *            is released; its result is lost)
 * A handle is invalid after a successful join; reusing it is detected only
 * until the memory is reused by a later task. */
void *awaitlet_join(awaitlet_task *task);

/* awaitlet_async_def + awaitlet_join.  NULL with errno as for both. */
void *awaitlet_run(struct ev_loop *loop, awaitlet_fn fn, void *arg);

/* Let the task be released when it ends; its result goes only to on_exit.
 * A finished task is released at once.  0, or -1 with errno EINVAL (NULL,
 * joined or already detached) or EXDEV (another thread's task). */
int awaitlet_detach(awaitlet_task *task);

/* 1 inside a task, else 0.  Async-signal-safe. */
int awaitlet_in_context(void);

/* The running task, or NULL outside a task. */
awaitlet_task *awaitlet_current(void);

/* The loop of the running task, or NULL outside a task. */
struct ev_loop *awaitlet_current_loop(void);

/* 1 once task has ended (its function returned), else 0. */
int awaitlet_done(const awaitlet_task *task);

/* Events for awaitlet_io; the same values as libev's EV_READ and EV_WRITE,
 * so either spelling works and this header needs no <ev.h>. */
#define AWAITLET_READ  0x01
#define AWAITLET_WRITE 0x02

/* Extra flag for awaitlet_io's events: the fd may be a new file since this
 * task last waited on the same number (it was closed and another was opened
 * with that number).  Waits keep their kernel registration between
 * consecutive waits on the same fd and events, which is what makes the hot
 * path free of epoll_ctl; after a close that is wrong, so say FRESH, or wait
 * on something else in between.  libev has the same rule for its watchers. */
#define AWAITLET_FRESH 0x10000

/* Inside a task: suspend until fd is ready for AWAITLET_READ and/or
 * AWAITLET_WRITE (EV_READ / EV_WRITE).  Returns the ready events (a subset of those
 * asked for; an error or hang-up on fd shows as ready), 0 when `timeout`
 * seconds passed first (timeout < 0: no timeout; 0: poll without waiting).
 * Returns -1 with errno:
 *   EPERM      outside a task
 *   EINVAL     fd < 0, no AWAITLET_READ/AWAITLET_WRITE in events, or
 *              timeout is NaN
 *   EBADF      fd is not an open file (libev reported an error on it)
 *   ECANCELED  the task was cancelled (awaitlet_cancel), now or before
 *   ETIMEDOUT  the task's deadline has passed (awaitlet_set_deadline)
 *   EINTR      shielded task only (awaitlet_shield): cancellation or the
 *              deadline arrived during this wait; reported once
 * Never a syscall when the task waits on the same fd and events as in its
 * previous wait. */
int awaitlet_io(int fd, int events, double timeout);

/* Inside a task: suspend for `seconds` (<= 0: yield to the loop, letting
 * every other ready task and watcher run first).  0, or -1 with errno as for
 * awaitlet_io (EPERM, EINVAL for NaN, ECANCELED, ETIMEDOUT, EINTR). */
int awaitlet_sleep(double seconds);

/* Inside a task: let every other ready task and watcher run (the loop
 * polls without blocking first), then continue.  Unlike awaitlet_sleep(0)
 * it never reports cancellation or a deadline -- they stay pending for the
 * task's next wait, so a library can yield for fairness without swallowing
 * the EINTR a shielded caller is owed -- and it keeps the task's io
 * registration, so the next equal awaitlet_io costs no epoll_ctl.
 * 0, or -1 with errno EPERM (outside a task, or in a signal handler marked
 * with awaitlet_signal_enter). */
int awaitlet_yield(void);

/* Cancel task: its current wait (io, sleep, join) ends at once and this and
 * every later wait fail with ECANCELED.  Callable inside or outside tasks
 * (on the loop's thread); the woken task runs on the next loop iteration.
 * 0, or -1 with errno EINVAL (NULL/released), ESRCH (already ended), EXDEV
 * (another thread's task). */
int awaitlet_cancel(awaitlet_task *task);

/* Give task a deadline `seconds` from now (loop time); <= 0 clears it.  A
 * wait in progress when it passes, and every later wait, fails with
 * ETIMEDOUT.  Errors as for awaitlet_cancel, and EINVAL when seconds is NaN. */
int awaitlet_set_deadline(awaitlet_task *task, double seconds);

/* Shield the running task from cancellation and deadlines (on != 0) or lift
 * the shield (0).  While shielded, waits do not fail with ECANCELED or
 * ETIMEDOUT; instead the wait in progress when cancellation or the deadline
 * arrives returns -1 with EINTR once, so the code inside can wind down
 * cleanly (pqawait uses it to ask the server to cancel a statement instead of
 * abandoning a connection mid-protocol).  Once the shield is lifted waits
 * fail as usual.  Nests as a counter.  Returns the new depth, or -1 with
 * errno EPERM outside a task or EINVAL when lifting an absent shield. */
int awaitlet_shield(int on);

/* 1 if the running task was cancelled or is past its deadline (whether or
 * not shielded), else 0; 0 outside a task. */
int awaitlet_interrupted(void);

/* Run fn(arg) on a worker thread and suspend the calling task until it
 * returns; *result (if not NULL) receives its value.  For calls that block
 * and have no nonblocking form (getaddrinfo, a blocking cancel request...).
 * fn must not use awaitlet.  The work cannot be interrupted: cancellation or
 * a deadline arriving meanwhile takes effect at the task's next wait, after
 * fn returned.  Outside a task fn runs inline.  0, or -1 with errno:
 *   EAGAIN  no worker thread could be started (now, or -- for an offload in
 *           flight at a fork -- in the child; see below)
 *   EINVAL  fn is NULL
 *   EPERM   inside a signal handler marked with awaitlet_signal_enter
 *   ENOMEM  the library could not register its fork handlers when loaded
 * Worker threads are shared by the process (at most 4 unless
 * awaitlet_set_offload_threads says otherwise) and block every signal.
 *
 * fork() may be called from any thread, tasks included; pthread_atfork
 * handlers keep the pool consistent (not from a signal handler that may
 * have interrupted the runtime).  The child has only the thread that called
 * fork and no worker threads; they are started again when needed.  That thread's loops and tasks go on
 * in the child -- after ev_loop_fork(loop), libev's rule for a loop used
 * across fork -- and may offload as before.  Offloads in flight at the fork:
 *   - of a loop run by the forking thread: each completes in the child too.
 *     A job still queued, or running in a worker (which does not exist in
 *     the child), runs again from the start on a new worker; a job that had
 *     finished is delivered with its result.  fn may therefore run in both
 *     processes, and a second time on memory it partly wrote before the
 *     fork: it must not depend on its own earlier progress (fn that fills
 *     in results from its inputs, like getaddrinfo or PQcancel, is fine).
 *     The child's loop delivers them once it runs; a child that only execs
 *     starts no thread and runs no job.  If the child cannot start any
 *     worker, they fail with EAGAIN.
 *   - of a loop run by another thread: that thread does not exist in the
 *     child; its tasks never resume there and their jobs are dropped.
 * fn itself may fork only if the child execs or _exits before fn returns; a
 * child that returns from fn ends with _exit(127), as after a failed exec. */
int awaitlet_offload(awaitlet_fn fn, void *arg, void **result);

/* Signal handlers.  A handler runs on whatever stack was interrupted -- a
 * task's, maybe in the middle of the runtime's own bookkeeping -- so it must
 * never switch tasks.  Bracket a handler with awaitlet_signal_enter() and
 * awaitlet_signal_leave() and, in between, every awaitlet call that could
 * switch or reschedule (awaitlet_io, awaitlet_sleep, awaitlet_yield,
 * awaitlet_join, awaitlet_offload, awaitlet_async_def, awaitlet_cancel,
 * awaitlet_set_deadline...) fails with EPERM instead.  libpqawait does this
 * for every handler installed through sigaction() or signal() in a process
 * it is loaded in; without it, awaitlet cannot tell a handler from ordinary
 * code.  Both nest, are per thread and async-signal-safe.  A handler that
 * leaves by siglongjmp must call awaitlet_signal_leave() first. */
void awaitlet_signal_enter(void);
void awaitlet_signal_leave(void);

/* 1 between awaitlet_signal_enter and the matching leave on this thread. */
int awaitlet_in_signal_handler(void);

/* Process-wide settings; call before starting tasks.  0, or -1 with errno
 * EINVAL for a value out of range (stack: 16 KiB .. 1 GiB; threads: 1..256). */
int awaitlet_set_default_stack_size(size_t bytes);
int awaitlet_set_offload_threads(int n);
/* Stacks kept for reuse per thread after their tasks ended (default 64);
 * 0 unmaps every stack at once. */
int awaitlet_set_stack_pool(int stacks);

/* Number of tasks of loop that have not been released (running, waiting,
 * or ended but not yet joined). */
unsigned awaitlet_loop_tasks(struct ev_loop *loop);

/* Task-local values, like pthread keys (at most 8 keys per process, no
 * destructors: clean up before the task ends).  awaitlet_key_create: 0 or -1
 * with errno EAGAIN (no key left).  awaitlet_getspecific: the running task's
 * value, NULL when unset or outside a task.  awaitlet_setspecific: 0, or -1
 * with errno EPERM (outside a task) or EINVAL (bad key). */
typedef int awaitlet_key;
int awaitlet_key_create(awaitlet_key *key);
void *awaitlet_getspecific(awaitlet_key key);
int awaitlet_setspecific(awaitlet_key key, const void *value);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif
#endif
