/*
 * wrap.h -- the one shape every exported libpq entry point has.
 *
 *   missing in the run-time libpq  -> FAIL, errno ENOSYS
 *   plain (outside a task and
 *   nothing of this thread inside
 *   libpq: pqawait__plain_outside;
 *   or libpq calling itself on its
 *   scope's connection: the task's
 *   pass word, pqawait__pass_matches) -> the real function, decided inline
 *   otherwise outside a task,
 *   nested, or in a signal handler -> the real function (PASS)
 *   conn owned by another task     -> FAIL, errno EBUSY, conn untouched;
 *                                     a task yields once after computing it
 *   otherwise                      -> the real function inside a scope; an
 *                                     abandoned call marks what it returns;
 *                                     a fairness yield may follow, while the
 *                                     scope still owns conn
 *
 * FAIL is the value libpq itself documents for the function's failure
 * (NULL, 0, -1, InvalidOid...), so callers' existing error paths apply.
 * It is evaluated before anything may suspend.  Functions returning void
 * are written out by hand in wrap_connect.c.
 */
#ifndef PQAWAIT_WRAP_H
#define PQAWAIT_WRAP_H

#include <errno.h>

#include "bound.h"
#include "real.h"
#include "scope.h"

#define PQAWAIT__STRIP(...) __VA_ARGS__

/* How many arguments a wrapped function takes (up to 10). */
#define PQAWAIT__NARG(...) PQAWAIT__NARG_(__VA_ARGS__, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define PQAWAIT__NARG_(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, n, ...) n

/* NAME##__scoped takes real_ and slot_ before the arguments.  With more
 * than four arguments some of the six would go on the stack (x86-64 passes
 * six in registers), and the exported function would build a frame and
 * copy stack arguments on its plain path too (PQexecPrepared's was 21
 * instructions outside tasks against PQgetResult's 11).  Such a function
 * goes to NAME##__wide instead, which has its own signature (a jump, its
 * arguments left where they are) and works real_ and slot_ out again. */
#define PQAWAIT__WIDE(ARGS) (PQAWAIT__NARG(PQAWAIT__STRIP ARGS) > 4)

/* The exported function decides the plain cases inline and tail-calls
 * libpq; everything else is in NAME##__scoped, out of line, so the common
 * path has no frame to build. */
#define PQAWAIT__WRAP_PRE(RET, NAME, PARAMS, ARGS, CONN, FLAGS, FAIL, PRE) \
    PQAWAIT__WRAP_FULL(RET, NAME, PARAMS, ARGS, CONN, FLAGS, FAIL, PRE, (void)0)

/* INTASK: a statement run inside a task when the call is not libpq calling
 * itself, before a scope is considered (it may return; see PQgetCopyData). */
