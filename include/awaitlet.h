/*
 * awaitlet.h -- blocking-style C functions as tasks on a libev loop.
 *
 * The C counterpart of Python's awaitlet: awaitlet_async_def() starts a plain C
 * function on its own stack inside a libev loop; inside it, awaitlet_io() and
 * awaitlet_sleep() suspend only that task until the loop sees the event.  Code
 * written for blocking I/O keeps its shape; the loop keeps serving everything
 * else.
 *
 * Threads: a loop belongs to the first thread that starts a task on it, and
 * stays that thread's until awaitlet_loop_close(); its tasks never move to
 * another thread.  Every function taking a task or a loop must be called on
 * that thread and fails with EXDEV on any other (awaitlet_loop_tasks is the
 * exception: any thread may ask).  Two threads may each run their own loop
 * with their own tasks at the same time.  awaitlet_offload() runs a function
 * on a worker thread on purpose.  After fork() the child's thread owns every
 * loop the runtime knows, and the runtime has called ev_loop_fork() on each.
 *
 * Errors are reported POSIX-style: -1 (or NULL) with errno set.  Nothing
 * here prints or aborts, except a stack overflow (see "Stack overflow") and
 * the one-line report of a loop destroyed under live tasks (below).
 *
 * Lifetime: every task is either joined (awaitlet_join) or detached
 * (awaitlet_detach, or options.detached); a detached task is released when it
 * ends.  End a loop with awaitlet_loop_close() (EBUSY while it still has
 * unreleased tasks; awaitlet_loop_cancel_all() helps to wind them down), then
 * ev_loop_destroy().  ev_loop_destroy() of a loop without tasks frees the
 * runtime's state too.  ev_loop_destroy() under live tasks is a bug: the
 * runtime prints one line on stderr naming the loop and the number of tasks,
 * reclaims them without running them (their handles become invalid: EINVAL;
 * whatever they held leaks) and forgets the loop, so a new loop at the same
 * address starts clean.  Tasks running or in awaitlet_offload at that moment
 * cannot be reclaimed: then all tasks are left unrun (their watchers
 * stopped), calls on them fail with EINVAL except joining or detaching those
 * that have ended, and a running task must return without waiting again.
 * (Destroying a loop from inside one of its own callbacks -- and tasks are
 * resumed from its callbacks -- is undefined in libev itself.)
 *
 * Signal handlers: only awaitlet_in_context(), awaitlet_signal_enter(),
 * awaitlet_signal_leave() and awaitlet_in_signal_handler() are
 * async-signal-safe.  Everything else may not be called from a signal
 * handler; inside a handler marked with awaitlet_signal_enter() the calls
 * that switch, reschedule, release or free (documented with EPERM below)
 * fail with EPERM instead.
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
 * its result; its stack is already reclaimed.  The task handle stays valid
 * during the call.  After the callback returns, the task's ending completes:
 * a task waiting in awaitlet_join(task) is woken, and a detached task is
 * released.  on_exit runs outside any task (awaitlet_current() is NULL in it,
 * even when the task ended inside another task's awaitlet_async_def call),
 * so it never waits.  Inside on_exit:
 *   - awaitlet_detach(task) works; the task is released after on_exit
 *     returns (awaitlet_done(task) is already 1);
 *   - awaitlet_join(task) and awaitlet_join_ex(task) fail with EDEADLK (the
 *     task ends only after on_exit returns; join it later, or start a task
 *     that joins it: that join completes after on_exit returns);
 *   - other tasks may be started, cancelled, given deadlines, detached and,
 *     when they have ended, joined; a join that would have to wait for an
 *     unfinished task, and awaitlet_run, fail with EPERM (nothing is
 *     started); awaitlet_io/sleep/yield/offload fail with EPERM or run inline
 *     as outside a task;
 *   - cancelling the task that joins `task` makes that join fail with
 *     ECANCELED (once); `task` then stays unreleased, to be joined again. */
typedef void (*awaitlet_exit_cb)(awaitlet_task *task, void *result, void *data);

/* Per-task options.  Zero-initialise, then set what you need; a zeroed
 * struct (or a NULL pointer) means the defaults. */
