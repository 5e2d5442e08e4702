/*
 * diff_lo.c -- differential scenarios for every lo_* call and their errors.
 *
 * Server-assigned OIDs differ between runs, so objects whose OID is recorded
 * are created with explicit OIDs (pqa_diff.lo_base + k, unlinked before and
 * after); for lo_creat/lo_import only "got an OID" is recorded, and the
 * object is identified by its contents.
 */
#include <fcntl.h>
#include <libpq/libpq-fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scenarios.h"

struct pqa_diff_ctx pqa_diff;

void pqa_lo_cleanup(PGconn *conn)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "select lo_unlink(oid) from pg_largeobject_metadata where oid between %u and %u",
             pqa_diff.lo_base, pqa_diff.lo_base + 15);
    PQclear(PQexec(conn, sql));
}

static void rec_lo_contents(PGconn *c, struct record *out, int fd, int max)
{
    char *buf = malloc((size_t)max);
    int n = lo_read(c, fd, buf, (size_t)max);
    rec_printf(out, "  lo_read -> %d: ", n);
    if (n > 0)
        rec_bytes(out, buf, (size_t)n);
    rec_printf(out, "\n");
    free(buf);
}

static void s_lo_basic(PGconn *c, struct record *out)
{
    Oid oid = pqa_diff.lo_base;
    pqa_lo_cleanup(c);
    rec_take(out, "begin", PQexec(c, "begin"));
    rec_printf(out, "lo_create(%u) -> %s\n", oid, lo_create(c, oid) == oid ? "same" : PQerrorMessage(c));
    rec_printf(out, "lo_create again -> %u err=%s", lo_create(c, oid), PQerrorMessage(c));
    rec_take(out, "rollback", PQexec(c, "rollback"));
    rec_take(out, "begin", PQexec(c, "begin"));
    rec_printf(out, "lo_create(%u) -> %s\n", oid, lo_create(c, oid) == oid ? "same" : PQerrorMessage(c));
    int fd = lo_open(c, oid, INV_READ | INV_WRITE);
    rec_printf(out, "lo_open -> %d\n", fd);
    rec_printf(out, "lo_write -> %d\n", lo_write(c, fd, "hello, large object", 19));
    rec_printf(out, "lo_tell -> %d\n", lo_tell(c, fd));
    rec_printf(out, "lo_lseek -> %d\n", lo_lseek(c, fd, 7, SEEK_SET));
    rec_lo_contents(c, out, fd, 100);
    rec_printf(out, "lo_lseek64 -> %lld\n", (long long)lo_lseek64(c, fd, (pg_int64)5000000000LL, SEEK_SET));
    rec_printf(out, "lo_write far -> %d\n", lo_write(c, fd, "far", 3));
    rec_printf(out, "lo_tell64 -> %lld\n", (long long)lo_tell64(c, fd));
    rec_printf(out, "lo_tell (too big) -> %d err=%s", lo_tell(c, fd), PQerrorMessage(c));
    rec_printf(out, "lo_lseek end -> %lld\n", (long long)lo_lseek64(c, fd, -2, SEEK_END));
    rec_lo_contents(c, out, fd, 10);
    rec_printf(out, "lo_truncate64 -> %d\n", lo_truncate64(c, fd, (pg_int64)4000000000LL));
    rec_printf(out, "lo_lseek64 end -> %lld\n", (long long)lo_lseek64(c, fd, 0, SEEK_END));
    rec_printf(out, "lo_truncate -> %d\n", lo_truncate(c, fd, 12));
    rec_printf(out, "lo_lseek start -> %d\n", lo_lseek(c, fd, 0, SEEK_SET));
    rec_lo_contents(c, out, fd, 100);
    rec_printf(out, "lo_lseek cur -> %d\n", lo_lseek(c, fd, -5, SEEK_CUR));
    rec_lo_contents(c, out, fd, 100);
    rec_printf(out, "lo_close -> %d\n", lo_close(c, fd));
    rec_take(out, "commit", PQexec(c, "commit"));

    /* read-only open, outside and inside a transaction */
    rec_printf(out, "lo_open autocommit -> %d\n", lo_open(c, oid, INV_READ));
    rec_conn(out, "autocommit", c);
    rec_take(out, "begin", PQexec(c, "begin"));
    fd = lo_open(c, oid, INV_READ);
    rec_printf(out, "lo_open ro -> %d\n", fd);
    rec_lo_contents(c, out, fd, 100);
    rec_printf(out, "lo_write ro -> %d err=%s", lo_write(c, fd, "x", 1), PQerrorMessage(c));
    rec_take(out, "rollback", PQexec(c, "rollback"));
    rec_printf(out, "lo_unlink -> %d\n", lo_unlink(c, oid));
    rec_printf(out, "lo_unlink again -> %d err=%s", lo_unlink(c, oid), PQerrorMessage(c));
}

