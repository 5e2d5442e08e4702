/*
 * offload.c -- run a blocking function on a worker thread while the task
 * waits.
 *
 * Some calls have no nonblocking form at all (getaddrinfo, libpq's blocking
 * cancel request).  The task hands them to a small process-wide pool of
 * worker threads and suspends; the worker posts the finished job to the
 * task's loop and wakes it with ev_async, the only thread-safe libev call.
 * The job lives on the task's stack, which is why the wait cannot be
 * interrupted: the task must stay put until the worker is done with it.
 *
 * One mutex, `lock`, guards everything workers share with loops: the queue,
 * the counts and every loop's list of finished jobs.  A worker posts a job
 * and sends the loop's wake-up without letting go of it, and the loop takes
 * its finished jobs under it; so no job is delivered -- and no task can end
 * and no loop be destroyed -- before the worker that finished it is done
 * with the loop.  (With the send after the unlock, another worker's wake-up
 * could deliver the job first, and the late send then wrote into a
 * destroyed loop.)  The send is a write to an eventfd at most, and only
 * when the loop sleeps; offloads are rare next to queries, so one lock for
 * the whole pool costs nothing measurable.  The loop's thread holds it for
 * a few list operations and never waits for a worker under it: workers
 * are woken through a semaphore (`work`), after the unlock.
 *
 * Fork.  The child has only the thread that called fork(): no workers, and
 * maybe a lock taken by one of them -- not only ours: a worker inside
 * getaddrinfo may hold glibc's own locks (the gai.conf table, the resolver
 * configuration), which glibc does not reset in the child, so any lookup
 * there would wait for ever.  So fork() waits for the pool to be quiet:
 * atfork_prepare takes the lock, stops workers from starting new jobs and
 * waits until no job is running (but the forking thread's own, when fork()
 * is called from inside an offloaded function).  The lock is released in
 * the parent and in the child (held by the forking thread, the child's
 * only one), where the pool has no threads, and every job it knew of ends as awaitlet_offload's contract says:
 *   - queued: queued again in the child and run there on new workers -- as
 *     in the parent, where it runs too (each process's task waits for its
 *     own run: a job must be safe to run in both).
 *   - finished but not yet delivered: its wake-up was sent before the fork
 *     (posting and sending are one step under the lock), so the child's
 *     loop delivers it once it runs again after ev_loop_fork.
 *   - running: only the forking worker's own job can be; it belongs to the
 *     parent (see worker()).
 *   - of a loop run by another thread: abandoned; that thread, its loop and
 *     its tasks do not exist in the child, nobody could receive the result.
 * Workers are started again lazily, not in the fork handler: the handler
 * wakes each loop that has jobs waiting, and that loop's callback starts
 * them -- so a child that only execs starts no threads and runs nothing.
 * If none can be started the jobs fail with EAGAIN, as a new one would.
 * The price: fork() in a process with offloads in progress waits for them
 * (a host-name lookup: usually milliseconds, at worst the resolver's own
 * timeout).
 *
 * Abandonable jobs (awaitlet_offload_start / _wait / _abandon) live in
 * job.c; the pool's insides they share are in offload.h.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <semaphore.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"
#include "offload.h"

pthread_mutex_t awaitlet__offload_lock = PTHREAD_MUTEX_INITIALIZER;
/* One token per job queued.  A semaphore, not a condition variable, for
 * the loop's sake: glibc's pthread_cond_signal waits (futex) for the
 * waiters it woke earlier to have run before it can wake another, so on a
 * busy machine a loop submitting a burst of jobs slept for milliseconds
 * (seen as 1-5 ms futex waits under perf trace, fault-bouncer); sem_post
 * never waits.  Initialised by atfork_register (before any thread). */
static sem_t work;
static pthread_cond_t quiet = PTHREAD_COND_INITIALIZER; /* a job ended while forking */
static struct awaitlet__job *queue_head, *queue_tail;
static struct awaitlet__job *running_head, *running_tail; /* for the fork child */
static int nthreads, nidle, nqueued;
static int nrunning;        /* jobs inside fn right now */
static int forking;         /* threads in atfork_prepare: start no job */
static AWAITLET__TLS int in_job; /* this thread is a worker inside fn */
static int max_threads = 4; /* atomic: set without the lock */
int awaitlet__offload_atfork_err; /* the fork handlers could not be registered */