typedef struct awaitlet_options {
    size_t stack_size;      /* usable bytes; 0: the default (256 KiB unless
                               awaitlet_set_default_stack_size changed it).
                               Rounded up to whole pages; minimum 16 KiB. */
    int no_guard;           /* 1: no guard region.  A guarded stack is two
                               kernel mappings (vm.max_map_count caps
                               guarded tasks near 32k); an unguarded stack is
                               one mapping the kernel merges with its
                               neighbours, but an overflow corrupts memory
                               silently unless it faults by luck: only for
                               very many shallow tasks. */
    size_t guard_size;      /* bytes of PROT_NONE guard region below the
                               stack; 0: the default (1 MiB unless
                               awaitlet_set_default_guard_size changed it).
                               Rounded up to whole pages; at most 1 GiB;
                               must be 0 with no_guard.  Address space only:
                               never touched, it costs no memory and no
                               commit charge, but counts in VmSize and
                               against RLIMIT_AS.  See "Stack overflow". */
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
 * first, then the caller resumes) or outside one.  The first call on a loop
 * binds the loop to the calling thread (see Threads above).
 * The task starts with the caller's floating-point control state: rounding
 * mode (fesetround), flush-to-zero/denormals-are-zero (-ffast-math) and
 * exception masks -- MXCSR and the x87 control word on x86-64, FPCR on
 * aarch64 -- not the sticky exception flags.  From then on that state is
 * the task's own: changing it inside a task changes neither the loop side
 * nor other tasks.
 * Returns NULL with errno set: EINVAL (loop or fn NULL, stack_size or
 * guard_size over 1 GiB, guard_size with no_guard), EXDEV (the loop belongs
 * to another thread), EPERM (in a marked signal handler), ENOMEM (no
 * memory), EAGAIN (the kernel refused the stack mapping: vm.max_map_count or
 * RLIMIT_AS reached). */
awaitlet_task *awaitlet_async_def(struct ev_loop *loop, awaitlet_fn fn, void *arg);

/* As awaitlet_async_def, with options (NULL: defaults). */
awaitlet_task *awaitlet_async_def_opts(struct ev_loop *loop, awaitlet_fn fn, void *arg,
                                       const awaitlet_options *opts);

/* Wait for task to end, store fn's result in *result (result may be NULL)
 * and release the task.  Returns 0, or -1 with errno; *result is written
 * only on success, and errno is left as it was on success.
 * Inside a task: suspends the caller until `task` ends.  Outside a task:
 * runs the loop (ev_run ONCE at a time) until it ends; meanwhile the task
 * counts as being joined, so other joins and detaches of it fail (EINVAL).
 * Errors:
 *   EINVAL   task is NULL, released, detached, or being joined (by a task
 *            or from outside)
 *   EXDEV    task belongs to another loop than the calling task's, or to
 *            another thread
 *   EDEADLK  a task joining itself, or a task that is (through a chain of
 *            joins) waiting to join the caller; a join of `task` from its
 *            own on_exit; or, outside a task, the loop has nothing left that
 *            could ever end the task
 *   EPERM    in a marked signal handler; or outside a task inside a
 *            runtime callback (on_exit, awaitlet_loop_walk's cb), where a
 *            join of an unfinished task would have to run the loop
 *   ECANCELED / ETIMEDOUT / EINTR  the joining task was cancelled / passed
 *            its deadline / was interrupted while shielded; `task` is not
 *            released (join it again)
 *   ENOMSG   the task had assert_await_occurs and never suspended (the task
 *            is released; its result is lost)
 * A handle is invalid after a successful join; reusing it is detected only
 * until the memory is reused by a later task. */
int awaitlet_join_ex(awaitlet_task *task, void **result);

/* awaitlet_join_ex returning the result itself: NULL with errno on error.
 * errno is left as it was on success, so `errno = 0; r = awaitlet_join(t);`
 * tells a NULL result (errno still 0) from a failure -- but for tasks that
 * may return NULL, awaitlet_join_ex says it directly. */
void *awaitlet_join(awaitlet_task *task);

