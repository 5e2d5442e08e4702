/*
 * pg_threads.c -- variant c: one thread per session running the blocking
 * code of pg_work.c with plain libpq (bench-pg-plain), or, in bench-pg,
 * the same calls passing through libpqawait outside any task (what the
 * shim costs code that never starts a task).
 *
 * Threads get the default attributes (8 MiB of address space for each
 * stack, committed lazily), as a program written this way would.
 */
#include "pg.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_t *threads, churn_thread;
static int nthreads, have_churn;

static int thread_wait_go(void)
{
    struct pollfd p = { .fd = pgb.go_fd, .events = POLLIN };
    int n;
    while ((n = poll(&p, 1, -1)) < 0 && errno == EINTR)
        ;
    return n == 1 ? 0 : -1;
}

static void *session_thread(void *arg)
{
    pgb_session_main(arg, thread_wait_go);
    return NULL;
}

static void *churn_main(void *arg)
{
    pgb_churn_main(thread_wait_go);
    return arg;
}

void pgb_threads_start(void)
{
    int e;
    if (!(threads = calloc((size_t)pgb.sessions, sizeof *threads))) {
        perror("bench-pg: calloc");
        exit(1);
    }
    for (nthreads = 0; nthreads < pgb.sessions; nthreads++)
        if ((e = pthread_create(&threads[nthreads], NULL, session_thread, &pgb.s[nthreads]))) {
            fprintf(stderr, "bench-pg: pthread_create (session %d): %s\n", nthreads, strerror(e));
            for (int i = nthreads; i < pgb.sessions; i++)
                pgb_mark_failed();
            break;
        }
    if (pgb.churn) {
        if ((e = pthread_create(&churn_thread, NULL, churn_main, NULL)))
            fprintf(stderr, "bench-pg: pthread_create (churn): %s\n", strerror(e));
        else
            have_churn = 1;
    }
}

void pgb_threads_join(void)
{
    for (int i = 0; i < nthreads; i++)
        pthread_join(threads[i], NULL);
    if (have_churn)
        pthread_join(churn_thread, NULL);
    free(threads);
}
