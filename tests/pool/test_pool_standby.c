/*
 * test_pool_standby.c -- multi-host conninfo with target_session_attrs
 * through the pool, against a real primary and a real streaming standby
 * (tests/pool/standby.sh makes them, once for the program).
 *
 * A write pool (target_session_attrs=read-write) must land every
 * connection on the primary whatever the host order, also with a dead host
 * first in the list; a read pool (standby) every connection on the
 * standby; prefer-standby on the standby.  Writes through the write pool
 * become visible through the read pool by replication, and a write refused
 * by the standby leaves its connection reusable.  The server each
 * connection reached is asked (pg_is_in_recovery, port), not inferred.
 *
 * A host that accepts the TCP connection and then says nothing (a listener
 * of the test's that never accepts) gets connect_timeout -- libpq's 2 s
 * for "1" -- and then libpq's blocking connect goes on to the next host;
 * the pool must do the same, not fail the attempt and start over at the
 * silent host for ever.
 */
#include "pool_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PTR(i) ((void *)(intptr_t)(i))

#ifndef PQA_POOL_STANDBY
#error "PQA_POOL_STANDBY (the path of standby.sh) must be defined"
#endif

static char dir[128], phost[256], pport[16], shost[256], sport[16];

static void standby_start(void)
{
    snprintf(dir, sizeof dir, "/tmp/pqa-pool-standby.%ld", (long)getpid());
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "'%s' start %s && . %s/env && echo \"$PQA_PRIMARY_HOST $PQA_PRIMARY_PORT "
             "$PQA_STANDBY_HOST $PQA_STANDBY_PORT\" > %s/hp",
             PQA_POOL_STANDBY, dir, dir, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "FATAL: %s start failed\n", PQA_POOL_STANDBY);
        exit(1);
    }
    snprintf(cmd, sizeof cmd, "%s/hp", dir);
    FILE *f = fopen(cmd, "r");
    if (!f || fscanf(f, "%255s %15s %255s %15s", phost, pport, shost, sport) != 4) {
        fprintf(stderr, "FATAL: no standby environment in %s\n", cmd);
        exit(1);
    }
    fclose(f);
}

static void standby_stop(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' stop %s", PQA_POOL_STANDBY, dir);
    (void)system(cmd);
}

static pqawait_pool *pool(const char *hosts, const char *ports, const char *attrs)
{
    char ci[1024];
    snprintf(ci, sizeof ci,
             "host=%s port=%s dbname=pqawait user=pqa_trust sslmode=disable "
             "target_session_attrs=%s application_name=%s connect_timeout=5",
             hosts, ports, attrs, pt_app());
    pqawait_pool_options o = pt_options(2, 3);
    pqawait_pool *p = pqawait_pool_new(awaitlet_current_loop(), ci, &o);
    ck_assert_msg(p != NULL, "pqawait_pool_new: %s", strerror(errno));
    return p;
}

