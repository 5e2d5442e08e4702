/*
 * diff_exec.c -- differential scenarios for the synchronous query calls:
 * PQexec (multi-statement last-result rule, errors mid-way, COPY states),
 * PQexecParams (text and binary), PQprepare/PQexecPrepared,
 * PQdescribePrepared/Portal, plus the calls that run queries internally
 * (PQsetClientEncoding, PQencryptPasswordConn, PQfn) and what arrives beside
 * results (notices, notifications).
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scenarios.h"

static void s_exec_basic(PGconn *c, struct record *out)
{
    rec_take(out, "simple", PQexec(c, "select 1 as a, 'x'::text as b, null::int as c, "
                                      "array[1,2] as d, 1.5::numeric(4,2) as e"));
    rec_take(out, "rows", PQexec(c, "select i, repeat('ab', i) from generate_series(1, 5) i"));
    rec_take(out, "empty", PQexec(c, ""));
    rec_take(out, "command", PQexec(c, "create temp table t (a int primary key, b text)"));
    rec_take(out, "insert", PQexec(c, "insert into t select i, 'v' || i from generate_series(1, 3) i"));
    rec_take(out, "update", PQexec(c, "update t set b = b || '!' where a > 1 returning *"));
    rec_take(out, "syntax", PQexec(c, "selec 1"));
    rec_conn(out, "after syntax", c);
    rec_take(out, "unique", PQexec(c, "insert into t values (1, 'dup')"));
    rec_take(out, "div0", PQexec(c, "select 1 / 0"));
    rec_conn(out, "after div0", c);
}

static void s_exec_multi(PGconn *c, struct record *out)
{
    rec_take(out, "last", PQexec(c, "select 1; select 2, 3; select 'last'"));
    rec_take(out, "mid-error", PQexec(c, "create temp table m (a int); insert into m values (1); "
                                         "select 1 / 0; select 3"));
    rec_conn(out, "after mid-error", c);
    rec_take(out, "rolled back", PQexec(c, "select count(*) from m"));
    rec_take(out, "end-cmd", PQexec(c, "select 1; set application_name = 'multi'"));
    rec_take(out, "tx", PQexec(c, "begin; select 1"));
    rec_conn(out, "in tx", c);
    rec_take(out, "fail in tx", PQexec(c, "select nope"));
    rec_conn(out, "inerror", c);
    rec_take(out, "in failed tx", PQexec(c, "select 1"));
    rec_take(out, "rollback", PQexec(c, "rollback"));
    rec_conn(out, "idle", c);
}

static void s_exec_copy_state(PGconn *c, struct record *out)
{
    PQclear(PQexec(c, "create temp table cs (a int)"));
    /* PQexec stops at the COPY result; the next PQexec ends the COPY IN */
    rec_take(out, "to copy in", PQexec(c, "select 1; copy cs from stdin; select 2"));
    rec_conn(out, "copy in", c);
    rec_take(out, "exec during copy in", PQexec(c, "select 5"));
    rec_conn(out, "after", c);
    PGresult *r;
    while ((r = PQgetResult(c)) != NULL)
        rec_take(out, "leftover", r);
    rec_take(out, "count", PQexec(c, "select count(*) from cs"));
    /* COPY OUT data is thrown away by the next PQexec */
    rec_take(out, "to copy out", PQexec(c, "copy (select generate_series(1, 1000)) to stdout"));
    rec_take(out, "exec during copy out", PQexec(c, "select 6"));
    rec_conn(out, "after", c);
    while ((r = PQgetResult(c)) != NULL)
        rec_take(out, "leftover", r);
    rec_take(out, "fine", PQexec(c, "select 7"));
}

static void s_exec_params(PGconn *c, struct record *out)
{
    const char *vals[] = {"41", "text param", NULL};
    Oid types[] = {23, 25, 23};
    rec_take(out, "text", PQexecParams(c, "select $1::int + 1, $2, $3 is null", 3, types, vals,
                                       NULL, NULL, 0));
    rec_take(out, "untyped", PQexecParams(c, "select $1 || 'x'", 1, NULL, vals + 1, NULL, NULL, 0));
    /* binary in and out */
    uint32_t be = htonl((uint32_t)-7);
    const char *bvals[] = {(const char *)&be, "\x01\x02\x00\x03"};
    int lens[] = {4, 4};
    int fmts[] = {1, 1};
    Oid btypes[] = {23, 17};
    rec_take(out, "binary", PQexecParams(c, "select $1::int4 * 3, $2::bytea, 'z'::text, 2.5::float8",
                                         2, btypes, bvals, lens, fmts, 1));
    const char *bad[] = {"abc"};
    rec_take(out, "bad param", PQexecParams(c, "select $1::int", 1, types, bad, NULL, NULL, 0));
    rec_take(out, "count mismatch", PQexecParams(c, "select $1, $2", 1, NULL, vals, NULL, NULL, 0));
    rec_take(out, "multi refused", PQexecParams(c, "select 1; select 2", 0, NULL, NULL, NULL, NULL, 0));
    rec_take(out, "command", PQexecParams(c, "set application_name = 'params'", 0, NULL, NULL, NULL, NULL, 0));
}

