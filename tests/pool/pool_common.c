/*
 * pool_common.c -- see pool_common.h.
 */
#include "pool_common.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

const char *pt_app(void)
{
    static char buf[64];
    static int n;
    snprintf(buf, sizeof buf, "pqa_pool_%ld_%d", (long)getpid(), ++n);
    return buf;
}

char *pt_conninfo(const char *app, const char *extra)
{
    char buf[512];
    snprintf(buf, sizeof buf, "application_name=%s %s", app, extra ? extra : "");
    return pqa_conninfo(PQA_UNIX, buf);
}

pqawait_pool_options pt_options(int min_size, int max_size)
{
    pqawait_pool_options o;
    pqawait_pool_options_init(&o);
    o.min_size = min_size;
    o.max_size = max_size;
    o.timeout = 10;
    return o;
}

void *pt_run(awaitlet_fn fn, void *arg, double grace)
{
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t = awaitlet_async_def(loop, fn, arg);
    ck_assert_msg(t != NULL, "awaitlet_async_def: %s", strerror(errno));
    void *res = NULL;
    ck_assert_msg(awaitlet_join_ex(t, &res) == 0, "join: %s", strerror(errno));
    double until = pqa_now() + grace;
    while (awaitlet_loop_tasks(loop) > 0 && pqa_now() < until)
        ev_run(loop, EVRUN_ONCE);
    ck_assert_msg(awaitlet_loop_tasks(loop) == 0,
                  "%u tasks still alive %.1f s after the test's task ended (the pool's tasks "
                  "did not end)",
                  awaitlet_loop_tasks(loop), grace);
    ck_assert_int_eq(awaitlet_loop_close(loop), 0);
    ev_loop_destroy(loop);
    return res;
}

static PGconn *mon;

PGconn *pt_monitor(void)
{
    if (!mon)
        mon = pqa_connect(PQA_UNIX, "application_name=pqa_pool_monitor");
    return mon;
}

const char *pt_sql(const char *sql)
{
    static char out[256];
    PGresult *r = PQexec(pt_monitor(), sql);
    ExecStatusType st = PQresultStatus(r);
    ck_assert_msg(st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK, "monitor: %s: %s", sql,
                  PQerrorMessage(mon));
    out[0] = 0;
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(out, sizeof out, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return out;
}

int pt_backends(const char *app)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "select count(*) from pg_stat_activity where application_name = '%s'", app);
    return atoi(pt_sql(sql));
}

int pt_terminate(const char *app)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "select count(pg_terminate_backend(pid)) from pg_stat_activity "
             "where application_name = '%s'",
             app);
    return atoi(pt_sql(sql));
}

int pt_wait_backends(const char *app, int n, double timeout)
{
    double until = pqa_now() + timeout;
    int got;
    while ((got = pt_backends(app)) != n && pqa_now() < until)
        awaitlet_sleep(0.02);
    return got;
}

long pt_int(PGconn *conn, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    long v = -999;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        v = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

int pt_pid(PGconn *conn)
{
    return (int)pt_int(conn, "select pg_backend_pid()");
}

int pt_until(int (*cond)(void *), void *arg, double timeout)
{
    double until = pqa_now() + timeout;
    while (!cond(arg)) {
        if (pqa_now() >= until)
            return 0;
        awaitlet_sleep(0.005);
    }
    return 1;
}

void pt_stop_backend(int pid)
{
    pid_t w = fork();
    ck_assert_int_ge(w, 0);
    if (w == 0) {
        /* no descriptor of the test's: meson waits for its pipes to close */
        for (int fd = 0; fd < 1024; fd++)
            close(fd);
        setsid();
        sleep(15);
        kill(pid, SIGCONT);
        _exit(0);
    }
    ck_assert_int_eq(kill(pid, SIGSTOP), 0);
}

void pt_cont_backend(int pid)
{
    kill(pid, SIGCONT);
}
