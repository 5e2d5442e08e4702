/*
 * diff_copy.c -- differential scenarios for COPY, both directions and both
 * APIs: PQputCopyData/PQputCopyEnd (with and without an error message),
 * PQgetCopyData(async=0), and the old PQgetline/PQputline/PQputnbytes/
 * PQendcopy, plus errors raised mid-COPY and COPY big enough to make every
 * call wait several times.
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
}

static void copy_out_rows(PGconn *c, struct record *out, const char *sql, int record_rows)
{
    rec_take(out, "copy out", PQexec(c, sql));
    char *buf;
    int n, rows = 0;
    unsigned long bytes = 0, sum = 0;
    while ((n = PQgetCopyData(c, &buf, 0)) > 0) {
        if (record_rows) {
            rec_printf(out, "  row:");
            rec_bytes(out, buf, (size_t)n);
            rec_printf(out, "\n");
        }
        for (int i = 0; i < n; i++)
            sum = sum * 31 + (unsigned char)buf[i];
        rows++;
        bytes += (unsigned long)n;
        PQfreemem(buf);
    }
    rec_printf(out, "  getcopydata end -> %d rows=%d bytes=%lu hash=%lx\n", n, rows, bytes, sum);
    if (n == -2)
        rec_conn(out, "copy out failed", c);
    drain(c, out, "copy out end");
}

static void s_copy_out(PGconn *c, struct record *out)
{
    copy_out_rows(c, out, "copy (select i, 'r' || i, null from generate_series(1, 20) i) to stdout", 1);
    copy_out_rows(c, out, "copy (select i, i * 2.5 from generate_series(1, 5) i) to stdout (format csv, header)", 1);
    copy_out_rows(c, out, "copy (select i, 'b' from generate_series(1, 3) i) to stdout (format binary)", 1);
    /* an error after some rows were sent */
    copy_out_rows(c, out, "copy (select 10 / (5 - i) from generate_series(1, 10) i) to stdout", 1);
    /* big: many waits inside PQgetCopyData */
    copy_out_rows(c, out, "copy (select i, repeat(md5(i::text), 40) from generate_series(1, 4000) i) to stdout", 0);
    rec_take(out, "after", PQexec(c, "select 'after copy out'"));
}

static void s_copy_in(PGconn *c, struct record *out)
{
    rec_take(out, "create", PQexec(c, "create temp table ci (a int, b text)"));
    rec_take(out, "copy in", PQexec(c, "copy ci from stdin"));
    char row[2200];
    for (int i = 0; i < 3000; i++) {
        int n = snprintf(row, sizeof row, "%d\t", i);
        memset(row + n, 'a' + i % 26, (size_t)(i % 2000));
        row[n + i % 2000] = '\n';
        int rc = PQputCopyData(c, row, n + i % 2000 + 1);
        if (rc != 1) {
            rec_printf(out, "putcopydata %d -> %d\n", i, rc);
            break;
        }
    }
    rec_printf(out, "putcopyend -> %d\n", PQputCopyEnd(c, NULL));
    drain(c, out, "end");
    rec_take(out, "check", PQexec(c, "select count(*), sum(length(b)), sum(a) from ci"));

    /* the client aborts the COPY with a message */
    rec_take(out, "copy in 2", PQexec(c, "copy ci from stdin"));
    rec_printf(out, "put -> %d\n", PQputCopyData(c, "1\tx\n", 4));
    rec_printf(out, "putcopyend(msg) -> %d\n", PQputCopyEnd(c, "client changed its mind"));
    drain(c, out, "aborted");

    /* bad data: the server fails the COPY */
    rec_take(out, "copy in 3", PQexec(c, "copy ci from stdin"));
    rec_printf(out, "put -> %d\n", PQputCopyData(c, "1\tok\nnot-a-number\tx\n", 20));
    rec_printf(out, "putcopyend -> %d\n", PQputCopyEnd(c, NULL));
    drain(c, out, "bad data");
    rec_conn(out, "after bad data", c);

    /* inside a transaction, csv */
    rec_take(out, "begin", PQexec(c, "begin"));
    rec_take(out, "copy csv", PQexec(c, "copy ci from stdin (format csv)"));
    rec_printf(out, "put -> %d\n", PQputCopyData(c, "7,\"quoted, comma\"\n8,\n", 22));
    rec_printf(out, "putcopyend -> %d\n", PQputCopyEnd(c, NULL));
    drain(c, out, "csv");
    rec_take(out, "commit", PQexec(c, "commit"));
    rec_take(out, "rows", PQexec(c, "select a, b from ci where a in (7, 8) order by a"));
}