static void s_prepare(PGconn *c, struct record *out)
{
    Oid t[] = {23};
    rec_take(out, "prepare", PQprepare(c, "s1", "select $1::int * 2 as doubled, $1::text as t", 1, t));
    rec_take(out, "prepare untyped", PQprepare(c, "s2", "select $1 || $2", 2, NULL));
    rec_take(out, "dup", PQprepare(c, "s1", "select 1", 0, NULL));
    rec_take(out, "bad sql", PQprepare(c, "s3", "select from where", 0, NULL));
    const char *v[] = {"21", "b"};
    rec_take(out, "exec s1", PQexecPrepared(c, "s1", 1, v, NULL, NULL, 0));
    rec_take(out, "exec s1 bin", PQexecPrepared(c, "s1", 1, v, NULL, NULL, 1));
    rec_take(out, "exec s2", PQexecPrepared(c, "s2", 2, v, NULL, NULL, 0));
    rec_take(out, "exec missing", PQexecPrepared(c, "nope", 0, NULL, NULL, NULL, 0));
    rec_take(out, "describe s1", PQdescribePrepared(c, "s1"));
    rec_take(out, "describe s2", PQdescribePrepared(c, "s2"));
    rec_take(out, "describe missing", PQdescribePrepared(c, "nope"));
    rec_take(out, "unnamed", PQprepare(c, "", "select $1::int", 1, t));
    rec_take(out, "describe unnamed", PQdescribePrepared(c, ""));
    rec_take(out, "begin", PQexec(c, "begin"));
    rec_take(out, "declare", PQexec(c, "declare cur cursor for select i, i::text from generate_series(1, 3) i"));
    rec_take(out, "describe portal", PQdescribePortal(c, "cur"));
    rec_take(out, "fetch", PQexec(c, "fetch 2 from cur"));
    rec_take(out, "describe missing portal", PQdescribePortal(c, "nope"));
    rec_conn(out, "aborted", c);
    rec_take(out, "rollback", PQexec(c, "rollback"));
}

static void s_notices(PGconn *c, struct record *out, int processor)
{
    rec_notices(out, c, processor);
    rec_take(out, "do", PQexec(c, "do $$ begin raise notice 'hello %', 1; raise warning 'careful'; "
                                  "raise info 'fyi' using detail = 'more', hint = 'hint'; end $$"));
    rec_take(out, "drop missing", PQexec(c, "drop table if exists pqa_no_such_table"));
    rec_take(out, "params", PQexecParams(c, "do $$ begin raise notice 'via extended protocol'; end $$",
                                         0, NULL, NULL, NULL, NULL, 0));
    rec_take(out, "notice then error", PQexec(c, "do $$ begin raise notice 'before'; "
                                                 "raise exception 'boom' using errcode = '22012'; end $$"));
    rec_take(out, "warning", PQexec(c, "select 1; do $$ begin raise warning 'w1'; end $$; select 2"));
}

static void s_notice_receiver(PGconn *c, struct record *out) { s_notices(c, out, 0); }

/* a notice receiver that itself runs a query on another connection */
struct reentrant {
    struct record *out;
    PGconn *other;
};

static void reentrant_notice(void *arg, const PGresult *res)
{
    struct reentrant *re = arg;
    rec_printf(re->out, "  notice: %s", PQresultErrorMessage(res));
    rec_take(re->out, "  nested", PQexec(re->other, "select 'from inside a notice receiver'"));
}

static void s_notice_reentrant(PGconn *c, struct record *out)
{
    struct reentrant re = {out, pqa_connect(PQA_TCP, NULL)};
    PQsetNoticeReceiver(c, reentrant_notice, &re);
    rec_take(out, "do", PQexec(c, "do $$ begin raise notice 'one'; perform pg_sleep(0.05); "
                                  "raise notice 'two'; end $$"));
    rec_take(out, "after", PQexec(c, "select 1"));
    PQfinish(re.other);
}
static void s_notice_processor(PGconn *c, struct record *out) { s_notices(c, out, 1); }

