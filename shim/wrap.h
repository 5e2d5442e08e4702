/*
 * wrap.h -- the one shape every exported libpq entry point has.
 *
 *   missing in the run-time libpq  -> FAIL, errno ENOSYS
 *   outside a task, nested, or in
 *   a signal handler               -> the real function (PASS)
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

#define PQAWAIT__WRAP_PRE(RET, NAME, PARAMS, ARGS, CONN, FLAGS, FAIL, PRE) \
    PQAWAIT_EXPORT RET NAME PARAMS                                \
    {                                                             \
        pqawait__scope sc;                                        \
        RET r;                                                    \
        if (!PQAWAIT__REAL(NAME)) {                               \
            errno = ENOSYS;                                       \
            return FAIL;                                          \
        }                                                         \
        switch (pqawait__enter(&sc, CONN, FLAGS)) {               \
        case PQAWAIT__BUSY:                                       \
            r = FAIL;                                             \
            pqawait__busy(&sc);                                   \
            return r;                                             \
        case PQAWAIT__PASS:                                       \
            PRE;                                                  \
            r = pqawait__real.NAME ARGS;                          \
            pqawait__passed(&sc);                                 \
            return r;                                             \
        default:                                                  \
            PRE;                                                  \
            if (__builtin_expect(__atomic_load_n(&pqawait__flying, __ATOMIC_RELAXED), 0)) \
                pqawait__before_call(&sc);                        \
            r = pqawait__real.NAME ARGS;                          \
            if (__builtin_expect(sc.tl == PQAWAIT__TL_GONE, 0))   \
                PQAWAIT__ABANDONED(&sc, r);                       \
            pqawait__leave_yield(&sc);                            \
            pqawait__leave(&sc);                                  \
            return r;                                             \
        }                                                         \
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