/* Start fn(arg) on loop and join it: awaitlet_async_def + awaitlet_join_ex.
 * 0 with *result (result may be NULL), or -1 with errno as for both.
 * A join that cannot even begin starts nothing: EXDEV (called inside a task
 * of another loop), ECANCELED / ETIMEDOUT / EINTR (the calling task is
 * already cancelled / past its deadline / shielded and owed its EINTR),
 * EPERM (in a signal handler, on_exit or a walk callback).  When the join
 * fails after the task started (the caller is cancelled while it waits, or
 * EDEADLK), the task is cancelled and detached: it is released when it
 * ends, and its result is lost. */
int awaitlet_run_ex(struct ev_loop *loop, awaitlet_fn fn, void *arg, void **result);

/* awaitlet_run_ex returning the result itself: NULL with errno on error
 * (errno left as it was on success, as for awaitlet_join). */
void *awaitlet_run(struct ev_loop *loop, awaitlet_fn fn, void *arg);

/* Let the task be released when it ends; its result goes only to on_exit.
 * A finished task is released at once (from inside its own on_exit: when
 * on_exit returns).  0, or -1 with errno EINVAL (NULL, released, being
 * joined, or already detached), EXDEV (another thread's task) or EPERM (in a
 * marked signal handler). */
int awaitlet_detach(awaitlet_task *task);

/* 1 inside a task, else 0.  Async-signal-safe. */
int awaitlet_in_context(void);

/* The running task, or NULL outside a task. */
awaitlet_task *awaitlet_current(void);

/* The loop of the running task, or NULL outside a task. */
struct ev_loop *awaitlet_current_loop(void);

/* 1 once task has ended (its function returned; also during its on_exit),
 * else 0. */
int awaitlet_done(const awaitlet_task *task);

/* Events for awaitlet_io; the same values as libev's EV_READ and EV_WRITE,
 * so either spelling works and this header needs no <ev.h>. */
#define AWAITLET_READ  0x01
#define AWAITLET_WRITE 0x02

/* Extra flag for awaitlet_io's events: the fd may be a new file since this
 * task last waited on the same number (it was closed and another was opened
 * with that number).  Waits keep their kernel registration between
 * consecutive waits on the same fd and events, which is what makes the hot
 * path free of epoll_ctl; after a plain close() that is wrong, so say FRESH,
 * wait on something else in between, or close with awaitlet_close(), which
 * drops every registration on the fd.  libev has the same rule for its
 * watchers. */
#define AWAITLET_FRESH 0x10000

/* Inside a task: suspend until fd is ready for AWAITLET_READ and/or
 * AWAITLET_WRITE (EV_READ / EV_WRITE).  Returns the ready events (a subset of those
 * asked for; an error or hang-up on fd shows as ready), 0 when `timeout`
 * seconds passed first (timeout < 0: no timeout; 0: poll without waiting).
 * Returns -1 with errno:
 *   EPERM      outside a task, or in a marked signal handler
 *   EINVAL     fd < 0, no AWAITLET_READ/AWAITLET_WRITE in events, or
 *              timeout is NaN
 *   EBADF      fd is not an open file, or it was closed with
 *              awaitlet_close() (by anyone on this thread) while this task
 *              waited on it.  Detected whenever the wait (re)registers fd:
 *              the task's first wait on it, a wait with other fd or events
 *              than its previous one, AWAITLET_FRESH, or the first wait
 *              after awaitlet_close(fd); and by a zero timeout.  A plain
 *              close() between two equal waits is not seen (the kernel drops
 *              the registration silently): the second wait then ends only
 *              by its timeout.  Use awaitlet_close().
 *   ENOMEM / ENOSPC  the kernel refused to register an open fd (epoll_ctl:
 *              out of memory, or fs.epoll.max_user_watches reached)
 *   ECANCELED  the task was cancelled (awaitlet_cancel), now or before
 *   ETIMEDOUT  the task's deadline has passed (awaitlet_set_deadline)
 *   EINTR      shielded task only (awaitlet_shield): cancellation or the
 *              deadline arrived during this wait; reported once.  Never
 *              because a signal arrived (a zero-timeout poll interrupted by
 *              a signal is retried).
 * Never a syscall when the task waits on the same fd and events as in its
 * previous wait. */
int awaitlet_io(int fd, int events, double timeout);