static void s_notify_self(PGconn *c, struct record *out)
{
    char sql[256];
    snprintf(sql, sizeof sql, "listen chan_%s", pqa_unique());
    rec_take(out, "listen", PQexec(c, sql));
    rec_notifies(out, c);
    snprintf(sql, sizeof sql, "notify chan_%s, 'one'; notify chan_%s, 'two'; select 1", pqa_unique(),
             pqa_unique());
    rec_take(out, "notify", PQexec(c, sql));
    rec_notifies(out, c);
    snprintf(sql, sizeof sql, "select pg_notify('chan_%s', 'three')", pqa_unique());
    rec_take(out, "pg_notify", PQexec(c, sql));
    rec_notifies(out, c);
    rec_take(out, "unlisten", PQexec(c, "unlisten *"));
}

static void s_notify_other(PGconn *c, struct record *out)
{
    char sql[256];
    PGconn *other = pqa_connect(PQA_UNIX, NULL);
    snprintf(sql, sizeof sql, "listen other_%s", pqa_unique());
    rec_take(out, "listen", PQexec(c, sql));
    snprintf(sql, sizeof sql, "notify other_%s, 'from another session'", pqa_unique());
    rec_take(out, "notify", PQexec(other, sql));
    /* delivery is asynchronous: wait with queries (cooperative in a task),
     * and record only what finally arrived */
    PGnotify *n = NULL;
    for (int i = 0; i < 200 && n == NULL; i++) {
        PQclear(PQexec(c, "select pg_sleep(0.01)"));
        n = PQnotifies(c);
    }
    rec_printf(out, "got=%d channel_ok=%d payload=%s self=%d\n", n != NULL,
               n && strncmp(n->relname, "other_", 6) == 0, n ? n->extra : "-",
               n ? n->be_pid == PQbackendPID(c) : -1);
    PQfreemem(n);
    rec_notifies(out, c);
    PQfinish(other);
}

static void s_client_encoding(PGconn *c, struct record *out)
{
    static const char *encs[] = {"LATIN1", "UTF8", "SQL_ASCII", "no_such_encoding", "WIN1252", "UTF8"};
    for (size_t i = 0; i < sizeof encs / sizeof encs[0]; i++) {
        int rc = PQsetClientEncoding(c, encs[i]);
        rec_printf(out, "set %s -> %d now %s\n", encs[i], rc, pg_encoding_to_char(PQclientEncoding(c)));
        rec_conn(out, "enc", c);
    }
    rec_take(out, "show", PQexec(c, "show client_encoding"));
    rec_take(out, "latin", PQexec(c, "select convert_from('\\xe9'::bytea, 'LATIN1')"));
}

static void s_encrypt_password(PGconn *c, struct record *out)
{
    static const char *algs[] = {NULL, "scram-sha-256", "md5", "bogus"};
    for (size_t i = 0; i < sizeof algs / sizeof algs[0]; i++) {
        char *pw = PQencryptPasswordConn(c, "secret", "someone", algs[i]);
        rec_printf(out, "alg %s -> ", algs[i] ? algs[i] : "NULL");
        if (pw == NULL)
            rec_printf(out, "NULL err=%s", PQerrorMessage(c));
        else if (strncmp(pw, "SCRAM-SHA-256$4096:", 19) == 0)
            rec_printf(out, "SCRAM-SHA-256$4096: len=%zu", strlen(pw)); /* salt differs per call */
        else
            rec_printf(out, "%s", pw);
        rec_printf(out, "\n");
        PQfreemem(pw);
    }
    rec_take(out, "set md5", PQexec(c, "set password_encryption = 'md5'"));
    char *pw = PQencryptPasswordConn(c, "secret", "someone", NULL);
    rec_printf(out, "NULL after set md5 -> %s\n", pw ? pw : PQerrorMessage(c));
    PQfreemem(pw);
}

