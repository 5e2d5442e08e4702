/*
 * diff_async.c -- differential scenarios for the send/receive half of the
 * API: PQsendQuery & co. with PQgetResult, PQflush, PQsetnonblocking, and
 * pipeline mode (PQenterPipelineMode, PQpipelineSync, PQsendFlushRequest,
 * errors aborting the rest of a pipeline, PQexitPipelineMode).
 *
 * PQgetResult is where the shim waits; PQsend* wait only while flushing a
 * blocking connection's output, so big queries are included to make the
 * send side actually wait.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scenarios.h"

static void drain(PGconn *c, struct record *out, const char *label)
{
    PGresult *r;
    while ((r = PQgetResult(c)) != NULL)
        rec_take(out, label, r);
    rec_printf(out, "[%s] end\n", label);
}

/* a query text of about `size` bytes */
static char *big_query(size_t size)
{
    static const char head[] = "select length('";
    char *q = malloc(size + sizeof head + 3);
    if (q == NULL)
        abort();
    memcpy(q, head, sizeof head - 1);
    memset(q + sizeof head - 1, 'q', size);
    memcpy(q + sizeof head - 1 + size, "')", 3);
    return q;
}

static void s_send_query(PGconn *c, struct record *out)
{
    rec_printf(out, "send -> %d\n", PQsendQuery(c, "select 1; select 'two', 2; select 1 / 0; select 4"));
    rec_printf(out, "second send -> %d\n", PQsendQuery(c, "select 5"));
    rec_conn(out, "refused", c);
    rec_printf(out, "flush -> %d\n", PQflush(c));
    drain(c, out, "multi");
    rec_printf(out, "getresult idle -> %p\n", (void *)PQgetResult(c));

    char *q = big_query(300000);
    rec_printf(out, "send big -> %d\n", PQsendQuery(c, q));
    free(q);
    drain(c, out, "big");

    /* single-row mode: one PQgetResult per row, each a wait of its own */
    rec_printf(out, "send rows -> %d\n",
               PQsendQuery(c, "select i, repeat('r', i * 100) from generate_series(1, 50) i"));
    rec_printf(out, "single row -> %d\n", PQsetSingleRowMode(c));
    drain(c, out, "single");

    Oid t[] = {23};
    const char *v[] = {"9"};
    rec_printf(out, "sendparams -> %d\n", PQsendQueryParams(c, "select $1::int * 9", 1, t, v, NULL, NULL, 0));
    drain(c, out, "params");
    rec_printf(out, "sendprepare -> %d\n", PQsendPrepare(c, "sp", "select $1::int - 1", 1, t));
    drain(c, out, "prepare");
    rec_printf(out, "sendqueryprepared -> %d\n", PQsendQueryPrepared(c, "sp", 1, v, NULL, NULL, 1));
    drain(c, out, "prepared");
    rec_printf(out, "senddescribeprepared -> %d\n", PQsendDescribePrepared(c, "sp"));
    drain(c, out, "describe");
    PQclear(PQexec(c, "begin"));
    PQclear(PQexec(c, "declare cc cursor for select 1 as one"));
    rec_printf(out, "senddescribeportal -> %d\n", PQsendDescribePortal(c, "cc"));
    drain(c, out, "portal");
    rec_printf(out, "senddescribeportal missing -> %d\n", PQsendDescribePortal(c, "nope"));
    drain(c, out, "portal missing");
    PQclear(PQexec(c, "rollback"));
    rec_conn(out, "end", c);
}

static void s_nonblocking(PGconn *c, struct record *out)
{
    rec_printf(out, "setnonblocking -> %d is %d\n", PQsetnonblocking(c, 1), PQisnonblocking(c));
    char *q = big_query(2000000);
    rec_printf(out, "send big -> %d\n", PQsendQuery(c, q));
    free(q);
    /* flushing a nonblocking conn may take several calls: don't record how many */
    int f, guard = 0;
    while ((f = PQflush(c)) == 1 && guard++ < 1000000)
        if (PQconsumeInput(c) == 0)
            break;
    rec_printf(out, "flushed -> %d nonblocking %d\n", f, PQisnonblocking(c));
    drain(c, out, "big");
    rec_take(out, "exec", PQexec(c, "select 'exec in nonblocking mode'"));
    rec_conn(out, "still nonblocking", c);
    rec_take(out, "copy", PQexec(c, "create temp table nb (a text)"));
    rec_take(out, "copy in", PQexec(c, "copy nb from stdin"));
    for (int i = 0; i < 2000; i++) {
        char row[600];
        memset(row, 'a' + i % 26, 500);
        sprintf(row + 500, "%d\n", i);
        while (PQputCopyData(c, row, (int)strlen(row)) == 0)
            PQflush(c);
    }
    while (PQputCopyEnd(c, NULL) == 0)
        ;
    while (PQflush(c) == 1)
        ;
    drain(c, out, "copy end");
    rec_take(out, "check", PQexec(c, "select count(*), sum(length(a)) from nb"));
    rec_printf(out, "setnonblocking 0 -> %d is %d\n", PQsetnonblocking(c, 0), PQisnonblocking(c));
}

static void pipeline_results(PGconn *c, struct record *out, int syncs)
{
    /* results arrive per query, each followed by NULL; a sync ends a batch.
     * Bounded: a lost sync must fail the comparison, not hang the test. */
    for (int nulls = 0; syncs > 0 && nulls < 100;) {
        PGresult *r = PQgetResult(c);
        if (r == NULL) {
            rec_printf(out, "  (null)\n");
            nulls++;
            continue;
        }
        nulls = 0;
        if (PQresultStatus(r) == PGRES_PIPELINE_SYNC)
            syncs--;
        rec_take(out, "pipe", r);
    }
    if (syncs > 0)
        rec_printf(out, "  missing %d sync(s)\n", syncs);
}

