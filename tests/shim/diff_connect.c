/*
 * diff_connect.c -- differential scenarios for connecting, resetting and
 * pinging: PQconnectdb, PQconnectdbParams, PQsetdbLogin, PQconnectStart*,
 * PQconnectPoll, PQreset, PQresetStart/Poll, PQping, PQpingParams.
 *
 * Failing connects matter as much as working ones: their error texts are
 * built by libpq across several waits (per-address retries, SSL fallback,
 * connect_timeout), which is exactly what a re-implementation would get
 * subtly wrong.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scenarios.h"

/* connect, record, run one query, finish */
static void connect_and_query(const char *ci, struct record *out)
{
    PGconn *c = PQconnectdb(ci);
    rec_conn(out, "connectdb", c);
    if (PQstatus(c) == CONNECTION_OK) {
        rec_printf(out, "  db=%s user=%s port=%s proto=%d ssl=%d enc=%s\n", PQdb(c), PQuser(c),
                   PQport(c), PQprotocolVersion(c), PQsslInUse(c),
                   PQparameterStatus(c, "client_encoding"));
        rec_take(out, "query", PQexec(c, "select current_user, 1 + 1"));
    }
    PQfinish(c);
}

static void with_kind(pqa_kind kind, const char *extra, struct record *out)
{
    char *ci = pqa_conninfo(kind, extra);
    connect_and_query(ci, out);
    free(ci);
}

static void s_connect_unix(PGconn *u, struct record *out) { (void)u; with_kind(PQA_UNIX, NULL, out); }
static void s_connect_tcp(PGconn *u, struct record *out) { (void)u; with_kind(PQA_TCP, NULL, out); }
static void s_connect_name(PGconn *u, struct record *out) { (void)u; with_kind(PQA_TCP_NAME, NULL, out); }
static void s_connect_scram(PGconn *u, struct record *out) { (void)u; with_kind(PQA_SCRAM, NULL, out); }

static void s_connect_ssl(PGconn *u, struct record *out)
{
    (void)u;
    char *ci = pqa_conninfo(PQA_SSL, NULL);
    PGconn *c = PQconnectdb(ci);
    rec_conn(out, "ssl", c);
    rec_printf(out, "  ssl=%d lib=%s proto=%s cipher=%s bits=%s\n", PQsslInUse(c),
               PQsslAttribute(c, "library"), PQsslAttribute(c, "protocol"),
               PQsslAttribute(c, "cipher"), PQsslAttribute(c, "key_bits"));
    rec_take(out, "q", PQexec(c, "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()"));
    PQfinish(c);
    free(ci);
    with_kind(PQA_SCRAM_SSL, NULL, out);
}

static void s_connect_failures(PGconn *u, struct record *out)
{
    (void)u;
    with_kind(PQA_SCRAM, "password=wrong-secret", out);
    with_kind(PQA_SCRAM_SSL, "password=wrong-secret", out);
    with_kind(PQA_UNIX, "dbname=pqa_no_such_database", out);
    with_kind(PQA_TCP, "user=pqa_no_such_user", out);
    with_kind(PQA_TCP, "port=1 connect_timeout=1", out);
    with_kind(PQA_UNIX, "no_such_option=1", out);
    with_kind(PQA_UNIX, "port=notaport", out);
    with_kind(PQA_TCP, "target_session_attrs=bogus", out);
    /* SSL required, but verification against the wrong CA file fails */
    with_kind(PQA_SSL, "sslrootcert=/nonexistent/ca.crt", out);
}

static void s_connect_timeout(PGconn *u, struct record *out)
{
    (void)u;
    char extra[64];
    snprintf(extra, sizeof extra, "connect_timeout=1");
    char *ci = pqa_conninfo_port(pqa_diff.blackhole_port, extra);
    connect_and_query(ci, out);
    free(ci);
}

static void s_connect_multihost(PGconn *u, struct record *out)
{
    (void)u;
    char extra[128];
    snprintf(extra, sizeof extra, "host=127.0.0.1,127.0.0.1 port=1,%s", pqa_env_port());
    with_kind(PQA_TCP, extra, out);
    /* every address of every host refused: the message lists them all */
    snprintf(extra, sizeof extra, "host=localhost,127.0.0.1 port=1,1 connect_timeout=2");
    with_kind(PQA_TCP, extra, out);
}