/* Close fd, first waking every task of this thread whose io watcher is armed
 * on it: a task waiting in awaitlet_io(fd) gets -1 with EBADF (it runs on the
 * next loop iteration); a task whose registration was only kept from an
 * earlier wait loses it, so its next wait on that number registers afresh
 * (and fails with EBADF while the number is closed).  Tasks of other threads
 * are not seen.  Then close(fd); returns close's result (0, or -1 with
 * close's errno; EBADF for a descriptor that was not open).  Callable inside
 * or outside tasks, and from on_exit; -1 with EPERM (fd left open) in a
 * marked signal handler.  Costs nothing on the wait hot path: the index of
 * armed watchers changes only when a registration does. */
int awaitlet_close(int fd);

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
 * (another thread's task), EPERM (in a marked signal handler). */
int awaitlet_cancel(awaitlet_task *task);

/* Give task a deadline `seconds` from now (loop time); <= 0 clears it.  A
 * wait in progress when it passes, and every later wait, fails with
 * ETIMEDOUT.  A new deadline replaces the old one, also one that has already
 * passed: waits succeed again until the new one passes.  Errors as for
 * awaitlet_cancel, and EINVAL when seconds is NaN. */
int awaitlet_set_deadline(awaitlet_task *task, double seconds);

/* Shield the running task from cancellation and deadlines (on != 0) or lift
 * the shield (0).  While shielded, waits do not fail with ECANCELED or
 * ETIMEDOUT; instead the wait in progress when cancellation or the deadline
 * arrives returns -1 with EINTR once, so the code inside can wind down
 * cleanly (pqawait uses it to ask the server to cancel a statement instead of
 * abandoning a connection mid-protocol).  Once the shield is lifted waits
 * fail as usual.  Nests as a counter, and each level gets its own EINTR
 * once: when a library shields itself inside a shielded caller (pqawait
 * around a libpq call) and its wait takes the EINTR, the caller's next wait
 * at its own level still gets one.  Returns the new depth, or -1 with
 * errno EPERM outside a task or EINVAL when lifting an absent shield. */
int awaitlet_shield(int on);

/* 1 if the running task was cancelled or is past its deadline (whether or
 * not shielded), else 0; 0 outside a task. */
int awaitlet_interrupted(void);

/* Why the running task is interrupted, whether or not shielded: ECANCELED
 * (awaitlet_cancel; it wins over a deadline, as in the waits' errors),
 * ETIMEDOUT (past its deadline), or 0 (neither, or outside a task).  For a
 * shielded library that got its EINTR and must say what happened. */
int awaitlet_interruption(void);

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
 * have interrupted the runtime).  fork() first waits until no offloaded
 * function is running (workers start no new job meanwhile): a worker caught
 * inside getaddrinfo could hold a libc lock that nobody would ever release
 * in the child.  So a fork while offloads are in progress takes as long as
 * they do -- for a host-name lookup, normally milliseconds.  An offloaded
 * fn must therefore never wait for the thread that forks.
 * The child has only the thread that called fork and no worker threads;
 * they are started again when needed.  That thread's loops and tasks go on
 * in the child (the runtime has called ev_loop_fork on them) and may offload
 * as before.  Offloads in flight at the fork:
 *   - of a loop run by the forking thread: a job that had finished is
 *     delivered in the child with its result; a job still queued runs in
 *     both processes, each delivering to its own copy of the task (fn must
 *     be safe to run twice on the same inputs: getaddrinfo and PQcancel
 *     are).  The child's loop delivers them once it runs; a child that only
 *     execs starts no thread and runs no job.  If the child cannot start any
 *     worker, queued jobs fail with EAGAIN.
 *   - of a loop run by another thread: that thread does not exist in the
 *     child; its tasks never resume there and their jobs are dropped.
 * fn itself may fork only if the child execs or _exits before fn returns; a
 * child that returns from fn ends with _exit(127), as after a failed exec. */
int awaitlet_offload(awaitlet_fn fn, void *arg, void **result);

