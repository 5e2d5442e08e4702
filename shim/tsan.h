/*
 * tsan.h -- ThreadSanitizer told of the hand-overs it cannot see
 * (internal).  Without TSan the annotations are empty and the lock pair is
 * pthread_mutex_lock/unlock.
 *
 * The shim's poll and ppoll are reached through TSan's own interceptors
 * of those names: the TSan runtime comes first in the lookup order and
 * forwards to the next definition, ours.  TSan takes the whole of what
 * runs inside for one blocking system call (its BlockingCall): until the
 * call returns, on that thread -- that task's fiber -- it ignores every
 * intercepted call (mutexes, condition variables, semaphores) and every
 * atomic operation.  Memory accesses are still checked.  A task waits for
 * libpq inside that poll, and its interruption timeline (scope.c) starts
 * cancel requests from there (cancel.c), so without help the other
 * thread's side of each hand-over looks like a race to TSan.
 *
 * So the code that can run there says its hand-overs to TSan itself, on
 * the address of the lock or atomic that makes them: PQAWAIT__TSAN_RELEASE
 * just before the publishing unlock or store, PQAWAIT__TSAN_ACQUIRE just
 * after the lock or load that consumes; a mutex is taken through
 * pqawait__lock/pqawait__unlock, which do both.  TSan honours these inside
 * its interceptors, and on the same address they pair with its own view
 * of the real lock or atomic on the other side.  Said everywhere, not only
 * inside poll: outside, they repeat what TSan sees anyway.
 *
 * (The runtime's fibers are annotated in lib/task.c the same way.)
 */
#ifndef PQAWAIT_TSAN_H
#define PQAWAIT_TSAN_H

#if defined(__SANITIZE_THREAD__)
#define PQAWAIT__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PQAWAIT__TSAN 1
#endif
#endif

#include <pthread.h>

#ifdef PQAWAIT__TSAN
#include <sanitizer/tsan_interface.h>
#define PQAWAIT__TSAN_RELEASE(addr) __tsan_release((void *)(addr))
#define PQAWAIT__TSAN_ACQUIRE(addr) __tsan_acquire((void *)(addr))
#else
#define PQAWAIT__TSAN_RELEASE(addr) ((void)0)
#define PQAWAIT__TSAN_ACQUIRE(addr) ((void)0)
#endif

/* A mutex that code inside the shim's poll takes: locked and unlocked
 * through these, TSan sees it there too. */
static inline void pqawait__lock(pthread_mutex_t *m)
{
    pthread_mutex_lock(m);
    PQAWAIT__TSAN_ACQUIRE(m);
}

static inline void pqawait__unlock(pthread_mutex_t *m)
{
    PQAWAIT__TSAN_RELEASE(m);
    pthread_mutex_unlock(m);
}

#endif