int awaitlet_set_offload_threads(int n)
{
    if (n < 1 || n > 256) {
        errno = EINVAL;
        return -1;
    }
    __atomic_store_n(&max_threads, n, __ATOMIC_RELAXED);
    return 0;
}

static void append_locked(struct awaitlet__job *j)
{
    j->state = J_QUEUED;
    j->next = NULL;
    if (queue_tail)
        queue_tail->next = j;
    else
        queue_head = j;
    queue_tail = j;
    nqueued++;
}

static void enqueue_locked(struct awaitlet__job *j)
{
    assert(j->state == J_NEW); /* a job is queued once (a fork child re-queues
                                  through append_locked) */
    append_locked(j);
}

static struct awaitlet__job *dequeue_locked(void)
{
    struct awaitlet__job *j = queue_head;
    assert(j && j->state == J_QUEUED && nqueued > 0);
    queue_head = j->next;
    if (!queue_head)
        queue_tail = NULL;
    nqueued--;
    return j;
}

/* Hand a finished job to its loop and wake the loop, under the lock (see
 * the top of the file).  A loop whose list was not empty already has a
 * wake-up on the way: its callback takes the whole list. */
static void post_locked(struct awaitlet__job *j)
{
    awaitlet__loop *ls = j->ls;
    assert(j->state == J_RUNNING || (j->state == J_QUEUED && j->err)); /* failed unrun */
    j->state = J_DONE;
    int wake = ls->done == NULL;
    j->next = ls->done;
    ls->done = j;
    if (wake)
        ev_async_send(ls->loop, &ls->async);
}

static void *worker(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&awaitlet__offload_lock);
    for (;;) {
        while (!queue_head || forking) {
            /* A token may find the queue empty (a busy worker took its job
             * on the way round, or a fork held it back): wait again. */
            nidle++;
            pthread_mutex_unlock(&awaitlet__offload_lock);
            while (sem_wait(&work) < 0)
                assert(errno == EINTR);
            pthread_mutex_lock(&awaitlet__offload_lock);
            nidle--;
        }
        struct awaitlet__job *j = dequeue_locked();
        j->state = J_RUNNING;
        j->run_next = NULL;
        j->run_prev = running_tail;
        if (running_tail)
            running_tail->run_next = j;
        else
            running_head = j;
        running_tail = j;
        nrunning++;
        in_job = 1;
        pthread_mutex_unlock(&awaitlet__offload_lock);

        void *r = j->fn(j->arg);

        pthread_mutex_lock(&awaitlet__offload_lock);
        in_job = 0;
        if (j->state != J_RUNNING) {
            /* Only in the child of a fork() made inside fn: this thread
             * is all that process has, and the job belongs to the parent
             * (see atfork_child).  There is nothing to return to; end as
             * after a failed exec, the usual fate of such a child. */
            _exit(127);
        }
        struct awaitlet_job *hj = NULL;
        if (j->heap && j->abandoned) {
            /* Its task gave it up: clean up here, still counted as running
             * (a fork waits for the clean-up too), then free it. */
            hj = (struct awaitlet_job *)j;
            pthread_mutex_unlock(&awaitlet__offload_lock);
            if (hj->cleanup)
                hj->cleanup(j->arg, r);
            pthread_mutex_lock(&awaitlet__offload_lock);
        }
        if (j->run_prev)
            j->run_prev->run_next = j->run_next;
        else
            running_head = j->run_next;
        if (j->run_next)
            j->run_next->run_prev = j->run_prev;
        else
            running_tail = j->run_prev;
        assert(nrunning > 0);
        if (--nrunning <= 1 && forking)
            pthread_cond_broadcast(&quiet); /* a fork may proceed */
        if (hj) {
            free(hj);
            continue;
        }
        j->result = r;
        if (j->heap && !j->task)
            j->state = J_READY; /* nobody waits: the loop is not ours to touch */
        else
            post_locked(j);
    }
    return NULL;
}