static void s_copy_old_api(PGconn *c, struct record *out)
{
    rec_take(out, "create", PQexec(c, "create temp table old (a int, b text)"));
    rec_take(out, "copy in", PQexec(c, "copy old from stdin"));
    rec_printf(out, "putline -> %d\n", PQputline(c, "1\tone\n"));
    rec_printf(out, "putnbytes -> %d\n", PQputnbytes(c, "2\ttwo\n3\tthree\nXX", 14));
    char line[1100];
    for (int i = 4; i < 1000; i++) {
        int n = snprintf(line, sizeof line, "%d\t", i);
        memset(line + n, 'x', 1000);
        strcpy(line + n + 1000, "\n");
        if (PQputline(c, line) != 0) {
            rec_printf(out, "putline %d failed\n", i);
            break;
        }
    }
    rec_printf(out, "putline end -> %d\n", PQputline(c, "\\.\n"));
    rec_printf(out, "endcopy -> %d\n", PQendcopy(c));
    rec_conn(out, "after endcopy", c);
    rec_take(out, "check", PQexec(c, "select count(*), sum(a) from old"));

    rec_take(out, "copy out", PQexec(c, "copy (select a, b from old where a < 4 order by a) to stdout"));
    char small[8];
    for (int guard = 0; guard < 1000; guard++) {
        int rc = PQgetline(c, small, sizeof small); /* 0: whole line, 1: partial */
        rec_printf(out, "  getline -> %d '%s'\n", rc, small);
        if (rc == EOF || strcmp(small, "\\.") == 0)
            break;
    }
    rec_printf(out, "endcopy -> %d\n", PQendcopy(c));

    rec_take(out, "copy out big", PQexec(c, "copy (select a, b from old order by a) to stdout"));
    unsigned long lines = 0, bytes = 0;
    for (;;) {
        int rc = PQgetline(c, line, sizeof line);
        if (rc == EOF || (rc == 0 && strcmp(line, "\\.") == 0))
            break;
        lines += rc == 0;
        bytes += strlen(line);
    }
    rec_printf(out, "  lines=%lu bytes=%lu\n", lines, bytes);
    rec_printf(out, "endcopy -> %d\n", PQendcopy(c));

    /* a server error during the old COPY OUT */
    rec_take(out, "copy out err", PQexec(c, "copy (select 1 / (3 - a) from old order by a) to stdout"));
    for (int guard = 0; guard < 100; guard++) {
        int rc = PQgetline(c, line, sizeof line);
        rec_printf(out, "  getline -> %d '%s'\n", rc, rc == EOF ? "" : line);
        if (rc == EOF || strcmp(line, "\\.") == 0)
            break;
    }
    rec_printf(out, "endcopy -> %d\n", PQendcopy(c));
    rec_conn(out, "after error", c);
}

static void s_copy_roundtrip_big(PGconn *c, struct record *out)
{
    rec_take(out, "create", PQexec(c, "create temp table big (a int, b text)"));
    rec_take(out, "copy in", PQexec(c, "copy big from stdin"));
    char row[9000];
    for (int i = 0; i < 600; i++) {
        int n = snprintf(row, sizeof row, "%d\t", i);
        memset(row + n, 'A' + i % 26, 8500); /* rows over 8 KB: SSL records span reads */
        row[n + 8500] = '\n';
        if (PQputCopyData(c, row, n + 8501) != 1)
            break;
    }
    rec_printf(out, "putcopyend -> %d\n", PQputCopyEnd(c, NULL));
    drain(c, out, "end");
    copy_out_rows(c, out, "copy big to stdout", 0);
}

const struct pqa_scenario pqa_scen_copy[] = {
    {"copy_out", s_copy_out, PQA_UNIX},
    {"copy_out_ssl", s_copy_out, PQA_SSL},
    {"copy_in", s_copy_in, PQA_UNIX},
    {"copy_in_scram_ssl", s_copy_in, PQA_SCRAM_SSL},
    {"copy_old_api", s_copy_old_api, PQA_UNIX},
    {"copy_old_api_tcp", s_copy_old_api, PQA_TCP},
    {"copy_big", s_copy_roundtrip_big, PQA_TCP},
    {"copy_big_ssl", s_copy_roundtrip_big, PQA_SSL},
    {NULL, NULL, 0},
};