static void s_fn(PGconn *c, struct record *out)
{
    PGresult *r = PQexec(c, "select 'int4abs'::regproc::oid, 'int4pl'::regproc::oid, "
                            "'textlen'::regproc::oid");
    rec_result(out, "oids", r);
    Oid abs_oid = (Oid)strtoul(PQgetvalue(r, 0, 0), NULL, 10);
    Oid pl_oid = (Oid)strtoul(PQgetvalue(r, 0, 1), NULL, 10);
    Oid len_oid = (Oid)strtoul(PQgetvalue(r, 0, 2), NULL, 10);
    PQclear(r);
    int res = 0, rlen = 0;
    PQArgBlock a[2];
    a[0].len = 4;
    a[0].isint = 1;
    a[0].u.integer = -42;
    rec_take(out, "abs", PQfn(c, abs_oid, &res, &rlen, 1, a, 1));
    rec_printf(out, "  abs -> %d len %d\n", res, rlen);
    a[1] = a[0];
    a[1].u.integer = 100;
    rec_take(out, "pl", PQfn(c, pl_oid, &res, &rlen, 1, a, 2));
    rec_printf(out, "  pl -> %d len %d\n", res, rlen);
    char buf[64];
    a[0].isint = 0;
    a[0].len = 5;
    a[0].u.ptr = (int *)"hello";
    memset(buf, 0, sizeof buf);
    rec_take(out, "textlen", PQfn(c, len_oid, (int *)buf, &rlen, 0, a, 1));
    rec_printf(out, "  textlen -> len %d: ", rlen);
    rec_bytes(out, buf, rlen > 0 && rlen < (int)sizeof buf ? (size_t)rlen : 0);
    rec_printf(out, "\n");
    a[0].isint = 1;
    a[0].len = 4;
    a[0].u.integer = 1;
    a[1].u.integer = 0x7fffffff;
    rec_take(out, "overflow", PQfn(c, pl_oid, &res, &rlen, 1, a, 2));
    rec_take(out, "bad oid", PQfn(c, 1, &res, &rlen, 1, a, 1));
    rec_conn(out, "after", c);
}

/* The server ends the session in the middle of a statement (another
 * session terminates it, from a thread so both runs see the same timing). */
struct killer {
    int pid;
    int rc;
};

static void *kill_later(void *arg)
{
    struct killer *k = arg;
    char sql[64];
    usleep(150000);
    char *ci = pqa_conninfo(PQA_UNIX, NULL);
    PGconn *other = PQconnectdb(ci);
    free(ci);
    snprintf(sql, sizeof sql, "select pg_terminate_backend(%d)", k->pid);
    PGresult *r = PQexec(other, sql);
    k->rc = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    PQfinish(other);
    return NULL;
}

static void s_conn_lost(PGconn *c, struct record *out)
{
    struct killer k = {PQbackendPID(c), 0};
    pthread_t th;
    pthread_create(&th, NULL, kill_later, &k);
    rec_take(out, "killed", PQexec(c, "select pg_sleep(5)"));
    pthread_join(th, NULL);
    rec_printf(out, "terminated %d\n", k.rc);
    rec_conn(out, "lost", c);
    rec_take(out, "exec on lost", PQexec(c, "select 1"));
    rec_printf(out, "send on lost -> %d\n", PQsendQuery(c, "select 1"));
    rec_conn(out, "lost", c);
    PQreset(c);
    rec_conn(out, "reset", c);
    rec_take(out, "after reset", PQexec(c, "select 'back'"));
}

const struct pqa_scenario pqa_scen_exec[] = {
    {"exec_basic", s_exec_basic, PQA_UNIX},
    {"exec_basic_ssl", s_exec_basic, PQA_SSL},
    {"exec_basic_scram", s_exec_basic, PQA_SCRAM},
    {"exec_multi", s_exec_multi, PQA_UNIX},
    {"exec_copy_state", s_exec_copy_state, PQA_UNIX},
    {"exec_params", s_exec_params, PQA_UNIX},
    {"exec_params_ssl", s_exec_params, PQA_SCRAM_SSL},
    {"prepare_describe", s_prepare, PQA_UNIX},
    {"prepare_describe_tcp", s_prepare, PQA_TCP},
    {"notice_receiver", s_notice_receiver, PQA_UNIX},
    {"notice_processor", s_notice_processor, PQA_UNIX},
    {"notice_receiver_ssl", s_notice_receiver, PQA_SSL},
    {"notice_reentrant", s_notice_reentrant, PQA_UNIX},
    {"notify_self", s_notify_self, PQA_UNIX},
    {"notify_other", s_notify_other, PQA_UNIX},
    {"client_encoding", s_client_encoding, PQA_UNIX},
    {"encrypt_password", s_encrypt_password, PQA_UNIX},
    {"encrypt_password_scram_ssl", s_encrypt_password, PQA_SCRAM_SSL},
    {"conn_lost", s_conn_lost, PQA_UNIX},
    {"conn_lost_ssl", s_conn_lost, PQA_SSL},
    {"fn", s_fn, PQA_UNIX},
    {"fn_ssl", s_fn, PQA_SSL},
    {NULL, NULL, 0},
};