/* Workers block every signal: signals belong to the program's own threads. */
static int spawn_locked(void)
{
    pthread_t th;
    pthread_attr_t attr;
    sigset_t all, old;
    sigfillset(&all);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&th, &attr, worker, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (e)
        return -1;
    nthreads++;
    return 0;
}

/* ---- fork ------------------------------------------------------------------ */

/* Take the lock and wait until no worker is inside a job, other than the
 * forking thread itself (see the top of the file).  Waits for as long as
 * the jobs in progress take. */
static void atfork_prepare(void)
{
    pthread_mutex_lock(&awaitlet__offload_lock);
    forking++;
    while (nrunning > in_job)
        pthread_cond_wait(&quiet, &awaitlet__offload_lock);
}

static void atfork_parent(void)
{
    forking--;
    /* jobs held back while forking: workers may have used up their tokens */
    for (int i = 0; i < nqueued && i < nidle; i++)
        (void)sem_post(&work);
    pthread_mutex_unlock(&awaitlet__offload_lock);
}

/* Queue j again in the child, or abandon it (see the top of the file). */
static void adopt_locked(struct awaitlet__job *j, pthread_t self)
{
    awaitlet__loop *ls = j->ls;
    if (j->heap && (j->abandoned || !j->task)) {
        /* Nobody waits on it (its loop may even be gone): queued again
         * without a wake-up; it runs once the child starts a worker (its
         * next offload, or a wait on this job). */
        append_locked(j);
        return;
    }
    if (!pthread_equal(ls->owner, self)) {
        j->state = J_ABANDONED;
        return;
    }
    assert(ls->offloads > 0); /* so its async watcher is active */
    append_locked(j);
    /* Only flags in the loop's memory: the forking thread is not in that
     * loop's poll.  The loop sees them when it runs after ev_loop_fork. */
    ev_async_send(ls->loop, &ls->async);
}

static void atfork_child(void)
{
    pthread_t self = pthread_self();
    struct awaitlet__job *run = running_head, *queued = queue_head, *next;
    /* The lock was taken in atfork_prepare by this very thread, which is
     * the child's thread: it still holds it (and unlocks it below, the
     * pthread_atfork pattern -- re-initialising a locked mutex instead
     * leaves ThreadSanitizer believing it held for ever, so that no lock
     * in the child orders anything).  A fresh semaphore and condition
     * variable replace the old ones: their waiters are gone. */
    (void)sem_destroy(&work);
    (void)sem_init(&work, 0, 0);
    pthread_cond_init(&quiet, NULL);
    nthreads = nidle = nqueued = nrunning = forking = 0;
    in_job = 0;
    queue_head = queue_tail = running_head = running_tail = NULL;
    for (; run; run = next) { /* only the forking worker's own job, if any */
        next = run->run_next;
        assert(run->state == J_RUNNING);
        adopt_locked(run, self); /* another thread's loop: abandoned */
    }
    for (; queued; queued = next) {
        next = queued->next;
        assert(queued->state == J_QUEUED);
        adopt_locked(queued, self);
    }
    pthread_mutex_unlock(&awaitlet__offload_lock);
}

