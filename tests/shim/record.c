/*
 * record.c -- the observation log of the differential test (see record.h).
 */
#include "record.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rec_init(struct record *out)
{
    out->cap = 4096;
    out->len = 0;
    out->buf = malloc(out->cap);
    out->buf[0] = '\0';
}

void rec_free(struct record *out)
{
    free(out->buf);
    out->buf = NULL;
    out->len = out->cap = 0;
}

static void grow(struct record *out, size_t more)
{
    if (out->len + more + 1 <= out->cap)
        return;
    while (out->len + more + 1 > out->cap)
        out->cap *= 2;
    out->buf = realloc(out->buf, out->cap);
}

void rec_printf(struct record *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    grow(out, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(out->buf + out->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    out->len += (size_t)n;
}

void rec_bytes(struct record *out, const char *data, size_t len)
{
    grow(out, len * 4);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            out->buf[out->len++] = (char)c;
        else
            out->len += (size_t)sprintf(out->buf + out->len, "\\x%02x", c);
    }
    out->buf[out->len] = '\0';
}

static void rec_str(struct record *out, const char *s)
{
    if (s == NULL)
        rec_printf(out, "(null)");
    else
        rec_bytes(out, s, strlen(s));
}

void rec_result(struct record *out, const char *label, const PGresult *res)
{
    rec_printf(out, "[%s] ", label);
    if (res == NULL) {
        rec_printf(out, "(null result)\n");
        return;
    }
    ExecStatusType st = PQresultStatus(res);
    rec_printf(out, "status=%s cmd=", PQresStatus(st));
    rec_str(out, PQcmdStatus((PGresult *)res));
    rec_printf(out, " tuples=");
    rec_str(out, PQcmdTuples((PGresult *)res));
    rec_printf(out, " ntuples=%d nfields=%d nparams=%d binary=%d\n", PQntuples(res),
               PQnfields(res), PQnparams(res), PQbinaryTuples(res));
    for (int f = 0; f < PQnfields(res); f++) {
        rec_printf(out, "  field %d name=", f);
        rec_str(out, PQfname(res, f));
        rec_printf(out, " type=%u fmt=%d size=%d mod=%d\n", PQftype(res, f), PQfformat(res, f),
                   PQfsize(res, f), PQfmod(res, f));
    }
    for (int p = 0; p < PQnparams(res); p++)
        rec_printf(out, "  param %d type=%u\n", p, PQparamtype(res, p));
    for (int r = 0; r < PQntuples(res); r++) {
        rec_printf(out, "  row %d:", r);
        for (int f = 0; f < PQnfields(res); f++) {
            if (PQgetisnull(res, r, f)) {
                rec_printf(out, " NULL");
                continue;
            }
            rec_printf(out, " (%d)", PQgetlength(res, r, f));
            rec_bytes(out, PQgetvalue(res, r, f), (size_t)PQgetlength(res, r, f));
        }
        rec_printf(out, "\n");
    }
    const char *em = PQresultErrorMessage(res);
    if (em && *em) {
        rec_printf(out, "  error=");
        rec_str(out, em);
        rec_printf(out, "\n  sqlstate=");
        rec_str(out, PQresultErrorField(res, PG_DIAG_SQLSTATE));
        rec_printf(out, " severity=");
        rec_str(out, PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED));
        rec_printf(out, " primary=");
        rec_str(out, PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
        rec_printf(out, " detail=");
        rec_str(out, PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
        rec_printf(out, " context=");
        rec_str(out, PQresultErrorField(res, PG_DIAG_CONTEXT));
        rec_printf(out, "\n");
    }
}

void rec_take(struct record *out, const char *label, PGresult *res)
{
    rec_result(out, label, res);
    PQclear(res);
}

void rec_conn(struct record *out, const char *label, const PGconn *conn)
{
    rec_printf(out, "[%s] ", label);
    if (conn == NULL) {
        rec_printf(out, "(null conn)\n");
        return;
    }
    rec_printf(out, "status=%d xact=%d nonblocking=%d pipeline=%d err=", PQstatus(conn),
               PQtransactionStatus(conn), PQisnonblocking(conn), PQpipelineStatus(conn));
    rec_str(out, PQerrorMessage(conn));
    rec_printf(out, "\n");
}

static void on_notice(void *arg, const PGresult *res)
{
    struct record *out = arg;
    rec_printf(out, "  notice(receiver): severity=");
    rec_str(out, PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED));
    rec_printf(out, " sqlstate=");
    rec_str(out, PQresultErrorField(res, PG_DIAG_SQLSTATE));
    rec_printf(out, " text=");
    rec_str(out, PQresultErrorMessage(res));
    rec_printf(out, "\n");
}

static void on_notice_text(void *arg, const char *msg)
{
    struct record *out = arg;
    rec_printf(out, "  notice(processor): ");
    rec_str(out, msg);
    rec_printf(out, "\n");
}

void rec_notices(struct record *out, PGconn *conn, int processor)
{
    if (processor)
        PQsetNoticeProcessor(conn, on_notice_text, out);
    else
        PQsetNoticeReceiver(conn, on_notice, out);
}

void rec_notifies(struct record *out, PGconn *conn)
{
    PGnotify *n;
    while ((n = PQnotifies(conn)) != NULL) {
        rec_printf(out, "  notify channel=");
        rec_str(out, n->relname);
        rec_printf(out, " payload=");
        rec_str(out, n->extra);
        rec_printf(out, " self=%d\n", n->be_pid == PQbackendPID(conn));
        PQfreemem(n);
    }
}

size_t rec_diff(const struct record *a, const struct record *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    for (size_t i = 0; i < n; i++)
        if (a->buf[i] != b->buf[i])
            return i;
    return a->len == b->len ? (size_t)-1 : n;
}

/* the whole line around offset `at` */
static void line_at(const struct record *r, size_t at, size_t *start, size_t *end)
{
    size_t s = at > r->len ? r->len : at, e = s;
    while (s > 0 && r->buf[s - 1] != '\n')
        s--;
    while (e < r->len && r->buf[e] != '\n')
        e++;
    *start = s;
    *end = e;
}

char *rec_describe_diff(const struct record *a, const struct record *b)
{
    size_t at = rec_diff(a, b);
    if (at == (size_t)-1)
        return strdup("identical");
    size_t line = 1;
    for (size_t i = 0; i < at; i++)
        line += a->buf[i] == '\n';
    size_t as, ae, bs, be;
    line_at(a, at, &as, &ae);
    line_at(b, at, &bs, &be);
    size_t cap = 512 + (ae - as) + (be - bs);
    char *msg = malloc(cap);
    snprintf(msg, cap,
             "records differ at byte %zu (line %zu; lengths %zu vs %zu)\n"
             "  outside task: %.*s\n"
             "  inside task:  %.*s",
             at, line, a->len, b->len, (int)(ae - as), a->buf + as, (int)(be - bs), b->buf + bs);
    return msg;
}
