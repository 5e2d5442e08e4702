/*
 * common.h -- shared helpers of the shim's integration tests.
 *
 * The shim's tests run against a real PostgreSQL described by the
 * environment (PQAWAIT_TEST_HOST/PORT/DB/SSLROOT, set by tests/pg/with-pg).
 * A missing variable is a test FAILURE with a message, never a silent pass:
 * a suite that skips itself when nobody notices proves nothing.
 *
 * Every test program is linked the way a user relinks (libpqawait before
 * libpq); pqa_check_interposed() proves the shim's definitions really won, so
 * a green run cannot come from plain libpq.
 *
 * The programs force Check's fork mode: a failed assertion inside a task
 * then just ends the test's child process, where without fork Check would
 * longjmp from the task's stack back to the runner's.
 */
#ifndef PQA_TESTS_COMMON_H
#define PQA_TESTS_COMMON_H

#include <check.h>
#include <ev.h>
#include <libpq-fe.h>
#include <stddef.h>

#include "awaitlet.h"

/* The kinds of connection the tests open; all reach the same server. */
typedef enum pqa_kind {
    PQA_UNIX,       /* unix socket, pqa_trust */
    PQA_TCP,        /* host=127.0.0.1, pqa_trust, no SSL */
    PQA_TCP_NAME,   /* host=localhost (name lookup), pqa_trust, no SSL */
    PQA_SSL,        /* host=localhost, pqa_trust, sslmode=verify-full */
    PQA_SCRAM,      /* host=127.0.0.1, pqa_scram (password), no SSL */
    PQA_SCRAM_SSL   /* host=localhost, pqa_scram, sslmode=verify-full */
} pqa_kind;

/* Checks the environment; on a missing variable prints why and exits 1.
 * Call first thing in main(). */
void pqa_env_init(void);
const char *pqa_env_host(void);    /* unix socket directory */
const char *pqa_env_port(void);    /* TCP port (and socket suffix) */
const char *pqa_env_db(void);
const char *pqa_env_sslroot(void);

/* A malloc'd conninfo string for kind, with `extra` ("k=v k=v", may be NULL)
 * appended so it overrides earlier keys. */
char *pqa_conninfo(pqa_kind kind, const char *extra);

/* As pqa_conninfo but to 127.0.0.1:port (a proxy or an extra server). */
char *pqa_conninfo_port(int port, const char *extra);

/* PQconnectdb(pqa_conninfo(kind, extra)); fails the test unless CONNECTION_OK. */
PGconn *pqa_connect(pqa_kind kind, const char *extra);

/* PQexec that must succeed with `expect`; returns the result (caller clears). */
PGresult *pqa_exec_ok(PGconn *conn, const char *sql, ExecStatusType expect);

/* A task body (arg: the PGconn): the connection answers a query in step
 * ("select 'usable'"), else the test fails.  Returns NULL. */
void *pqa_usable_task(void *conn);

/* Monotonic clock in seconds. */
double pqa_now(void);

/* 1 under valgrind or a sanitizer: loosen time bounds, shrink data. */
int pqa_slow_build(void);

/* 1 under ThreadSanitizer (whose pthread_create waits for the new thread
 * to run: a loop that starts a thread sleeps meanwhile). */
int pqa_tsan_build(void);

/* A fresh epoll loop (ev_loop_new), failing the test on error. */
struct ev_loop *pqa_loop_new(void);

/* Runs fn(arg) as a task on a fresh loop and returns its result; the loop is
 * destroyed afterwards.  Fails the test if the task could not run. */
void *pqa_run_in_task(awaitlet_fn fn, void *arg);

/* Proves the shim is interposed in this program: dlsym(RTLD_DEFAULT) of
 * PQexec/poll/getaddrinfo names libpqawait, and a task blocked in
 * PQexec("select pg_sleep(0.2)") lets a 1 ms timer keep ticking. */
void pqa_check_interposed(void);

/* Run a suite (forking each test, see above) and return main's exit status. */
int pqa_run_suite(Suite *s);

/* A temp file name (malloc'd) holding `size` pseudo-random bytes (seeded by
 * `seed`); size 0 creates an empty name only (file not created). */
char *pqa_temp_file(size_t size, unsigned seed);

/* Reads a whole file into a malloc'd buffer; *len receives the size.
 * NULL if it cannot be read. */
char *pqa_read_file(const char *path, size_t *len);

/* A process-unique suffix for names shared on the server (channels). */
const char *pqa_unique(void);

#endif