#define PQAWAIT__WRAP_FULL(RET, NAME, PARAMS, ARGS, CONN, FLAGS, FAIL, PRE, INTASK) \
    static __attribute__((noinline, cold)) RET NAME##__late PARAMS; \
    /* The function a plain call runs: NAME##__late until the first \
     * call (which may come from another library's constructor,   \
     * before ours) resolves, points it at libpq's function and   \
     * runs that (a scoped call stores it as well); a function    \
     * missing from the run-time libpq stays here and fails with  \
     * ENOSYS.  So the exported function tests no pointer. */     \
    static __typeof__(NAME) *NAME##__call = NAME##__late;         \
    static __attribute__((noinline)) RET NAME##__scoped(          \
        __typeof__(NAME) *real_, void **slot_, PQAWAIT__STRIP PARAMS) \
    {                                                             \
        if (__builtin_expect(real_ == NAME##__late, 0)) {         \
            /* unresolved: a function missing from the run-time   \
             * libpq is refused before anything else */           \
            pqawait__init();                                      \
            real_ = __atomic_load_n(&pqawait__real.NAME, __ATOMIC_ACQUIRE); \
            if (!real_) {                                         \
                errno = ENOSYS;                                   \
                return FAIL;                                      \
            }                                                     \
            /* once: a function only ever called in tasks would   \
             * take this branch every time */                     \
            __atomic_store_n(&NAME##__call, real_, __ATOMIC_RELEASE); \
        }                                                         \
        pqawait__scope sc;                                        \
        RET r;                                                    \
        switch (pqawait__enter_at(&sc, slot_, CONN, FLAGS)) {     \
        case PQAWAIT__BUSY:                                       \
            r = FAIL;                                             \
            pqawait__busy(&sc);                                   \
            return r;                                             \
        case PQAWAIT__PASS:                                       \
            PRE;                                                  \
            r = real_ ARGS;                                       \
            pqawait__passed(&sc);                                 \
            return r;                                             \
        default:                                                  \
            PRE;                                                  \
            if (__builtin_expect(__atomic_load_n(&pqawait__flying, __ATOMIC_RELAXED), 0)) \
                pqawait__before_call(&sc);                        \
            r = real_ ARGS;                                       \
            if (__builtin_expect(sc.tl == PQAWAIT__TL_GONE, 0))   \
                PQAWAIT__ABANDONED(&sc, r);                       \
            pqawait__leave_yield(&sc);                            \
            pqawait__leave(&sc);                                  \
            return r;                                             \
        }                                                         \
    }                                                             \
    static RET NAME##__late PARAMS                                \
    {                                                             \
        pqawait__init();                                          \
        __typeof__(NAME) *real_ = __atomic_load_n(&pqawait__real.NAME, __ATOMIC_ACQUIRE); \
        if (!real_) {                                             \
            errno = ENOSYS;                                       \
            return FAIL;                                          \
        }                                                         \
        __atomic_store_n(&NAME##__call, real_, __ATOMIC_RELEASE); \
        return real_ ARGS;                                        \
    }                                                             \
    static __attribute__((noinline, unused)) RET NAME##__wide PARAMS \
    {                                                             \
        __typeof__(NAME) *real_ = __atomic_load_n(&NAME##__call, __ATOMIC_ACQUIRE); \
        void **slot_ = NULL;                                      \
        if (awaitlet__cur != NULL) {                              \
            slot_ = pqawait__slot();                              \
            INTASK;                                               \
        }                                                         \
        return NAME##__scoped(real_, slot_, PQAWAIT__STRIP ARGS); \
    }                                                             \
    PQAWAIT_EXPORT RET NAME PARAMS                                \
    {                                                             \
        __typeof__(NAME) *real_ = __atomic_load_n(&NAME##__call, __ATOMIC_ACQUIRE); \
        void **slot_ = NULL;                                      \
        awaitlet_task *cur_ = awaitlet__cur;                      \
        if (__builtin_expect(cur_ == NULL, 1)) {                  \
            if (__builtin_expect(pqawait__plain_outside(CONN, FLAGS), 1)) { \
                PRE;                                              \
                return real_ ARGS;                                \
            }                                                     \
        } else {                                                  \
            /* inside a task: libpq calling itself on its innermost \
             * scope's connection goes straight on, decided by one \
             * compare (the task's pass word, scope.h); every other \
             * case, nested ones included, is decided by enter_at */ \
            if (!((FLAGS) & PQAWAIT__F_NEWSOCK) &&                \
                pqawait__pass_matches(cur_, CONN)) {              \
                PRE;                                              \
                return real_ ARGS;                                \
            }                                                     \
            if (!PQAWAIT__WIDE(ARGS)) {                           \
                slot_ = pqawait__slot();                          \
                INTASK;                                           \
            }                                                     \
        }                                                         \
        /* a wide function's slot_ and INTASK are NAME##__wide's */ \
        if (PQAWAIT__WIDE(ARGS))                                  \
            return NAME##__wide ARGS;                             \
        return NAME##__scoped(real_, slot_, PQAWAIT__STRIP ARGS); \
    }

/* PRE: something to do before the real call, when it runs (not refused). */
#define PQAWAIT__WRAP(RET, NAME, PARAMS, ARGS, CONN, FLAGS, FAIL) \
    PQAWAIT__WRAP_PRE(RET, NAME, PARAMS, ARGS, CONN, FLAGS, FAIL, (void)0)

/* An abandoned call (the interruption timeline, scope.c) is over: the
 * PGresult it returns, or the PGconn a connect returns, carries the line
 * naming the cause (bound.c).  Other return types need nothing. */
#define PQAWAIT__ABANDONED(sc, r)                                        \
    pqawait__abandoned_return((sc),                                      \
        _Generic((r), PGresult *: (r), default: (PGresult *)NULL),       \
        _Generic((r), PGconn *: (r), default: (PGconn *)NULL))

void pqawait__abandoned_return(pqawait__scope *sc, PGresult *res, PGconn *conn);

/* The common case: the first argument is the connection. */
#define PQAWAIT__WRAP_CONN(RET, NAME, PARAMS, ARGS, FLAGS, FAIL) \
    PQAWAIT__WRAP(RET, NAME, PARAMS, ARGS, conn, FLAGS, FAIL)

#endif
