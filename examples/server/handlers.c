/*
 * handlers.c -- the endpoints, as plain blocking libpq code (handlers.h).
 *
 *   GET  /health          {"ok":true}
 *   GET  /items/ID        {"id":ID,"name":"...","qty":N} or 404
 *   POST /items/ID/take   body {"qty":N}: one transaction -- lock the row,
 *                         check, update, insert an order -- then
 *                         {"id":ID,"qty":REMAINING}, or 409
 *                         {"error":"insufficient"}
 *   GET  /slow?ms=N       {"slept_ms":N} after a server-side pg_sleep
 *   GET  /stats           requests, latency, stall, pool statistics
 *                         (?reset=stall: measure the longest stall afresh)
 *
 * Concurrent takes never oversell: SELECT ... FOR UPDATE serialises them on
 * the row.  A take is answered 200 only once its COMMIT returned
 * PGRES_COMMAND_OK, so an acknowledged order is a committed order: a
 * connection lost mid-transaction, a server going away or a shutdown can
 * cost the answer, never the order behind a 200.
 */
#include "handlers.h"
#include "stats.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- routing ------------------------------------------------------------------- */

/* A positive decimal id (no sign, no leading zero), or -1. */
static long parse_id(const char *s, const char **end)
{
    if (!isdigit((unsigned char)*s) || *s == '0')
        return -1;
    long v = 0;
    while (isdigit((unsigned char)*s)) {
        if (v > 100000000)
            return -1;
        v = v * 10 + (*s++ - '0');
    }
    *end = s;
    return v;
}

static int error_body(struct sbuf *body, int status, const char *msg)
{
    sb_puts(body, "{\"error\":");
    sb_json_str(body, msg);
    sb_puts(body, "}");
    return -status;
}

int route_request(const struct http_request *rq, long *id, int *needs_db, const char **allow,
                  struct sbuf *body)
{
    const char *p = rq->path;
    int get = strcmp(rq->method, "GET") == 0, post = strcmp(rq->method, "POST") == 0;
    int r = -1;
    const char *want = "GET";
    *needs_db = 1;
    *allow = NULL;
    if (strcmp(p, "/health") == 0) {
        r = R_HEALTH;
        *needs_db = 0;
    } else if (strcmp(p, "/stats") == 0) {
        r = R_STATS;
        *needs_db = 0;
    } else if (strcmp(p, "/slow") == 0) {
        r = R_SLOW;
    } else if (strncmp(p, "/items/", 7) == 0) {
        const char *e;
        *id = parse_id(p + 7, &e);
        if (*id < 0)
            return error_body(body, 404, "not found");
        if (*e == 0) {
            r = R_ITEM;
        } else if (strcmp(e, "/take") == 0) {
            r = R_TAKE;
            want = "POST";
        } else {
            return error_body(body, 404, "not found");
        }
    } else {
        return error_body(body, 404, "not found");
    }
    if ((strcmp(want, "GET") == 0 && !get) || (strcmp(want, "POST") == 0 && !post)) {
        *allow = want;
        return error_body(body, 405, "method not allowed");
    }
    return r;
}

/* ---- database helpers ------------------------------------------------------------- */

static int db_error(struct sbuf *body, PGconn *conn, const PGresult *r)
{
    const char *msg = r ? PQresultErrorMessage(r) : NULL;
    if (!msg || !*msg)
        msg = PQerrorMessage(conn);
    char clean[512];
    snprintf(clean, sizeof clean, "%s", msg && *msg ? msg : "database error");
    size_t n = strlen(clean);
    while (n && (clean[n - 1] == '\n' || clean[n - 1] == ' '))
        clean[--n] = 0;
    body->len = 0;
    if (body->p)
        body->p[0] = 0;
    sb_puts(body, "{\"error\":\"database\",\"detail\":");
    sb_json_str(body, clean);
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (state) {
        sb_puts(body, ",\"sqlstate\":");
        sb_json_str(body, state);
    }
    sb_puts(body, "}");
    return 503;
}

void no_connection(struct sbuf *body, const char *why)
{
    sb_puts(body, "{\"error\":\"no database connection\",\"detail\":");
    sb_json_str(body, why);
    sb_puts(body, "}");
}

static PGresult *exec1(PGconn *conn, const char *sql, long a, long b, int nparams)
{
    char s1[24], s2[24];
    snprintf(s1, sizeof s1, "%ld", a);
    snprintf(s2, sizeof s2, "%ld", b);
    const char *vals[2] = { s1, s2 };
    return PQexecParams(conn, sql, nparams, NULL, vals, NULL, NULL, 0);
}

/* ---- the endpoints ---------------------------------------------------------------- */

static int get_item(PGconn *conn, long id, struct sbuf *body)
{
    PGresult *r = exec1(conn, "SELECT name, qty FROM items WHERE id = $1", id, 0, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        int st = db_error(body, conn, r);
        PQclear(r);
        return st;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        sb_puts(body, "{\"error\":\"not found\"}");
        return 404;
    }
    sb_printf(body, "{\"id\":%ld,\"name\":", id);
    sb_json_str(body, PQgetvalue(r, 0, 0));
    sb_printf(body, ",\"qty\":%s}", PQgetvalue(r, 0, 1));
    PQclear(r);
    return 200;
}

/* {"qty": N} with N a positive integer; other members are ignored.  The
 * value, or -1 for anything else. */
