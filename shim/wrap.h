/*
 * wrap.h -- the one shape every exported libpq entry point has.
 *
 *   missing in the run-time libpq  -> FAIL, errno ENOSYS
 *   outside a task, nested, or in
 *   a signal handler               -> the real function (PASS)
 *   conn owned by another task     -> FAIL, errno EBUSY, conn untouched;
 *                                     a task yields once after computing it
 *   otherwise                      -> the real function inside a scope; a
 *                                     fairness yield may follow, while the
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

#include "real.h"
#include "scope.h"

#define PQAWAIT__WRAP(RET, NAME, PARAMS, ARGS, CONN, FLAGS, FAIL) \
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
            r = pqawait__real.NAME ARGS;                          \
            pqawait__passed(&sc);                                 \
            return r;                                             \
        default:                                                  \
            r = pqawait__real.NAME ARGS;                          \
            pqawait__leave_yield(&sc);                            \
            pqawait__leave(&sc);                                  \
            return r;                                             \
        }                                                         \
    }

/* The common case: the first argument is the connection. */
#define PQAWAIT__WRAP_CONN(RET, NAME, PARAMS, ARGS, FLAGS, FAIL) \
    PQAWAIT__WRAP(RET, NAME, PARAMS, ARGS, conn, FLAGS, FAIL)

#endif