/* Abandonable offloads: awaitlet_offload whose wait may time out or be
 * interrupted, and whose job the task may give up, for blocking calls that
 * must not hold a task past a bound (a host-name lookup under a deadline).
 *
 * awaitlet_offload_start queues fn(arg) on the worker pool and returns at
 * once; the job belongs to the calling task's loop.  NULL with errno:
 * EINVAL (fn NULL), EPERM (outside a task, or in a marked signal handler),
 * ENOMEM, EAGAIN (no worker thread could be started).
 *
 * awaitlet_offload_wait suspends the calling task (a task of the job's
 * loop) until fn returned, or `timeout` seconds passed (< 0: no timeout; 0:
 * just look), or the task is interrupted.  1: fn returned; *result (if not
 * NULL) is its value and the job is released.  0: the timeout passed; the
 * job goes on.  -1 with errno, the job going on: ECANCELED, ETIMEDOUT or
 * EINTR as for awaitlet_io; and, the job unchanged: EINVAL (job NULL,
 * timeout NaN), EPERM (outside a task, in a signal handler), EXDEV (a job
 * of another loop or thread), EBUSY (another task is waiting on it); a job
 * that could not run at all (a fork child that cannot start a worker) gives
 * -1 with EAGAIN and is released.  As with awaitlet_offload, the result is
 * handed over by the loop: the first wait suspends the task (at least until
 * the loop runs) even if fn has returned already, so a task never runs on
 * past an offload without having let the loop turn.
 *
 * awaitlet_offload_abandon gives the job up; its handle is invalid
 * afterwards.  cleanup (may be NULL) then runs exactly once with arg and
 * fn's result: at once on the calling thread if fn has returned already,
 * otherwise on the worker thread right after fn returns -- so it must be
 * thread-safe and not use awaitlet; it is where arg and whatever fn
 * produced are freed.  0, or -1 with errno EINVAL (NULL), EBUSY (a task is
 * waiting on it), EXDEV (another thread's job), EPERM (in a signal handler).
 * fn and arg must stay valid until cleanup runs: a heap argument, not the
 * task's stack.
 *
 * Every job must end in a wait that returned 1 (or -1 EAGAIN) or in an
 * abandon; a task that ends without either leaks it.  Forks keep the rule
 * of awaitlet_offload: fork() waits until no worker runs fn or a cleanup,
 * abandoned jobs included.  A job still queued at a fork runs in both
 * processes; in the child it runs once the child starts a worker (its next
 * offload, or a wait on it), and an abandoned one's cleanup runs there too. */
typedef struct awaitlet_job awaitlet_job;
awaitlet_job *awaitlet_offload_start(awaitlet_fn fn, void *arg);
int awaitlet_offload_wait(awaitlet_job *job, double timeout, void **result);
int awaitlet_offload_abandon(awaitlet_job *job, void (*cleanup)(void *arg, void *result));

/* Signal handlers.  A handler runs on whatever stack was interrupted -- a
 * task's, maybe in the middle of the runtime's own bookkeeping -- so it must
 * never switch tasks.  Bracket a handler with awaitlet_signal_enter() and
 * awaitlet_signal_leave() and, in between, every awaitlet call that could
 * switch, reschedule, release or free (awaitlet_io, awaitlet_sleep,
 * awaitlet_yield, awaitlet_join[_ex], awaitlet_run[_ex], awaitlet_offload,
 * awaitlet_async_def, awaitlet_detach, awaitlet_cancel,
 * awaitlet_set_deadline, awaitlet_close, awaitlet_loop_close,
 * awaitlet_loop_walk, awaitlet_loop_cancel_all) fails with EPERM instead.  libpqawait does this
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
/* Stacks kept for reuse per thread after their tasks ended (default 64).
 * Lowering it unmaps the calling thread's surplus pooled stacks at once
 * (0: all of them); another thread's pool shrinks the next time one of its
 * tasks ends, or when that thread exits.  A pooled stack keeps at most the
 * top 64 KiB of pages resident: a task that used its stack deeper gives the
 * pages below back to the kernel when it ends. */
int awaitlet_set_stack_pool(int stacks);
/* Guard region for tasks whose options say guard_size 0 (default 1 MiB).
 * 0, or -1 with errno EINVAL for 0 or more than 1 GiB. */
int awaitlet_set_default_guard_size(size_t bytes);

