/*
 * modes_prog.c -- does libpq cooperate in this process?  The program behind
 * the adoption-mode tests (tests/modes/meson.build).
 *
 * Five tasks each connect and run SELECT pg_sleep(0.3).  When libpq's calls
 * reach libpqawait (relinked, statically linked, or LD_PRELOADed) they
 * overlap: about 0.3 s in all.  When they don't, they run one after another:
 * 1.5 s.  `modes_prog coop` and `modes_prog block` assert one or the other,
 * so the same binary run without LD_PRELOAD is the control proving the test
 * can tell the two apart.
 */
#include <dlfcn.h>
#include <ev.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "awaitlet.h"

enum { N = 5 };
static char conninfo[512];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *session(void *arg)
{
    (void)arg;
    PGconn *c = PQconnectdb(conninfo);
    int ok = PQstatus(c) == CONNECTION_OK;
    if (ok) {
        PGresult *r = PQexec(c, "SELECT pg_sleep(0.3), 7");
        ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 1), "7") == 0;
        if (!ok)
            fprintf(stderr, "query: %s", PQerrorMessage(c));
        PQclear(r);
    } else {
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
    }
    PQfinish(c);
    return ok ? (void *)1 : NULL;
}

int main(int argc, char **argv)
{
    const char *host = getenv("PQAWAIT_TEST_HOST"), *port = getenv("PQAWAIT_TEST_PORT");
    const char *db = getenv("PQAWAIT_TEST_DB");
    if (argc != 2 || (strcmp(argv[1], "coop") && strcmp(argv[1], "block"))) {
        fprintf(stderr, "usage: modes_prog coop|block\n");
        return 2;
    }
    if (!host || !port || !db) {
        fprintf(stderr, "modes_prog: PQAWAIT_TEST_HOST/PORT/DB not set (run through tests/pg/with-pg)\n");
        return 1;
    }
    snprintf(conninfo, sizeof conninfo, "host=%s port=%s dbname=%s user=pqa_trust", host, port, db);
    int (*interposed)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "pqawait_interposed");

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

    int want_coop = strcmp(argv[1], "coop") == 0;
    int coop = wall < 1.0;
    printf("%d sessions of pg_sleep(0.3): %.3f s -> %s (wanted %s); pqawait_interposed %s\n", N, wall,
           coop ? "cooperative" : "blocking", argv[1],
           interposed ? (interposed() ? "= 1" : "= 0") : "absent");
    if (!ok) {
        printf("FAIL: a session failed\n");
        return 1;
    }
    if (want_coop != coop || (want_coop && (!interposed || !interposed()))) {
        printf("FAIL\n");
        return 1;
    }
    if (!want_coop && wall < 1.4) {
        printf("FAIL: blocking run too fast to be sequential\n");
        return 1;
    }
    printf("ok\n");
    return 0;
}
