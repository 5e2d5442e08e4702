/*
 * pool_common.h -- helpers of the connection pool's tests (tests/pool).
 *
 * The pool's tests run against the real PostgreSQL of tests/pg/with-pg and
 * use tests/shim/common.[ch] for the environment and connection strings.
 * Every test names its pool's connections with an application_name of its
 * own (pt_app), so a separate monitor connection can count, find and kill
 * exactly that pool's backends in pg_stat_activity -- the server's own view,
 * not the pool's statistics.
 *
 * A test body is a task (pt_run): it makes its pool on the task's loop,
 * does its work and closes the pool; pt_run then runs the loop until the
 * pool's own tasks have ended too, and fails if they do not.
 */
#ifndef PQA_POOL_COMMON_H
#define PQA_POOL_COMMON_H

#include "../shim/common.h"
#include "pqawait.h"

#include <stdio.h>

/* A fresh application_name for this test ("pqa_pool_<pid>_<n>"). */
const char *pt_app(void);
/* Declare `char var[64]` holding a fresh one. */
#define PT_APP(var) \
    char var[64];   \
    snprintf(var, sizeof var, "%s", pt_app())

/* Unix-socket conninfo with application_name=app and `extra` appended. */
char *pt_conninfo(const char *app, const char *extra);

/* Options: the defaults, with min_size 0 and short times for tests. */
pqawait_pool_options pt_options(int min_size, int max_size);

/* Run fn(arg) as a task on a fresh loop; afterwards run the loop until no
 * task is left (the pool's own end), at most `grace` seconds.  Returns the
 * task's result. */
void *pt_run(awaitlet_fn fn, void *arg, double grace);

/* On the monitor connection (opened on first use, plain libpq; inside a
 * task its calls are cooperative like any other): */
PGconn *pt_monitor(void);
/* Backends whose application_name is app. */
int pt_backends(const char *app);
/* pg_terminate_backend for all of them; returns how many. */
int pt_terminate(const char *app);
/* Wait (sleeping in the task) until pt_backends(app) == n, at most
 * `timeout` seconds; returns the last count seen. */
int pt_wait_backends(const char *app, int n, double timeout);
/* SQL that must succeed on the monitor; returns the first value (static
 * buffer) or "". */
const char *pt_sql(const char *sql);

/* The backend pid of conn (a query on it). */
int pt_pid(PGconn *conn);
/* One integer from one query on conn; -999 on error. */
long pt_int(PGconn *conn, const char *sql);

/* SIGSTOP backend pid (a server that stays connected and says nothing),
 * with a watchdog process that sends SIGCONT after 15 s whatever happens
 * to the test: a frozen backend left behind would block the shared
 * server's DROP DATABASE for every later test.  pt_cont_backend ends it. */
void pt_stop_backend(int pid);
void pt_cont_backend(int pid);

/* Wait in the task until cond() is true, at most timeout s; 1 if it became
 * true. */
int pt_until(int (*cond)(void *), void *arg, double timeout);

#endif