/* Stack overflow.  Below every task's stack (unless no_guard) lies a guard
 * region, 1 MiB of PROT_NONE address space by default.  A process-wide
 * SIGSEGV/SIGBUS handler, installed when the first task starts and running
 * on a per-thread alternate signal stack, prints
 *     awaitlet: task #N "name" overflowed its stack (S bytes); aborting
 * and calls abort() when a task faults in its guard region, or faults with
 * its stack pointer below its stack whatever the address (a frame larger
 * than the guard jumped past it).  A fault in any other task's guard region,
 * or an idle pooled stack's, by a task or by code outside tasks, is reported
 * too ("... hit the guard region of task #M ...").  Every other fault goes
 * to the handler installed before awaitlet's, or gets the default action.
 *
 * Frames larger than the guard: a function with a big local array moves the
 * stack pointer by the whole frame at once and first touches its bottom; if
 * that lands past the guard in mapped memory (the stack of the task created
 * after this one, usually), nothing faults and that memory is overwritten.
 * Build code that runs in tasks with -fstack-clash-protection (GCC >= 8,
 * Clang >= 11; the default on some distributions): every frame larger than
 * a page then touches its pages one by one on the way down, so it always
 * faults in the first page of the guard, however large the frame.
 * Without it, keep frames below the guard size, or raise guard_size.
 *
 * An application that installs its own SIGSEGV (or SIGBUS) handler after
 * the first task started replaces awaitlet's, and the message is lost.  Its
 * handler should be installed with SA_SIGINFO | SA_ONSTACK (the faulting
 * stack is unusable; threads that run tasks have an alternate signal stack)
 * and call awaitlet_overflow_report(info, ucontext) first, with the
 * siginfo_t * and ucontext pointer it was given: it returns 1 after writing
 * the message when the fault is one of the above -- the handler must then
 * end the process (abort(); returning re-executes the fault) -- and 0 when
 * it is not awaitlet's business.  Async-signal-safe (it only writes to
 * stderr).  A handler installed *before* the first task keeps working:
 * awaitlet passes it every fault that is not a stack overflow. */
int awaitlet_overflow_report(const void *info, const void *ucontext);

/* Number of tasks of loop that have not been released (running, waiting,
 * or ended but not yet joined).  Any thread may ask; 0 for a loop the
 * runtime does not know. */
unsigned awaitlet_loop_tasks(struct ev_loop *loop);

/* Forget loop: stop the runtime's watchers on it, free its state and unbind
 * it from its thread (any thread may then use it).  Call it before
 * ev_loop_destroy(), or before handing the loop to another thread.  0 (also
 * for a loop the runtime never saw, or already closed), or -1 with errno
 * EBUSY (the loop still has unreleased tasks: join or detach them and let
 * them end; awaitlet_loop_cancel_all helps), EXDEV (another thread's loop),
 * EINVAL (loop NULL), EPERM (in a marked signal handler). */
int awaitlet_loop_close(struct ev_loop *loop);

/* Call cb(task, arg) for every unreleased task of loop (newest first, also
 * ended ones not yet joined), until cb returns non-zero.  cb runs outside
 * any task, like on_exit: it may cancel, set deadlines, detach (also the
 * task it was given), join ended tasks and start tasks (those are not
 * visited); it may not wait (awaitlet_current() is NULL in it, waits fail
 * with EPERM), nor walk or close the same loop (EBUSY).  Returns 0 after
 * the last task, the first non-zero value cb returned, or -1 with errno
 * EINVAL (loop or cb NULL), EXDEV (another thread's loop), EBUSY (a walk of
 * this loop is in progress), EPERM (in a marked signal handler).  A loop the
 * runtime never saw has no tasks: 0. */
int awaitlet_loop_walk(struct ev_loop *loop, int (*cb)(awaitlet_task *task, void *arg),
                       void *arg);

/* awaitlet_cancel every task of loop that has not ended yet.  Returns how
 * many were cancelled (a count, so errors cannot hide in it: -1 with errno
 * as for awaitlet_loop_walk).  The tasks run their failing waits on the
 * next loop iterations; join or detach them, then awaitlet_loop_close. */
int awaitlet_loop_cancel_all(struct ev_loop *loop);

/* Task-local values, like pthread keys, no destructors (clean up before the
 * task ends).  16 keys per process, of which libpqawait uses 1: an
 * application can count on at least 8 for itself.  awaitlet_key_create: 0 or -1
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
