/*
 * fault.c -- bystanders, flags and bounds shared by the fault tests (see
 * fault.h).
 */
#include "fault.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

struct bystander {
    pqa_bystanders *b;
    int idx;
};

static struct bystander args[PQA_BYSTANDERS_MAX * 4];
static int nargs;

static void note_wrong(pqa_bystanders *b, const char *fmt, const char *detail)
{
    if (!b->wrong++)
        snprintf(b->err, sizeof b->err, fmt, detail);
}

static void *bystander_task(void *arg)
{
    struct bystander *a = arg;
    pqa_bystanders *b = a->b;
    char *ci = pqa_conninfo(PQA_TCP, NULL);
    PGconn *c = PQconnectdb(ci);
    free(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        note_wrong(b, "bystander connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    for (unsigned long k = 0; !b->stop; k++) {
        char token[64];
        snprintf(token, sizeof token, "bystander-%d-%lu", a->idx, k);
        const char *params[1] = {token};
        double t0 = pqa_now();
        PGresult *r = PQexecParams(c, "select $1::text || '!'", 1, NULL, params, NULL, NULL, 0);
        double lat = pqa_now() - t0;
        char want[80];
        snprintf(want, sizeof want, "%s!", token);
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            note_wrong(b, "bystander query: %s", PQerrorMessage(c));
        else if (strcmp(PQgetvalue(r, 0, 0), want) != 0)
            note_wrong(b, "bystander got another value: %s", PQgetvalue(r, 0, 0));
        else
            b->queries++;
        PQclear(r);
        if (lat > b->max_latency)
            b->max_latency = lat;
        if (awaitlet_sleep(0.005) < 0)
            break;
    }
    PQfinish(c);
    return NULL;
}

void pqa_bystanders_start(pqa_bystanders *b, struct ev_loop *loop, int n)
{
    ck_assert_int_le(n, PQA_BYSTANDERS_MAX);
    memset(b, 0, sizeof *b);
    b->n = n;
    for (int i = 0; i < n; i++) {
        ck_assert_int_lt(nargs, (int)(sizeof args / sizeof args[0]));
        struct bystander *a = &args[nargs++];
        a->b = b;
        a->idx = i;
        b->task[i] = awaitlet_async_def(loop, bystander_task, a);
        ck_assert_msg(b->task[i] != NULL, "starting a bystander: %s", strerror(errno));
    }
}

void pqa_bystanders_stop(pqa_bystanders *b)
{
    b->stop = 1;
    for (int i = 0; i < b->n; i++) {
        ck_assert_int_eq(awaitlet_join_ex(b->task[i], NULL), 0);
        b->task[i] = NULL;
    }
}

void pqa_bystanders_check(const pqa_bystanders *b, unsigned long min_queries, double max_latency)
{
    printf("bystanders: %lu queries right, %lu wrong, longest %.1f ms\n", b->queries, b->wrong,
           b->max_latency * 1e3);
    ck_assert_msg(b->wrong == 0, "%lu bystander queries failed or were misrouted; first: %s", b->wrong,
                  b->err);
    ck_assert_msg(b->queries >= min_queries, "bystanders answered only %lu queries (>= %lu expected)",
                  b->queries, min_queries);
    ck_assert_msg(b->max_latency < max_latency, "a bystander query took %.1f ms (bound %.0f ms)",
                  b->max_latency * 1e3, max_latency * 1e3);
}

int pqa_wait_flag(const int *flag, double timeout)
{
    double end = pqa_now() + timeout;
    while (!*(volatile const int *)flag) {
        if (pqa_now() > end || awaitlet_sleep(0.005) < 0)
            return -1;
    }
    return 0;
}

double pqa_bound(double seconds)
{
    return pqa_slow_build() ? 3 * seconds : seconds;
}

void pqa_assert_names(const char *what, const char *msg, const char *const *needles)
{
    for (const char *const *n = needles; *n; n++)
        if (strstr(msg, *n))
            return;
    ck_abort_msg("%s: the message does not name the cause (expected \"%s\"...): %s", what, needles[0],
                 msg);
}

void pqa_drain_loop(struct ev_loop *loop, double timeout)
{
    double end = pqa_now() + timeout;
    while (awaitlet_loop_tasks(loop) > 0) {
        ck_assert_msg(pqa_now() < end, "%u tasks still running after %.0f s", awaitlet_loop_tasks(loop),
                      timeout);
        ev_run(loop, EVRUN_ONCE);
    }
}

const char *pqa_line(const char *msg)
{
    static char buf[4][200];
    static int next;
    char *b = buf[next++ & 3];
    if (!msg)
        msg = "(null)";
    size_t n = strcspn(msg, "\n");
    snprintf(b, sizeof buf[0], "%.*s", (int)(n < sizeof buf[0] ? n : sizeof buf[0] - 1), msg);
    return b;
}

void pqa_grow_fd_table(int n)
{
    int hi = dup2(2, n);
    ck_assert_msg(hi == n, "dup2(2, %d): %s (raise the open files limit)", n, strerror(errno));
    close(hi);
}