static void s_pipeline(PGconn *c, struct record *out)
{
    rec_printf(out, "enter -> %d status %d\n", PQenterPipelineMode(c), PQpipelineStatus(c));
    rec_take(out, "exec refused", PQexec(c, "select 1"));
    rec_printf(out, "sendquery refused -> %d\n", PQsendQuery(c, "select 1"));
    rec_conn(out, "refused", c);
    const char *v1[] = {"1"}, *v2[] = {"2"}, *v3[] = {"3"};
    rec_printf(out, "q1 -> %d\n", PQsendQueryParams(c, "select $1::int + 10", 1, NULL, v1, NULL, NULL, 0));
    rec_printf(out, "q2 -> %d\n", PQsendQueryParams(c, "select $1::int, 'two'", 1, NULL, v2, NULL, NULL, 0));
    rec_printf(out, "q3 -> %d\n", PQsendQueryParams(c, "select $1::int * 100", 1, NULL, v3, NULL, NULL, 1));
    rec_printf(out, "sync -> %d\n", PQpipelineSync(c));
    pipeline_results(c, out, 1);
    rec_printf(out, "status %d\n", PQpipelineStatus(c));

    /* an error aborts the rest of the batch up to the sync */
    rec_printf(out, "e1 -> %d\n", PQsendQueryParams(c, "select 1", 0, NULL, NULL, NULL, NULL, 0));
    rec_printf(out, "e2 -> %d\n", PQsendQueryParams(c, "select 1 / 0", 0, NULL, NULL, NULL, NULL, 0));
    rec_printf(out, "e3 -> %d\n", PQsendQueryParams(c, "select 3", 0, NULL, NULL, NULL, NULL, 0));
    rec_printf(out, "sync -> %d\n", PQpipelineSync(c));
    rec_printf(out, "after -> %d\n", PQsendQueryParams(c, "select 'after sync'", 0, NULL, NULL, NULL, NULL, 0));
    rec_printf(out, "sync -> %d\n", PQpipelineSync(c));
    pipeline_results(c, out, 2);

    /* prepared statements and a flush request instead of a sync */
    Oid t[] = {23};
    rec_printf(out, "prep -> %d\n", PQsendPrepare(c, "pp", "select $1::int * 2", 1, t));
    rec_printf(out, "exec -> %d\n", PQsendQueryPrepared(c, "pp", 1, v3, NULL, NULL, 0));
    rec_printf(out, "desc -> %d\n", PQsendDescribePrepared(c, "pp"));
    rec_printf(out, "flushreq -> %d\n", PQsendFlushRequest(c));
    rec_printf(out, "flush -> %d\n", PQflush(c));
    for (int i = 0; i < 3; i++) {
        rec_take(out, "flushed", PQgetResult(c));
        rec_take(out, "sep", PQgetResult(c));
    }
    rec_printf(out, "sync -> %d\n", PQpipelineSync(c));
    pipeline_results(c, out, 1);
    rec_printf(out, "pending -> %d\n", PQsendQueryParams(c, "select 'pending'", 0, NULL, NULL, NULL, NULL, 0));
    rec_printf(out, "exit with pending -> %d\n", PQexitPipelineMode(c));
    rec_conn(out, "exit refused", c);
    rec_printf(out, "sync -> %d\n", PQpipelineSync(c));
    pipeline_results(c, out, 1);

    /* a large batch: the send side must flush while results pile up */
    for (int i = 0; i < 300; i++) {
        char sql[64];
        snprintf(sql, sizeof sql, "select %d, repeat('p', 1000)", i);
        if (!PQsendQueryParams(c, sql, 0, NULL, NULL, NULL, NULL, 0)) {
            rec_conn(out, "big batch send failed", c);
            break;
        }
    }
    rec_printf(out, "big sync -> %d\n", PQpipelineSync(c));
    long sum = 0;
    int n = 0;
    for (int nulls = 0; nulls < 1000;) {
        PGresult *r = PQgetResult(c);
        if (r == NULL) {
            nulls++;
            continue;
        }
        nulls = 0;
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_TUPLES_OK) {
            sum += atol(PQgetvalue(r, 0, 0));
            n++;
        }
        PQclear(r);
        if (st == PGRES_PIPELINE_SYNC || st == PGRES_FATAL_ERROR)
            break;
    }
    rec_printf(out, "big batch: %d results sum %ld\n", n, sum);
    rec_printf(out, "exit -> %d status %d\n", PQexitPipelineMode(c), PQpipelineStatus(c));
    rec_take(out, "normal again", PQexec(c, "select 'normal'"));
}

static void s_pipeline_nonblocking(PGconn *c, struct record *out)
{
    PQsetnonblocking(c, 1);
    s_pipeline(c, out);
    rec_printf(out, "nonblocking %d\n", PQisnonblocking(c));
}

const struct pqa_scenario pqa_scen_async[] = {
    {"send_query", s_send_query, PQA_UNIX},
    {"send_query_ssl", s_send_query, PQA_SSL},
    {"nonblocking", s_nonblocking, PQA_UNIX},
    {"nonblocking_ssl", s_nonblocking, PQA_SCRAM_SSL},
    {"pipeline", s_pipeline, PQA_UNIX},
    {"pipeline_tcp", s_pipeline, PQA_TCP},
    {"pipeline_nonblocking", s_pipeline_nonblocking, PQA_UNIX},
    {NULL, NULL, 0},
};
