/*
 * modes_dlopen.c -- libpq loaded with dlopen(RTLD_DEEPBIND | RTLD_LOCAL)
 * in a process with libpqawait preloaded: nothing reaches the shim, and
 * pqawait_interposed() must say so.
 *
 *   modes_dlopen LIBPQ.so
 *
 * The preloaded shim already pulled a libpq in (it links against it), so
 * dlopen of the same file would just return that one, whose references
 * do reach the shim.  A program that really gets its own libpq -- a vendored
 * copy, a second version -- loads another file; this program copies
 * LIBPQ.so to a temporary file and loads that with RTLD_DEEPBIND: its
 * symbol lookups then search its own dependencies (libc) before the global
 * scope, so its poll, getaddrinfo and internal PQsendQuery calls never see
 * the shim's definitions, although dlsym(RTLD_DEFAULT, ...) still names the
 * shim.  Five tasks each run SELECT pg_sleep(0.3) through that copy: they
 * block one after another (the proof that nothing is cooperative), and
 * pqawait_interposed() must be 0.
 */
#include <dlfcn.h>
#include <ev.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "awaitlet.h"

enum { N = 5 };
static char conninfo[512];

static struct {
    PGconn *(*connectdb)(const char *);
    ConnStatusType (*status)(const PGconn *);
    PGresult *(*exec)(PGconn *, const char *);
    ExecStatusType (*result_status)(const PGresult *);
    void (*clear)(PGresult *);
    void (*finish)(PGconn *);
    char *(*error_message)(const PGconn *);
} pq;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *session(void *arg)
{
    (void)arg;
    PGconn *c = pq.connectdb(conninfo);
    int ok = pq.status(c) == CONNECTION_OK;
    if (ok) {
        PGresult *r = pq.exec(c, "SELECT pg_sleep(0.3)");
        ok = pq.result_status(r) == PGRES_TUPLES_OK;
        pq.clear(r);
    }
    if (!ok)
        fprintf(stderr, "session: %s", pq.error_message(c));
    pq.finish(c);
    return ok ? (void *)1 : NULL;
}

static int copy_file(const char *from, char *to)
{
    int in = open(from, O_RDONLY), out = mkstemp(to);
    if (in < 0 || out < 0)
        return -1;
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, (size_t)n) != n)
            return -1;
    close(in);
    close(out);
    return n < 0 ? -1 : 0;
}

#define LOAD(field, name)                                                        \
    do {                                                                         \
        *(void **)&pq.field = dlsym(h, name);                                    \
        if (!pq.field) {                                                         \
            fprintf(stderr, "modes_dlopen: %s missing in the copy\n", name);     \
            return 1;                                                            \
        }                                                                        \
    } while (0)

int main(int argc, char **argv)
{
    const char *host = getenv("PQAWAIT_TEST_HOST"), *port = getenv("PQAWAIT_TEST_PORT");
    const char *db = getenv("PQAWAIT_TEST_DB");
    if (argc != 2) {
        fprintf(stderr, "usage: modes_dlopen LIBPQ.so\n");
        return 2;
    }
    if (!host || !port || !db) {
        fprintf(stderr, "modes_dlopen: PQAWAIT_TEST_HOST/PORT/DB not set (run through tests/pg/with-pg)\n");
        return 1;
    }
    int (*interposed)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "pqawait_interposed");
    if (!interposed) {
        fprintf(stderr, "modes_dlopen: run with libpqawait preloaded\n");
        return 1;
    }
    printf("before the dlopen: pqawait_interposed() = %d\n", interposed());
    char copy[] = "/tmp/pqa-libpq-copy-XXXXXX";
    if (copy_file(argv[1], copy) != 0) {
        perror("modes_dlopen: copying libpq");
        return 1;
    }
    void *h = dlopen(copy, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    unlink(copy);
    if (!h) {
        fprintf(stderr, "modes_dlopen: %s\n", dlerror());
        return 1;
    }
    LOAD(connectdb, "PQconnectdb");
    LOAD(status, "PQstatus");
    LOAD(exec, "PQexec");
    LOAD(result_status, "PQresultStatus");
    LOAD(clear, "PQclear");
    LOAD(finish, "PQfinish");
    LOAD(error_message, "PQerrorMessage");
    snprintf(conninfo, sizeof conninfo, "host=%s port=%s dbname=%s user=pqa_trust", host, port, db);

    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    awaitlet_task *t[N];
    double t0 = now();
    for (int i = 0; i < N; i++)
        t[i] = awaitlet_async_def(loop, session, NULL);
    int ok = 1;
    for (int i = 0; i < N; i++)
        ok &= t[i] && awaitlet_join(t[i]) != NULL;
    double wall = now() - t0;
    ev_loop_destroy(loop);
    int says = interposed();
    printf("%d sessions of pg_sleep(0.3) through a RTLD_DEEPBIND copy of libpq: %.3f s; "
           "pqawait_interposed() = %d\n", N, wall, says);
    if (!ok) {
        printf("FAIL: a session failed\n");
        return 1;
    }
    if (wall < 1.4) {
        printf("FAIL: the sessions overlapped, so the copy does reach the shim: the test is wrong\n");
        return 1;
    }
    if (says != 0) {
        printf("FAIL: pqawait_interposed() says 1, but this libpq's calls never reach the shim\n");
        return 1;
    }
    printf("ok\n");
    return 0;
}
