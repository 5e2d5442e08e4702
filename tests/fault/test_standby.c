/*
 * test_standby.c -- target_session_attrs against a real primary and a real
 * streaming standby (issue 9, item 2: "read-write, read-only, primary,
 * standby, prefer-standby pick the right server, also after the standby
 * is promoted").
 *
 * The harness starts a private primary and a standby made from it with
 * pg_basebackup -R (tests/pg/pgserver standby), streaming and in hot
 * standby.  Each attribute is tried with the host list in both orders and
 * with each server alone, every attempt a task of its own, all at once on
 * one loop beside the stall meter.  Libpq itself asks each server what it
 * is (SHOW transaction_read_only, pg_is_in_recovery()) through the shim's
 * cooperative waits.  Checked: the server each session reached (by
 * PQport and by asking it: inet_server_port(), pg_is_in_recovery()), the
 * failures and their messages, equality with plain libpq outside tasks,
 * and no loop stall.  Then the standby is promoted (pg_ctl promote) and
 * the same questions get the answers for two primaries.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fault.h"
#include "pqawait.h"
#include "server2.h"
#include "stall.h"

static pqa_server2 *primary, *standby;

static const char *const attrs[] = {"any", "read-write", "read-only", "primary", "standby", "prefer-standby"};
#define N_ATTRS 6
/* host lists: P = primary, S = standby */
static const char *const lists[] = {"P,S", "S,P", "P", "S"};
#define N_LISTS 4

/* Where each (attribute, list) must land: 'P', 'S', or 0 for a failure;
 * before and after the promotion (then both are primaries). */
static const char expect_before[N_ATTRS][N_LISTS + 1] = {
    /*               P,S  S,P  P    S  */
    [0] = "PSPS", /* any */
    [1] = "PPP\0", /* read-write */
    [2] = "SS\0S", /* read-only */
    [3] = "PPP\0", /* primary */
    [4] = "SS\0S", /* standby */
    [5] = "SSPS", /* prefer-standby */
};
static const char expect_after[N_ATTRS][N_LISTS + 1] = {
    [0] = "PSPS",
    [1] = "PSPS",
    [2] = "\0\0\0\0",
    [3] = "PSPS",
    [4] = "\0\0\0\0",
    [5] = "PSPS",
};
/* what a failure must name, per attribute */
static const char *const fail_names[N_ATTRS] = {
    NULL, "session is read-only", "session is not read-only", "server is in hot standby mode",
    "server is not in hot standby mode", NULL,
};

struct attempt {
    char conninfo[512];
    int ok[2];              /* 0: in a task, 1: plain libpq */
    char port[2][16];
    int server_port;        /* as the server says (task) */
    int in_recovery;
    char err[2][1024];
};

static struct attempt att[N_ATTRS][N_LISTS];

static int port_of(char c)
{
    return pqa_server2_port(c == 'P' ? primary : standby);
}

static void build(void)
{
    for (int a = 0; a < N_ATTRS; a++)
        for (int l = 0; l < N_LISTS; l++) {
            char hosts[64] = "", ports[64] = "";
            for (const char *p = lists[l]; *p; p++) {
                if (*p == ',') {
                    strcat(hosts, ",");
                    strcat(ports, ",");
                    continue;
                }
                char num[16];
                snprintf(num, sizeof num, "%d", port_of(*p));
                strcat(hosts, "127.0.0.1");
                strcat(ports, num);
            }
            memset(&att[a][l], 0, sizeof att[a][l]);
            snprintf(att[a][l].conninfo, sizeof att[a][l].conninfo,
                     "host=%s port=%s dbname=pqawait user=pqa_trust sslmode=disable gssencmode=disable "
                     "target_session_attrs=%s",
                     hosts, ports, attrs[a]);
        }
}

static void try_one(struct attempt *t, int k)
{
    PGconn *c = PQconnectdb(t->conninfo);
    t->ok[k] = PQstatus(c) == CONNECTION_OK;
    snprintf(t->port[k], sizeof t->port[k], "%s", t->ok[k] ? PQport(c) : "-");
    snprintf(t->err[k], sizeof t->err[k], "%s", PQerrorMessage(c));
    if (t->ok[k] && k == 0) {
        PGresult *r = PQexec(c, "select inet_server_port(), pg_is_in_recovery()");
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            t->server_port = atoi(PQgetvalue(r, 0, 0));
            t->in_recovery = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
        }
        PQclear(r);
    }
    PQfinish(c);
}

static void *attempt_task(void *arg)
{
    try_one(arg, 0);
    return NULL;
}

static void *plain_thread(void *arg)
{
    struct attempt *row = arg;
    for (int l = 0; l < N_LISTS; l++)
        try_one(&row[l], 1);
    return NULL;
}