static void s_lo_creat(PGconn *c, struct record *out)
{
    rec_take(out, "begin", PQexec(c, "begin"));
    Oid a = lo_creat(c, INV_READ | INV_WRITE);
    Oid b = lo_create(c, InvalidOid);
    rec_printf(out, "lo_creat -> %s, lo_create(0) -> %s, distinct %d\n", a ? "oid" : "0",
               b ? "oid" : "0", a != b);
    int fd = lo_open(c, a, INV_WRITE | INV_READ);
    char data[20000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (char)(i * 7);
    rec_printf(out, "lo_write big -> %d\n", lo_write(c, fd, data, sizeof data));
    rec_printf(out, "lo_lseek -> %d\n", lo_lseek(c, fd, 19990, SEEK_SET));
    rec_lo_contents(c, out, fd, 100);
    rec_printf(out, "lo_close -> %d\n", lo_close(c, fd));
    rec_printf(out, "unlink a -> %d b -> %d\n", lo_unlink(c, a), lo_unlink(c, b));
    rec_take(out, "commit", PQexec(c, "commit"));
}

static void s_lo_errors(PGconn *c, struct record *out)
{
    Oid missing = pqa_diff.lo_base + 9;
    pqa_lo_cleanup(c);
    rec_take(out, "begin", PQexec(c, "begin"));
    rec_printf(out, "lo_open missing -> %d err=%s", lo_open(c, missing, INV_READ), PQerrorMessage(c));
    rec_take(out, "rollback", PQexec(c, "rollback"));
    rec_take(out, "begin", PQexec(c, "begin"));
    char buf[16];
    rec_printf(out, "lo_read bad fd -> %d err=%s", lo_read(c, 77, buf, sizeof buf), PQerrorMessage(c));
    rec_take(out, "rollback", PQexec(c, "rollback"));
    rec_printf(out, "lo_write bad fd -> %d err=%s", lo_write(c, 77, "x", 1), PQerrorMessage(c));
    rec_printf(out, "lo_lseek bad fd -> %d err=%s", lo_lseek(c, 77, 0, SEEK_SET), PQerrorMessage(c));
    rec_printf(out, "lo_lseek64 bad fd -> %lld err=%s", (long long)lo_lseek64(c, 77, 0, SEEK_SET),
               PQerrorMessage(c));
    rec_printf(out, "lo_tell bad fd -> %d err=%s", lo_tell(c, 77), PQerrorMessage(c));
    rec_printf(out, "lo_tell64 bad fd -> %lld err=%s", (long long)lo_tell64(c, 77), PQerrorMessage(c));
    rec_printf(out, "lo_truncate bad fd -> %d err=%s", lo_truncate(c, 77, 0), PQerrorMessage(c));
    rec_printf(out, "lo_truncate64 bad fd -> %d err=%s", lo_truncate64(c, 77, 0), PQerrorMessage(c));
    rec_printf(out, "lo_close bad fd -> %d err=%s", lo_close(c, 77), PQerrorMessage(c));
    rec_printf(out, "lo_unlink missing -> %d err=%s", lo_unlink(c, missing), PQerrorMessage(c));
    rec_printf(out, "lo_import missing -> %u err=%s", lo_import(c, "/nonexistent/pqa-missing-file"),
               PQerrorMessage(c));
    rec_printf(out, "lo_import_with_oid missing -> %u err=%s",
               lo_import_with_oid(c, "/nonexistent/pqa-missing-file", missing), PQerrorMessage(c));
    rec_printf(out, "lo_export missing oid -> %d err=%s", lo_export(c, missing, "/tmp/pqa-never-written"),
               PQerrorMessage(c));
    rec_conn(out, "end", c);
}

static void s_lo_import_export(PGconn *c, struct record *out)
{
    Oid fixed = pqa_diff.lo_base + 1;
    pqa_lo_cleanup(c);
    char *src = pqa_temp_file(300000, 7);
    char *dst = pqa_temp_file(0, 0);
    size_t srclen, dstlen;
    char *srcdata = pqa_read_file(src, &srclen);

    /* libpq's lo_import/lo_export need a transaction block (psql adds one) */
    rec_take(out, "autocommit import", PQexec(c, "select 1"));
    Oid none = lo_import(c, src);
    rec_printf(out, "lo_import outside a transaction -> %s err=%s", none ? "oid" : "0",
               none ? "\n" : PQerrorMessage(c));
    rec_take(out, "begin", PQexec(c, "begin"));
    Oid got = lo_import(c, src);
    rec_printf(out, "lo_import -> %s err=%s", got ? "oid" : "0", got ? "\n" : PQerrorMessage(c));
    rec_printf(out, "lo_export -> %d\n", lo_export(c, got, dst));
    char *dstdata = pqa_read_file(dst, &dstlen);
    rec_printf(out, "exported %zu bytes, same as source %d\n", dstlen,
               dstdata && dstlen == srclen && memcmp(dstdata, srcdata, srclen) == 0);
    free(dstdata);
    unlink(dst);
    rec_printf(out, "lo_unlink -> %d\n", lo_unlink(c, got));
    rec_take(out, "commit", PQexec(c, "commit"));

    rec_take(out, "begin", PQexec(c, "begin"));
    rec_printf(out, "lo_import_with_oid -> %s\n",
               lo_import_with_oid(c, src, fixed) == fixed ? "fixed" : PQerrorMessage(c));
    rec_take(out, "commit", PQexec(c, "commit"));
    rec_printf(out, "lo_import_with_oid dup -> %u err=%s", lo_import_with_oid(c, src, fixed),
               PQerrorMessage(c));
    rec_take(out, "begin", PQexec(c, "begin"));
    int fd = lo_open(c, fixed, INV_READ);
    rec_printf(out, "lo_lseek64 -> %lld\n", (long long)lo_lseek64(c, fd, 123456, SEEK_SET));
    rec_lo_contents(c, out, fd, 64);
    rec_printf(out, "lo_close -> %d\n", lo_close(c, fd));
    rec_printf(out, "lo_export to bad path -> %d err=%s", lo_export(c, fixed, "/nonexistent/dir/out"),
               PQerrorMessage(c));
    rec_take(out, "commit", PQexec(c, "commit"));
    /* inside a transaction, lo_export of an empty object */
    rec_take(out, "begin", PQexec(c, "begin"));
    rec_printf(out, "lo_create -> %s\n", lo_create(c, fixed + 1) == fixed + 1 ? "fixed+1" : PQerrorMessage(c));
    rec_printf(out, "lo_export empty -> %d\n", lo_export(c, fixed + 1, dst));
    rec_take(out, "commit", PQexec(c, "commit"));
    dstdata = pqa_read_file(dst, &dstlen);
    rec_printf(out, "empty export: %zu bytes\n", dstdata ? dstlen : (size_t)-1);
    free(dstdata);
    unlink(dst);
    pqa_lo_cleanup(c);
    unlink(src);
    free(srcdata);
    free(src);
    free(dst);
}

const struct pqa_scenario pqa_scen_lo[] = {
    {"lo_basic", s_lo_basic, PQA_UNIX},
    {"lo_basic_ssl", s_lo_basic, PQA_SSL},
    {"lo_creat", s_lo_creat, PQA_UNIX},
    {"lo_errors", s_lo_errors, PQA_UNIX},
    {"lo_import_export", s_lo_import_export, PQA_UNIX},
    {"lo_import_export_scram_ssl", s_lo_import_export, PQA_SCRAM_SSL},
    {NULL, NULL, 0},
};