static void s_connect_tsa(PGconn *u, struct record *out)
{
    (void)u;
    with_kind(PQA_TCP, "target_session_attrs=read-write", out);
    with_kind(PQA_TCP, "target_session_attrs=primary", out);
    with_kind(PQA_TCP, "target_session_attrs=standby", out);
    with_kind(PQA_TCP, "target_session_attrs=read-only", out);
}

static void s_connectdb_params(PGconn *u, struct record *out)
{
    (void)u;
    const char *kw[] = {"host", "port", "dbname", "user", "application_name", NULL};
    const char *val[] = {pqa_env_host(), pqa_env_port(), pqa_env_db(), "pqa_trust", "pqa-diff", NULL};
    PGconn *c = PQconnectdbParams(kw, val, 0);
    rec_conn(out, "params", c);
    rec_take(out, "q", PQexec(c, "show application_name"));
    PQfinish(c);

    /* expand_dbname: dbname holds a whole conninfo */
    char *ci = pqa_conninfo(PQA_TCP, "application_name=expanded");
    const char *kw2[] = {"dbname", "user", NULL};
    const char *val2[] = {ci, "pqa_trust", NULL};
    c = PQconnectdbParams(kw2, val2, 1);
    rec_conn(out, "expand", c);
    rec_take(out, "q", PQexec(c, "show application_name"));
    PQfinish(c);
    free(ci);

    const char *val3[] = {pqa_env_host(), pqa_env_port(), "pqa_no_such_database", "pqa_trust", "x", NULL};
    c = PQconnectdbParams(kw, val3, 0);
    rec_conn(out, "nodb", c);
    PQfinish(c);
    const char *kw4[] = {"host", "port", "dbname", "user", "password", "sslmode", NULL};
    const char *val4[] = {"127.0.0.1", pqa_env_port(), pqa_env_db(), "pqa_scram", "nope", "disable", NULL};
    c = PQconnectdbParams(kw4, val4, 0);
    rec_conn(out, "badpw", c);
    PQfinish(c);
}

static void s_setdblogin(PGconn *u, struct record *out)
{
    (void)u;
    PGconn *c = PQsetdbLogin(pqa_env_host(), pqa_env_port(), NULL, NULL, pqa_env_db(), "pqa_trust", NULL);
    rec_conn(out, "login", c);
    rec_take(out, "q", PQexec(c, "select current_user"));
    PQfinish(c);
    c = PQsetdbLogin("127.0.0.1", pqa_env_port(), "-c statement_timeout=1234", NULL, pqa_env_db(),
                     "pqa_scram", "scram-secret");
    rec_conn(out, "scram", c);
    rec_take(out, "q", PQexec(c, "show statement_timeout"));
    PQfinish(c);
    c = PQsetdbLogin("127.0.0.1", pqa_env_port(), NULL, NULL, pqa_env_db(), "pqa_scram", "wrong");
    rec_conn(out, "badpw", c);
    PQfinish(c);
    c = PQsetdbLogin(pqa_env_host(), pqa_env_port(), NULL, NULL, "pqa_no_such_database", "pqa_trust", NULL);
    rec_conn(out, "nodb", c);
    PQfinish(c);
}

static void s_reset(PGconn *u, struct record *out)
{
    (void)u;
    static const pqa_kind kinds[] = {PQA_UNIX, PQA_TCP_NAME, PQA_SSL, PQA_SCRAM};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        PGconn *c = pqa_connect(kinds[i], NULL);
        rec_take(out, "set", PQexec(c, "set application_name = 'before-reset'"));
        rec_take(out, "tx", PQexec(c, "begin"));
        PQreset(c);
        rec_conn(out, "reset", c);
        rec_take(out, "show", PQexec(c, "show application_name"));
        PQfinish(c);
    }
}

