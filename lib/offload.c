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
 * the whole pool costs nothing measurable.
 */
#include <assert.h>
#include <errno.h>
#include <signal.h>

#include "internal.h"

/* Where a job is; checked by assertions at every step. */
enum job_state { J_NEW, J_QUEUED, J_RUNNING, J_DONE, J_DELIVERED };

struct awaitlet__job {
    awaitlet_fn fn;
    void *arg, *result;
    awaitlet_task *task;
    awaitlet__loop *ls;
    struct awaitlet__job *next; /* in the queue, then in ls->done */
    enum job_state state;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static struct awaitlet__job *queue_head, *queue_tail;
static int nthreads, nidle, nqueued;
static int max_threads = 4; /* atomic: set without the lock */

int awaitlet_set_offload_threads(int n)
{
    if (n < 1 || n > 256) {
        errno = EINVAL;
        return -1;
    }
    __atomic_store_n(&max_threads, n, __ATOMIC_RELAXED);
    return 0;
}

static void enqueue_locked(struct awaitlet__job *j)
{
    assert(j->state == J_NEW); /* a job is queued once */
    j->state = J_QUEUED;
    j->next = NULL;
    if (queue_tail)
        queue_tail->next = j;
    else
        queue_head = j;
    queue_tail = j;
    nqueued++;
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
    assert(j->state == J_RUNNING);
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
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!queue_head) {
            nidle++;
            pthread_cond_wait(&work, &lock);
            nidle--;
        }
        struct awaitlet__job *j = dequeue_locked();
        j->state = J_RUNNING;
        pthread_mutex_unlock(&lock);

        void *r = j->fn(j->arg);

        pthread_mutex_lock(&lock);
        j->result = r;
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

void awaitlet__async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)revents;
    awaitlet__loop *ls = w->data;
    pthread_mutex_lock(&lock);
    struct awaitlet__job *j = ls->done, *fifo = NULL;
    ls->done = NULL;
    pthread_mutex_unlock(&lock);
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
        j->state = J_DELIVERED;
        if (--ls->offloads == 0)
            ev_async_stop(loop, w);
        awaitlet__resume(j->task);
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
    awaitlet__loop *ls = t->ls;
    struct awaitlet__job j = { .fn = fn, .arg = arg, .task = t, .ls = ls, .state = J_NEW };

    /* Arm the async watcher before the job can finish: ev_async_start clears
     * a pending ev_async_send, which would lose the wake-up. */
    if (ls->offloads++ == 0)
        ev_async_start(ls->loop, &ls->async);

    pthread_mutex_lock(&lock);
    if (nqueued >= nidle && nthreads < __atomic_load_n(&max_threads, __ATOMIC_RELAXED) &&
        spawn_locked() < 0 && nthreads == 0) {
        pthread_mutex_unlock(&lock);
        assert(ls->offloads > 0);
        if (--ls->offloads == 0)
            ev_async_stop(ls->loop, &ls->async);
        errno = EAGAIN;
        return -1;
    }
    enqueue_locked(&j);
    pthread_cond_signal(&work);
    pthread_mutex_unlock(&lock);

    awaitlet__disarm_io(t);
    t->wait = W_OFFLOAD;
    /* Suspends until awaitlet__async_cb delivers the job; nothing else
     * resumes a task in W_OFFLOAD. */
    awaitlet__suspend(t);
    assert(j.state == J_DELIVERED);
    if (result)
        *result = j.result;
    return 0;
}
