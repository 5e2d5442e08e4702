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
 */
#include <errno.h>
#include <signal.h>

#include "internal.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static struct awaitlet__job *queue_head, *queue_tail;
static int nthreads, nidle, nqueued, max_threads = 4;

int awaitlet_set_offload_threads(int n)
{
    if (n < 1 || n > 256) {
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&lock);
    max_threads = n;
    pthread_mutex_unlock(&lock);
    return 0;
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
        struct awaitlet__job *j = queue_head;
        nqueued--;
        queue_head = j->next;
        if (!queue_head)
            queue_tail = NULL;
        pthread_mutex_unlock(&lock);

        j->result = j->fn(j->arg);

        awaitlet__loop *ls = j->ls;
        pthread_mutex_lock(&ls->done_lock);
        j->next = ls->done;
        ls->done = j;
        pthread_mutex_unlock(&ls->done_lock);
        ev_async_send(ls->loop, &ls->async);
        pthread_mutex_lock(&lock);
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
    pthread_mutex_lock(&ls->done_lock);
    struct awaitlet__job *j = ls->done;
    ls->done = NULL;
    pthread_mutex_unlock(&ls->done_lock);
    while (j) {
        struct awaitlet__job *next = j->next;
        if (--ls->offloads == 0)
            ev_async_stop(loop, w);
        awaitlet__resume(j->task); /* j is on that task's stack: read next first */
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
    struct awaitlet__job j = { .fn = fn, .arg = arg, .task = t, .ls = t->ls };
    awaitlet__loop *ls = t->ls;

    /* Arm the async watcher before the job can finish: ev_async_start clears
     * a pending ev_async_send, which would lose the wake-up. */
    if (ls->offloads++ == 0)
        ev_async_start(ls->loop, &ls->async);

    pthread_mutex_lock(&lock);
    if (nqueued >= nidle && nthreads < max_threads && spawn_locked() < 0 && nthreads == 0) {
        pthread_mutex_unlock(&lock);
        if (--ls->offloads == 0)
            ev_async_stop(ls->loop, &ls->async);
        errno = EAGAIN;
        return -1;
    }
    if (queue_tail)
        queue_tail->next = &j;
    else
        queue_head = &j;
    queue_tail = &j;
    nqueued++;
    pthread_cond_signal(&work);
    pthread_mutex_unlock(&lock);

    awaitlet__disarm_io(t);
    t->wait = W_OFFLOAD;
    awaitlet__suspend(t);
    if (result)
        *result = j.result;
    return 0;
}
