/*
 * test_differential.c -- the shim must be invisible: every scenario gives
 * byte-identical observations outside a task (libpq's own blocking path)
 * and inside a task (the cooperative path).
 *
 * Each scenario (diff_*.c) is one Check loop-test iteration, so a failure
 * names it and one crash doesn't hide the rest.  Both runs use a fresh
 * connection of the scenario's kind, opened by the driver in the same mode
 * as the scenario itself (so PQconnectdb is compared too), and share the
 * extra servers and large-object OIDs of pqa_diff.  Inside the task, the
 * driver also checks the loop really turned while the scenario ran (a
 * scenario that did I/O without ever suspending would mean the shim was
 * bypassed).
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scenarios.h"
#include "server2.h"

static const struct pqa_scenario *all[256];
static pqa_server2 *extra[2]; /* [0] frozen: black hole, [1] smart shutdown: rejecter */
static int n_all;

static void collect(const struct pqa_scenario *table)
{
    for (; table->name; table++)
        all[n_all++] = table;
}

static const char *kind_name(int kind)
{
    static const char *names[] = {"unix", "tcp", "tcp-name", "ssl", "scram", "scram-ssl"};
    return kind < 0 ? "self" : names[kind];
}

struct run {
    const struct pqa_scenario *sc;
    struct record rec;
};

static void run_scenario(struct run *r)
{
    PGconn *conn = NULL;
    rec_printf(&r->rec, "== %s (%s)\n", r->sc->name, kind_name(r->sc->kind));
    if (r->sc->kind != PQA_SELF) {
        char *ci = pqa_conninfo((pqa_kind)r->sc->kind, NULL);
        conn = PQconnectdb(ci);
        free(ci);
        rec_conn(&r->rec, "driver connect", conn);
        ck_assert_msg(PQstatus(conn) == CONNECTION_OK, "%s: driver connect failed: %s", r->sc->name,
                      PQerrorMessage(conn));
    }
    r->sc->fn(conn, &r->rec);
    if (conn) {
        rec_conn(&r->rec, "driver end", conn);
        PQfinish(conn);
    }
}

static void *scenario_task(void *arg)
{
    run_scenario(arg);
    return arg;
}

static unsigned long loop_turns;

static void count_turn(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    loop_turns++;
}

START_TEST(test_scenario)
{
    const struct pqa_scenario *sc = all[_i];
    const char *only = getenv("PQAWAIT_DIFF_ONLY"); /* debugging: one scenario */
    if (only && *only && strcmp(only, sc->name) != 0)
        return;
    /* the extra servers still frozen / rejecting (checked again at the end) */
    pqa_server2_check(extra[0]);
    pqa_server2_check(extra[1]);
    /* explicit large-object OIDs, per test process (tests may run in parallel) */
    pqa_diff.lo_base = 3000000000u + (Oid)(getpid() % 50000) * 16u;

    struct run outside = {.sc = sc}, inside = {.sc = sc};
    rec_init(&outside.rec);
    rec_init(&inside.rec);

    double t0 = pqa_now();
    run_scenario(&outside);
    double t1 = pqa_now();

    struct ev_loop *loop = pqa_loop_new();
    ev_prepare turns;
    ev_prepare_init(&turns, count_turn);
    ev_prepare_start(loop, &turns);
    ev_unref(loop); /* the counter must not keep the loop alive */
    loop_turns = 0;
    awaitlet_task *t = awaitlet_async_def(loop, scenario_task, &inside);
    ck_assert_msg(t != NULL, "awaitlet_async_def: %s", strerror(errno));
    errno = 0;
    ck_assert_msg(awaitlet_join(t) == &inside, "awaitlet_join: %s", strerror(errno));
    ev_ref(loop);
    ev_prepare_stop(loop, &turns);
    ev_loop_destroy(loop);
    double t2 = pqa_now();

    printf("%-32s outside %6.3fs inside %6.3fs  %zu bytes recorded, %lu loop turns\n", sc->name,
           t1 - t0, t2 - t1, outside.rec.len, loop_turns);
    if (getenv("PQAWAIT_DIFF_DUMP"))
        printf("%s", outside.rec.buf);
    fflush(stdout);

    char *why = rec_describe_diff(&outside.rec, &inside.rec);
    ck_assert_msg(rec_diff(&outside.rec, &inside.rec) == (size_t)-1, "%s: %s", sc->name, why);
    free(why);
    /* every scenario talks to a server, so the task must have suspended */
    ck_assert_msg(loop_turns > 0, "%s: the task never let the loop turn", sc->name);

    rec_free(&outside.rec);
    rec_free(&inside.rec);
    pqa_server2_check(extra[0]);
    pqa_server2_check(extra[1]);
}
END_TEST

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

int main(void)
{
    pqa_env_init();
    collect(pqa_scen_connect);
    collect(pqa_scen_exec);
    collect(pqa_scen_async);
    collect(pqa_scen_copy);
    collect(pqa_scen_lo);
    /* real servers in the states a few connect/ping scenarios need; once
     * per program (a start costs ~1 s), before Check forks the tests */
    pqa_server2_start(extra, 2);
    pqa_server2_freeze(extra[0]);
    pqa_server2_reject(extra[1]);
    pqa_diff.blackhole_port = pqa_server2_port(extra[0]);
    pqa_diff.rejecter_port = pqa_server2_port(extra[1]);

    Suite *s = suite_create("shim-differential");
    TCase *tc = tcase_create("interposed");
    tcase_add_test(tc, test_interposed);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);
    tc = tcase_create("scenarios");
    tcase_add_loop_test(tc, test_scenario, 0, n_all);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    int rc = pqa_run_suite(s);
    pqa_server2_stop_all();
    return rc;
}