/* the nonblocking connect API driven by the caller's own poll() */
static void poll_until(PGconn *c, PostgresPollingStatusType (*step)(PGconn *), struct record *out)
{
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    for (int guard = 0; guard < 1000 && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED; guard++) {
        struct pollfd pfd = {.fd = PQsocket(c), .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
        if (pfd.fd < 0)
            break;
        poll(&pfd, 1, 5000);
        st = step(c);
    }
    rec_printf(out, "  final poll status=%d\n", st);
}

static void s_connect_start(PGconn *u, struct record *out)
{
    (void)u;
    char *ci = pqa_conninfo(PQA_SSL, NULL);
    PGconn *c = PQconnectStart(ci);
    poll_until(c, PQconnectPoll, out);
    rec_conn(out, "start", c);
    rec_take(out, "q", PQexec(c, "select 1"));
    if (PQresetStart(c))
        poll_until(c, PQresetPoll, out);
    rec_conn(out, "resetstart", c);
    rec_take(out, "q", PQexec(c, "select 2"));
    PQfinish(c);
    free(ci);

    const char *kw[] = {"host", "port", "dbname", "user", NULL};
    const char *val[] = {"127.0.0.1", "1", pqa_env_db(), "pqa_trust", NULL};
    c = PQconnectStartParams(kw, val, 0);
    poll_until(c, PQconnectPoll, out);
    rec_conn(out, "startparams-fail", c);
    PQfinish(c);
}

static void s_ping(PGconn *u, struct record *out)
{
    (void)u;
    static const struct {
        pqa_kind kind;
        const char *extra;
    } cases[] = {
        {PQA_UNIX, NULL},
        {PQA_TCP_NAME, NULL},
        {PQA_SSL, NULL},
        {PQA_SCRAM, "password=wrong"},                /* auth failure: server is up */
        {PQA_UNIX, "dbname=pqa_no_such_database"},    /* idem */
        {PQA_TCP, "port=1"},                          /* no response */
        {PQA_UNIX, "no_such_option=1"},               /* no attempt */
        {PQA_UNIX, "port=notaport"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *ci = pqa_conninfo(cases[i].kind, cases[i].extra);
        rec_printf(out, "ping %zu -> %d\n", i, PQping(ci));
        free(ci);
    }
    char *ci = pqa_conninfo_port(pqa_diff.rejecter_port, NULL);
    rec_printf(out, "ping reject -> %d\n", PQping(ci));
    free(ci);
    ci = pqa_conninfo_port(pqa_diff.blackhole_port, "connect_timeout=1");
    rec_printf(out, "ping blackhole -> %d\n", PQping(ci));
    free(ci);
}

static void s_ping_params(PGconn *u, struct record *out)
{
    (void)u;
    const char *kw[] = {"host", "port", "dbname", "user", NULL};
    const char *ok[] = {pqa_env_host(), pqa_env_port(), pqa_env_db(), "pqa_trust", NULL};
    rec_printf(out, "params ok -> %d\n", PQpingParams(kw, ok, 0));
    const char *closed[] = {"127.0.0.1", "1", pqa_env_db(), "pqa_trust", NULL};
    rec_printf(out, "params closed -> %d\n", PQpingParams(kw, closed, 0));
    char *ci = pqa_conninfo(PQA_TCP, NULL);
    const char *kw2[] = {"dbname", NULL};
    const char *exp[] = {ci, NULL};
    rec_printf(out, "params expand -> %d\n", PQpingParams(kw2, exp, 1));
    free(ci);
    const char *kw3[] = {"no_such_option", NULL};
    const char *bad[] = {"1", NULL};
    rec_printf(out, "params bad -> %d\n", PQpingParams(kw3, bad, 0));
}

const struct pqa_scenario pqa_scen_connect[] = {
    {"connect_unix", s_connect_unix, PQA_SELF},
    {"connect_tcp", s_connect_tcp, PQA_SELF},
    {"connect_hostname", s_connect_name, PQA_SELF},
    {"connect_scram", s_connect_scram, PQA_SELF},
    {"connect_ssl", s_connect_ssl, PQA_SELF},
    {"connect_failures", s_connect_failures, PQA_SELF},
    {"connect_timeout", s_connect_timeout, PQA_SELF},
    {"connect_multihost", s_connect_multihost, PQA_SELF},
    {"connect_target_session_attrs", s_connect_tsa, PQA_SELF},
    {"connectdb_params", s_connectdb_params, PQA_SELF},
    {"setdblogin", s_setdblogin, PQA_SELF},
    {"reset", s_reset, PQA_SELF},
    {"connect_start_poll", s_connect_start, PQA_SELF},
    {"ping", s_ping, PQA_SELF},
    {"ping_params", s_ping_params, PQA_SELF},
    {NULL, NULL, 0},
};