/* Check out all three connections at once and ask each where it is. */
static void all_on(pqawait_pool *p, int standby, const char *what)
{
    PGconn *c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = pqawait_pool_acquire(p);
        ck_assert_msg(c[i] != NULL, "%s: acquire: %s (%s)", what, strerror(errno),
                      pqawait_pool_error(p) ? pqawait_pool_error(p) : "");
    }
    for (int i = 0; i < 3; i++) {
        PGresult *r = PQexec(c[i], "select pg_is_in_recovery(), current_setting('port')");
        ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
        ck_assert_msg(strcmp(PQgetvalue(r, 0, 0), standby ? "t" : "f") == 0 &&
                          strcmp(PQgetvalue(r, 0, 1), standby ? sport : pport) == 0,
                      "%s: connection %d is on port %s (recovery %s)", what, i,
                      PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    for (int i = 0; i < 3; i++)
        pqawait_pool_release(p, c[i]);
}

static void *standby_task(void *arg)
{
    (void)arg;
    char hosts[1024], ports[64];

    /* primary first, standby first, a dead host first: always the primary */
    snprintf(hosts, sizeof hosts, "%s,%s", phost, shost);
    snprintf(ports, sizeof ports, "%s,%s", pport, sport);
    pqawait_pool *w1 = pool(hosts, ports, "read-write");
    snprintf(hosts, sizeof hosts, "127.0.0.1,127.0.0.1");
    snprintf(ports, sizeof ports, "%s,%s", sport, pport);
    pqawait_pool *w2 = pool(hosts, ports, "read-write"); /* over TCP, standby first */
    snprintf(hosts, sizeof hosts, "/tmp/pqa-no-such-dir,%s,%s", shost, phost);
    snprintf(ports, sizeof ports, "1,%s,%s", sport, pport);
    pqawait_pool *w3 = pool(hosts, ports, "primary");
    /* read pools */
    snprintf(hosts, sizeof hosts, "%s,%s", phost, shost);
    snprintf(ports, sizeof ports, "%s,%s", pport, sport);
    pqawait_pool *r1 = pool(hosts, ports, "standby");
    pqawait_pool *r2 = pool(hosts, ports, "prefer-standby");
    pqawait_pool *r3 = pool(hosts, ports, "read-only");

    all_on(w1, 0, "read-write, primary first");
    all_on(w2, 0, "read-write, standby first (TCP)");
    all_on(w3, 0, "primary, dead host and standby first");
    all_on(r1, 1, "standby");
    all_on(r2, 1, "prefer-standby");
    all_on(r3, 1, "read-only");

    /* a write through the write pool shows up through the read pool */
    PGconn *w = pqawait_pool_acquire(w1);
    PGresult *res = PQexec(w, "set client_min_messages = warning; drop table if exists pool_sb; create table pool_sb(v int); "
                              "insert into pool_sb values (41)");
    ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s", PQerrorMessage(w));
    PQclear(res);
    pqawait_pool_release(w1, w);
    long v = -1;
    for (int i = 0; i < 200 && v != 41; i++) {
        PGconn *r = pqawait_pool_acquire(r1);
        v = pt_int(r, "select coalesce(max(v), -1) from pool_sb");
        pqawait_pool_release(r1, r);
        if (v != 41)
            awaitlet_sleep(0.02);
    }
    ck_assert_int_eq(v, 41);
    /* a write refused by the standby: an error, the connection still good */
    PGconn *r = pqawait_pool_acquire(r1);
    res = PQexec(r, "insert into pool_sb values (1)");
    ck_assert_int_eq(PQresultStatus(res), PGRES_FATAL_ERROR);
    ck_assert_str_eq(PQresultErrorField(res, PG_DIAG_SQLSTATE), "25006");
    PQclear(res);
    pqawait_pool_release(r1, r);
    all_on(r1, 1, "standby after a refused write");
    struct pqawait_pool_stats s;
    pqawait_pool_stats(r1, &s);
    ck_assert_uint_eq(s.lost + s.discarded, 0);
    ck_assert_uint_eq(s.opened, 3);
    pqawait_pool_stats(w3, &s);
    ck_assert_uint_eq(s.connect_failures, 0); /* the dead host was skipped, not failed */

    pqawait_pool *all[] = { w1, w2, w3, r1, r2, r3 };
    for (int i = 0; i < 6; i++)
        pqawait_pool_close(all[i]);
    return PTR(1);
}

START_TEST(target_session_attrs)
{
    ck_assert_ptr_eq(pt_run(standby_task, NULL, 5), PTR(1));
}
END_TEST

/* A TCP listener on 127.0.0.1 that never accepts: connections complete in
 * its backlog and never hear a word.  Returns its port; *fd to close. */
static int silent_listener(int *fd)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    *fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(*fd, 0);
    ck_assert_int_eq(bind(*fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(*fd, 16), 0);
    ck_assert_int_eq(getsockname(*fd, (struct sockaddr *)&a, &len), 0);
    return ntohs(a.sin_port);
}

static void *silent_task(void *arg)
{
    (void)arg;
    int lfd, lport = silent_listener(&lfd);
    char ci[1024];
    snprintf(ci, sizeof ci,
             "host=127.0.0.1,%s,%s port=%d,%s,%s dbname=pqawait user=pqa_trust sslmode=disable "
             "target_session_attrs=read-write application_name=%s connect_timeout=1",
             shost, phost, lport, sport, pport, pt_app());
    /* libpq's own blocking connect, for reference: the primary, after 2 s */
    double t0 = pqa_now();
    PGconn *ref = PQconnectdb(ci);
    double ref_secs = pqa_now() - t0;
    ck_assert_msg(PQstatus(ref) == CONNECTION_OK, "libpq: %s", PQerrorMessage(ref));
    ck_assert_str_eq(PQport(ref), pport);
    PQfinish(ref);

    pqawait_pool_options o = pt_options(1, 1);
    o.connect_timeout = 30; /* the conninfo's per-host timeout decides */
    t0 = pqa_now();
    pqawait_pool *p = pqawait_pool_new(awaitlet_current_loop(), ci, &o);
    ck_assert_ptr_nonnull(p);
    ck_assert_msg(pqawait_pool_wait(p, 10) == 0, "pool: %s (libpq took %.2f s)",
                  pqawait_pool_error(p) ? pqawait_pool_error(p) : strerror(errno), ref_secs);
    double secs = pqa_now() - t0;
    ck_assert_msg(secs >= 1.8 && secs < ref_secs + 2, "the pool connected after %.2f s, libpq after %.2f s",
                  secs, ref_secs);
    PGconn *c = pqawait_pool_acquire(p);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(pt_int(c, "select pg_is_in_recovery()::int"), 0);
    ck_assert_int_eq(pt_int(c, "select current_setting('port')::int"), atoi(pport));
    pqawait_pool_release(p, c);
    struct pqawait_pool_stats s;
    pqawait_pool_stats(p, &s);
    ck_assert_uint_eq(s.connect_failures, 0);
    ck_assert_uint_eq(s.opened, 1);
    pqawait_pool_close(p);
    close(lfd);
    return PTR(1);
}

START_TEST(silent_host_skipped_after_connect_timeout)
{
    ck_assert_ptr_eq(pt_run(silent_task, NULL, 5), PTR(1));
}
END_TEST

int main(void)
{
    pqa_env_init();
    standby_start();
    Suite *s = suite_create("pool-standby");
    TCase *tc = tcase_create("standby");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, target_session_attrs);
    tcase_add_test(tc, silent_host_skipped_after_connect_timeout);
    suite_add_tcase(s, tc);
    int rc = pqa_run_suite(s);
    standby_stop();
    return rc;
}