static long parse_take_body(const char *s)
{
    long qty = -1;
    while (isspace((unsigned char)*s))
        s++;
    if (*s++ != '{')
        return -1;
    for (;;) {
        while (isspace((unsigned char)*s))
            s++;
        if (*s == '}' && qty < 0)
            return -1;
        if (*s++ != '"')
            return -1;
        const char *k = s;
        while (*s && *s != '"' && *s != '\\')
            s++;
        if (*s != '"')
            return -1;
        int is_qty = s - k == 3 && strncmp(k, "qty", 3) == 0;
        s++;
        while (isspace((unsigned char)*s))
            s++;
        if (*s++ != ':')
            return -1;
        while (isspace((unsigned char)*s))
            s++;
        if (is_qty) {
            if (!isdigit((unsigned char)*s))
                return -1;
            long v = 0;
            while (isdigit((unsigned char)*s)) {
                v = v * 10 + (*s++ - '0');
                if (v > 1000000)
                    return -1;
            }
            if (v < 1)
                return -1;
            qty = v;
        } else if (*s == '"') { /* a string we skip */
            s++;
            while (*s && *s != '"')
                s += *s == '\\' && s[1] ? 2 : 1;
            if (*s++ != '"')
                return -1;
        } else { /* a number, true, false, null */
            if (!*s || strchr(",}", *s))
                return -1;
            while (*s && !strchr(",} \t\r\n", *s))
                s++;
        }
        while (isspace((unsigned char)*s))
            s++;
        if (*s == ',') {
            s++;
            continue;
        }
        if (*s++ != '}')
            return -1;
        while (isspace((unsigned char)*s))
            s++;
        return *s ? -1 : qty;
    }
}

static int command_ok(PGconn *conn, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok;
}

/* A failed step: roll back (if the connection is still there) and say why. */
static int take_failed(PGconn *conn, PGresult *r, struct sbuf *body)
{
    int st = db_error(body, conn, r);
    PQclear(r);
    if (PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE)
        (void)command_ok(conn, "ROLLBACK");
    return st;
}

static int take(PGconn *conn, long id, const struct http_request *rq, struct sbuf *body)
{
    long qty = parse_take_body(rq->body);
    if (qty < 0) {
        sb_puts(body, "{\"error\":\"body must be {\\\"qty\\\": N} with N a positive integer\"}");
        return 400;
    }
    PGresult *r = PQexec(conn, "BEGIN");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return take_failed(conn, r, body);
    PQclear(r);
    r = exec1(conn, "SELECT qty FROM items WHERE id = $1 FOR UPDATE", id, 0, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        return take_failed(conn, r, body);
    if (PQntuples(r) == 0) {
        PQclear(r);
        (void)command_ok(conn, "ROLLBACK");
        sb_puts(body, "{\"error\":\"not found\"}");
        return 404;
    }
    long have = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (have < qty) {
        (void)command_ok(conn, "ROLLBACK");
        sb_puts(body, "{\"error\":\"insufficient\"}");
        return 409;
    }
    r = exec1(conn, "UPDATE items SET qty = qty - $2 WHERE id = $1 RETURNING qty", id, qty, 2);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        return take_failed(conn, r, body);
    long left = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    r = exec1(conn, "INSERT INTO orders(item_id, qty) VALUES ($1, $2)", id, qty, 2);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return take_failed(conn, r, body);
    PQclear(r);
    r = PQexec(conn, "COMMIT");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return take_failed(conn, r, body); /* not acknowledged: maybe not committed */
    PQclear(r);
    sb_printf(body, "{\"id\":%ld,\"qty\":%ld}", id, left);
    return 200;
}

static int slow(PGconn *conn, const struct http_request *rq, struct sbuf *body)
{
    const char *q = rq->query;
    long ms = -1;
    if (strncmp(q, "ms=", 3) == 0) {
        const char *e;
        ms = strcmp(q + 3, "0") == 0 ? 0 : parse_id(q + 3, &e);
        if (ms > 0 && *e)
            ms = -1;
    }
    if (ms < 0 || ms > 60000) {
        sb_puts(body, "{\"error\":\"want ms=N, 0 <= N <= 60000\"}");
        return 400;
    }
    PGresult *r = exec1(conn, "SELECT pg_sleep($1::int / 1000.0)", ms, 0, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        int st = db_error(body, conn, r);
        PQclear(r);
        return st;
    }
    PQclear(r);
    sb_printf(body, "{\"slept_ms\":%ld}", ms);
    return 200;
}

int run_route(int route, long id, PGconn *conn, const struct http_request *rq,
              struct sbuf *body)
{
    switch (route) {
    case R_HEALTH:
        sb_puts(body, "{\"ok\":true}");
        return 200;
    case R_STATS:
        stats_json(body, strcmp(rq->query, "reset=stall") == 0);
        return 200;
    case R_ITEM:
        return get_item(conn, id, body);
    case R_TAKE:
        return take(conn, id, rq, body);
    case R_SLOW:
        return slow(conn, rq, body);
    }
    sb_puts(body, "{\"error\":\"internal\"}");
    return 500;
}

/* ---- --init ---------------------------------------------------------------------- */

int init_schema(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "pqawait-server: --init: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    static const char sql[] =
        "SET client_min_messages = warning;"
        "BEGIN;"
        "DROP TABLE IF EXISTS orders;"
        "DROP TABLE IF EXISTS items;"
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL"
        "  CHECK (qty >= 0));"
        "INSERT INTO items SELECT g, 'item ' || g, 100 FROM generate_series(1, 10000) g;"
        "CREATE TABLE orders (id bigserial PRIMARY KEY,"
        "  item_id int NOT NULL REFERENCES items(id), qty int NOT NULL CHECK (qty > 0),"
        "  created timestamptz NOT NULL DEFAULT now());"
        "CREATE INDEX ON orders(item_id);"
        "COMMIT;"
        "ANALYZE items;";
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "pqawait-server: --init: %s", PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return ok ? 0 : -1;
}