static int recovering(pqa_server2 *s)
{
    char *ci = pqa_conninfo_port(pqa_server2_port(s), NULL);
    PGconn *c = PQconnectdb(ci);
    free(ci);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s", PQerrorMessage(c));
    PGresult *r = pqa_exec_ok(c, "select pg_is_in_recovery()", PGRES_TUPLES_OK);
    int rec = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    PQfinish(c);
    return rec;
}

static void run_attrs(const char expect[N_ATTRS][N_LISTS + 1], const char *when)
{
    build();
    pthread_t th[N_ATTRS];
    for (int a = 0; a < N_ATTRS; a++)
        ck_assert_int_eq(pthread_create(&th[a], NULL, plain_thread, att[a]), 0);
    for (int a = 0; a < N_ATTRS; a++)
        pthread_join(th[a], NULL);

    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    awaitlet_task *t[N_ATTRS][N_LISTS];
    double t0 = pqa_now();
    for (int a = 0; a < N_ATTRS; a++)
        for (int l = 0; l < N_LISTS; l++)
            ck_assert_ptr_nonnull(t[a][l] = awaitlet_async_def(loop, attempt_task, &att[a][l]));
    for (int a = 0; a < N_ATTRS; a++)
        for (int l = 0; l < N_LISTS; l++)
            ck_assert_int_eq(awaitlet_join_ex(t[a][l], NULL), 0);
    double all = pqa_now() - t0;
    pqa_stall_stop(&st);
    ck_assert_int_eq(awaitlet_loop_close(loop), 0);
    ev_loop_destroy(loop);

    printf("%s: primary on %d, standby on %d; %d attempts in %.3f s, stall %.1f ms\n", when,
           port_of('P'), port_of('S'), N_ATTRS * N_LISTS, all, st.max_gap * 1e3);
    for (int a = 0; a < N_ATTRS; a++) {
        printf("  %-15s", attrs[a]);
        for (int l = 0; l < N_LISTS; l++) {
            struct attempt *x = &att[a][l];
            char got = !x->ok[0] ? '-' : atoi(x->port[0]) == port_of('P') ? 'P' : 'S';
            printf(" %-3s->%c", lists[l], got);
        }
        printf("\n");
    }
    fflush(stdout);
    for (int a = 0; a < N_ATTRS; a++)
        for (int l = 0; l < N_LISTS; l++) {
            struct attempt *x = &att[a][l];
            char want = expect[a][l];
            ck_assert_msg(x->ok[0] == x->ok[1] && strcmp(x->port[0], x->port[1]) == 0 &&
                              strcmp(x->err[0], x->err[1]) == 0,
                          "%s %s [%s]: in a task %d %s %s; plain %d %s %s", when, attrs[a], lists[l], x->ok[0],
                          x->port[0], x->err[0], x->ok[1], x->port[1], x->err[1]);
            if (!want) {
                ck_assert_msg(!x->ok[0], "%s %s [%s]: connected to %s, should have failed", when, attrs[a],
                              lists[l], x->port[0]);
                const char *names[] = {fail_names[a], NULL};
                ck_assert_ptr_nonnull(fail_names[a]);
                pqa_assert_names(attrs[a], x->err[0], names);
                continue;
            }
            ck_assert_msg(x->ok[0], "%s %s [%s]: %s", when, attrs[a], lists[l], x->err[0]);
            ck_assert_msg(atoi(x->port[0]) == port_of(want), "%s %s [%s]: on port %s, not the %s", when,
                          attrs[a], lists[l], x->port[0], want == 'P' ? "primary" : "standby");
            /* the session really is there, and that server is what it says */
            ck_assert_int_eq(x->server_port, port_of(want));
            ck_assert_int_eq(x->in_recovery, expect == expect_before && want == 'S');
        }
    pqa_stall_assert(&st, "standby");
}

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

START_TEST(test_attrs_with_standby)
{
    ck_assert_msg(recovering(standby), "the standby is not in recovery (promoted already?)");
    ck_assert(!recovering(primary));
    run_attrs(expect_before, "primary + standby");
}
END_TEST

START_TEST(test_attrs_after_promotion)
{
    if (recovering(standby))
        pqa_server2_promote(standby);
    ck_assert(!recovering(standby));
    run_attrs(expect_after, "after promotion");
}
END_TEST

int main(void)
{
    pqa_env_init();
    pqa_server2_start(&primary, 1);
    standby = pqa_server2_standby(primary);
    Suite *s = suite_create("fault-standby");
    TCase *tc = tcase_create("standby");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_attrs_with_standby);
    tcase_add_test(tc, test_attrs_after_promotion);
    suite_add_tcase(s, tc);
    int rc = pqa_run_suite(s);
    pqa_server2_stop_all();
    return rc;
}