__attribute__((constructor)) static void atfork_register(void)
{
    /* At load time, before any thread can hold the lock or fork. */
    if (sem_init(&work, 0, 0) < 0)
        awaitlet__offload_atfork_err = errno;
    else
        awaitlet__offload_atfork_err = pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* After a fork: the child has jobs but no workers.  Start one per job up to
 * the limit; if none starts, fail the jobs as a new offload would fail. */
static void restart_locked(void)
{
    int max = __atomic_load_n(&max_threads, __ATOMIC_RELAXED);
    while (nthreads < max && nthreads < nqueued && spawn_locked() == 0)
        ;
    while (nthreads == 0 && queue_head) {
        struct awaitlet__job *j = dequeue_locked();
        j->err = EAGAIN;
        if (!j->heap || j->task) {
            post_locked(j);
        } else if (j->abandoned) {
            struct awaitlet_job *hj = (struct awaitlet_job *)j;
            if (hj->cleanup)
                hj->cleanup(j->arg, NULL); /* fn never ran */
            free(hj);
        } else {
            j->state = J_READY; /* its next wait reports EAGAIN */
        }
    }
}

/* ---- delivery ------------------------------------------------------------ */

void awaitlet__async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)revents;
    awaitlet__loop *ls = w->data;
    pthread_mutex_lock(&awaitlet__offload_lock);
    if (queue_head && nthreads == 0)
        restart_locked(); /* only ever true in a fork child */
    struct awaitlet__job *j = ls->done, *fifo = NULL;
    ls->done = NULL;
    pthread_mutex_unlock(&awaitlet__offload_lock);
    while (j) { /* the list is newest first: resume in the order they finished */
        struct awaitlet__job *next = j->next;
        j->next = fifo;
        fifo = j;
        j = next;
    }
    for (j = fifo; j;) {
        struct awaitlet__job *next = j->next; /* j is on its task's stack */
        assert(j->state == J_DONE && j->ls == ls); /* delivered once, here */
        assert(ls->offloads > 0);
        if (--ls->offloads == 0)
            ev_async_stop(loop, w);
        if (!j->heap) {
            j->state = J_DELIVERED;
            awaitlet__resume(j->task);
        } else {
            awaitlet__job_deliver(j);
        }
        j = next;
    }
}

int awaitlet_offload(awaitlet_fn fn, void *arg, void **result)
{
    awaitlet_task *t = awaitlet__cur;
    if (!fn) {
        errno = EINVAL;
        return -1;
    }
    if (awaitlet__sigdepth) {
        errno = EPERM;
        return -1;
    }
    if (!t) {
        void *r = fn(arg);
        if (result)
            *result = r;
        return 0;
    }
    if (awaitlet__offload_atfork_err) {
        errno = awaitlet__offload_atfork_err;
        return -1;
    }
    awaitlet__loop *ls = t->ls;
    struct awaitlet__job j = { .fn = fn, .arg = arg, .task = t, .ls = ls, .state = J_NEW };

    /* Arm the async watcher before the job can finish: ev_async_start clears
     * a pending ev_async_send, which would lose the wake-up. */
    if (ls->offloads++ == 0)
        ev_async_start(ls->loop, &ls->async);

    pthread_mutex_lock(&awaitlet__offload_lock);
    if (awaitlet__offload_submit_locked(&j) < 0) {
        pthread_mutex_unlock(&awaitlet__offload_lock);
        assert(ls->offloads > 0);
        if (--ls->offloads == 0)
            ev_async_stop(ls->loop, &ls->async);
        errno = EAGAIN;
        return -1;
    }
    assert(nthreads > 0);
    pthread_mutex_unlock(&awaitlet__offload_lock);
    awaitlet__offload_kick();

    awaitlet__disarm_io(t);
    t->wait = W_OFFLOAD;
    /* Suspends until awaitlet__async_cb delivers the job; nothing else
     * resumes a task in W_OFFLOAD. */
    awaitlet__suspend(t);
    assert(j.state == J_DELIVERED);
    if (j.err) {
        errno = j.err;
        return -1;
    }
    if (result)
        *result = j.result;
    return 0;
}

/* ---- for job.c -------------------------------------------------------------- */

/* With the lock held: queue j (its task registered), starting a worker when
 * none is idle.  0, or -1 when no worker exists or can be started.  The
 * caller then unlocks and calls awaitlet__offload_kick. */
int awaitlet__offload_submit_locked(struct awaitlet__job *j)
{
    if (nqueued >= nidle && nthreads < __atomic_load_n(&max_threads, __ATOMIC_RELAXED) &&
        spawn_locked() < 0 && nthreads == 0)
        return -1;
    enqueue_locked(j);
    return 0;
}

/* After the unlock, so that the worker it wakes does not find the lock
 * still taken: one token for the job just queued.  Never waits (`work`). */
void awaitlet__offload_kick(void)
{
    (void)sem_post(&work);
}

/* With the lock held: in a fork child whose queue waits for workers, start
 * them. */
void awaitlet__offload_restart_locked(void)
{
    if (nthreads == 0 && queue_head)
        restart_locked();
}
