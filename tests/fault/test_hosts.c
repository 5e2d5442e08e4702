/*
 * test_hosts.c -- connecting to hosts that are not there (issue 9, item 2:
 * "connection refused, unknown host, first host down, frozen or refusing
 * in a multi-host string: clear errors, failover to the next host without
 * blocking the loop").
 *
 * The hosts are real: a port nobody listens on (refused), a name under
 * .invalid (RFC 6761: never resolves), a PostgreSQL whose postmaster is
 * frozen (TCP handshakes complete, nothing answers), a PostgreSQL in smart
 * shutdown (FATAL 57P03 to every new session), and the shared server as
 * the good one.  Every case runs as its own task, all at once on one loop
 * beside bystanders and the stall meter:
 *   - each gets the outcome plain libpq gets outside a task for the same
 *     string (the same status, host, port and error message, byte for
 *     byte: the errors are libpq's own), checked first in plain threads;
 *   - each message names the cause (refused, translate host name, timeout
 *     expired, shutting down), and a failover lands on the good server;
 *   - the whole batch takes about as long as its slowest case, not the
 *     sum, the loop never stalls, the bystanders keep their pace.
 * PQping answers the same questions without a session.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "fault.h"
#include "pqawait.h"
#include "server2.h"
#include "stall.h"

static pqa_server2 *frozen_srv, *rejecting_srv;

#define BAD_NAME "pqa-nonexistent.invalid"

struct hcase {
    const char *name;
    const char *hosts;      /* host= */
    char ports[64];         /* port=, letters G R F J replaced by ports */
    int want_ok;            /* 1: must connect; 0: must fail */
    char want_port;         /* for an OK connection: the letter it lands on */
    const char *names[4];   /* the message must name one of these (BAD) */
    char conninfo[512];
    /* outcome, in a task and in plain libpq */
    int status[2];
    char port[2][16];
    char err[2][1024];
    double secs[2];         /* the connect */
    double total[2];        /* the connect and the ping */
    PGPing ping[2];
};

static int port_of(char letter)
{
    static int refused;
    switch (letter) {
    case 'G': return atoi(pqa_env_port());
    case 'F': return pqa_server2_port(frozen_srv);
    case 'J': return pqa_server2_port(rejecting_srv);
    default:
        if (!refused) {
            /* a port that was just free: bound, never listened on, closed */
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in sa = {.sin_family = AF_INET};
            sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            socklen_t len = sizeof sa;
            ck_assert(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
            ck_assert(getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
            refused = ntohs(sa.sin_port);
            close(fd);
        }
        return refused;
    }
}

static struct hcase cases[] = {
    {.name = "refused", .hosts = "127.0.0.1", .ports = "R", .names = {"Connection refused"}},
    {.name = "unknown host", .hosts = BAD_NAME, .ports = "G",
     .names = {"could not translate host name \"" BAD_NAME "\""}},
    {.name = "frozen", .hosts = "127.0.0.1", .ports = "F", .names = {"timeout expired"}},
    {.name = "refusing", .hosts = "127.0.0.1", .ports = "J", .names = {"the database system is shutting down"}},
    {.name = "first down", .hosts = "127.0.0.1,127.0.0.1", .ports = "R,G", .want_ok = 1, .want_port = 'G'},
    {.name = "first unknown", .hosts = BAD_NAME ",127.0.0.1", .ports = "G,G", .want_ok = 1, .want_port = 'G'},
    {.name = "first frozen", .hosts = "127.0.0.1,127.0.0.1", .ports = "F,G", .want_ok = 1, .want_port = 'G'},
    /* libpq moves on from a server that answers 57P03 ("cannot connect now") */
    {.name = "first refusing", .hosts = "127.0.0.1,127.0.0.1", .ports = "J,G", .want_ok = 1, .want_port = 'G'},
    {.name = "all bad", .hosts = "127.0.0.1," BAD_NAME ",127.0.0.1,127.0.0.1", .ports = "R,G,F,J",
     .names = {"Connection refused"}},
};
#define N_CASES (int)(sizeof cases / sizeof cases[0])

static void build_conninfo(struct hcase *c)
{
    char ports[128] = "";
    for (const char *p = c->ports; *p; p++) {
        char num[16];
        if (*p == ',') {
            strcat(ports, ",");
            continue;
        }
        snprintf(num, sizeof num, "%d", port_of(*p));
        strcat(ports, num);
    }
    snprintf(c->conninfo, sizeof c->conninfo,
             "host=%s port=%s dbname=%s user=pqa_trust sslmode=disable gssencmode=disable connect_timeout=1",
             c->hosts, ports, pqa_env_db());
}

/* One connect (and ping) of case c, recorded in slot k (0 task, 1 plain). */
static void attempt(struct hcase *c, int k)
{
    double t0 = pqa_now();
    PGconn *conn = PQconnectdb(c->conninfo);
    c->secs[k] = pqa_now() - t0;
    c->status[k] = PQstatus(conn);
    snprintf(c->port[k], sizeof c->port[k], "%s", c->status[k] == CONNECTION_OK ? PQport(conn) : "-");
    snprintf(c->err[k], sizeof c->err[k], "%s", PQerrorMessage(conn));
    PQfinish(conn);
    c->ping[k] = PQping(c->conninfo);
    c->total[k] = pqa_now() - t0;
}

static void *plain_thread(void *arg)
{
    attempt(arg, 1);
    return NULL;
}

static void *case_task(void *arg)
{
    attempt(arg, 0);
    return NULL;
}

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

START_TEST(test_hosts_at_once)
{
    for (int i = 0; i < N_CASES; i++)
        build_conninfo(&cases[i]);
    pqa_server2_check(frozen_srv);
    pqa_server2_check(rejecting_srv);

    /* plain libpq first, each case in a thread of its own (no tasks) */
    pthread_t th[N_CASES];
    for (int i = 0; i < N_CASES; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, plain_thread, &cases[i]), 0);
    for (int i = 0; i < N_CASES; i++)
        pthread_join(th[i], NULL);

    /* then every case as a task, all on one loop */
    struct ev_loop *loop = pqa_loop_new();
    pqa_stall st;
    pqa_stall_start(&st, loop);
    pqa_bystanders by;
    pqa_bystanders_start(&by, loop, 2);
    awaitlet_task *t[N_CASES];
    double t0 = pqa_now();
    for (int i = 0; i < N_CASES; i++)
        ck_assert_ptr_nonnull(t[i] = awaitlet_async_def(loop, case_task, &cases[i]));
    double slowest = 0;
    for (int i = 0; i < N_CASES; i++) {
        ck_assert_int_eq(awaitlet_join_ex(t[i], NULL), 0);
        if (cases[i].total[0] > slowest)
            slowest = cases[i].total[0];
    }
    double all = pqa_now() - t0;
    pqa_bystanders_stop(&by);
    pqa_stall_stop(&st);
    ck_assert_int_eq(awaitlet_loop_close(loop), 0);
    ev_loop_destroy(loop);
    pqa_server2_check(frozen_srv);
    pqa_server2_check(rejecting_srv);

    double sum = 0;
    for (int i = 0; i < N_CASES; i++) {
        struct hcase *c = &cases[i];
        sum += c->total[0];
        printf("%-15s %s on port %s after %.3f s (plain %.3f s), ping %d: %s\n", c->name,
               c->status[0] == CONNECTION_OK ? "OK " : "BAD", c->port[0], c->secs[0], c->secs[1], c->ping[0],
               c->status[0] == CONNECTION_OK ? "" : pqa_line(c->err[0]));
    }
    printf("all %d cases in %.3f s (slowest %.3f s, sum %.3f s); stall %.1f ms\n", N_CASES, all, slowest, sum,
           st.max_gap * 1e3);
    fflush(stdout);
    for (int i = 0; i < N_CASES; i++) {
        struct hcase *c = &cases[i];
        /* libpq's own outcome, byte for byte */
        ck_assert_msg(c->status[0] == c->status[1], "%s: status %d in a task, %d in plain libpq", c->name,
                      c->status[0], c->status[1]);
        ck_assert_msg(strcmp(c->port[0], c->port[1]) == 0, "%s: port %s in a task, %s plain", c->name, c->port[0],
                      c->port[1]);
        ck_assert_msg(strcmp(c->err[0], c->err[1]) == 0, "%s: in a task\n%s\nplain\n%s", c->name, c->err[0],
                      c->err[1]);
        ck_assert_msg(c->ping[0] == c->ping[1], "%s: PQping %d in a task, %d plain", c->name, c->ping[0],
                      c->ping[1]);
        int ok = c->status[0] == CONNECTION_OK;
        ck_assert_msg(ok == c->want_ok, "%s: %s", c->name, c->err[0]);
        if (ok) {
            char want[16];
            snprintf(want, sizeof want, "%d", port_of(c->want_port));
            ck_assert_msg(strcmp(c->port[0], want) == 0, "%s: landed on %s, not %s", c->name, c->port[0], want);
            ck_assert_int_eq(c->ping[0], PQPING_OK);
        } else {
            const char *names[5] = {c->names[0], c->names[1], c->names[2], c->names[3], NULL};
            pqa_assert_names(c->name, c->err[0], names);
        }
    }
    /* the bad ones, told apart by PQping */
    ck_assert_int_eq(cases[0].ping[0], PQPING_NO_RESPONSE);
    ck_assert_int_eq(cases[2].ping[0], PQPING_NO_RESPONSE);
    ck_assert_int_eq(cases[3].ping[0], PQPING_REJECT);
    /* every failure of the all-bad string is named, in host order */
    const char *e = cases[N_CASES - 1].err[0];
    const char *a = strstr(e, "Connection refused"), *b = strstr(e, "could not translate host name"),
               *c = strstr(e, "timeout expired"), *d = strstr(e, "the database system is shutting down");
    ck_assert_msg(a && b && c && d && a < b && b < c && c < d, "all bad: not every cause named in order:\n%s", e);
    /* at once, not one after the other: three cases wait ~2 s on the
     * frozen server, twice (connect and ping) */
    ck_assert_msg(all < slowest + pqa_bound(0.5), "the batch took %.3f s, its slowest case %.3f s", all, slowest);
    ck_assert_msg(sum > all * 2, "the cases did not overlap (sum %.3f s, batch %.3f s)", sum, all);
    pqa_bystanders_check(&by, 20, pqa_bound(0.25));
    pqa_stall_assert(&st, "multi-host");
}
END_TEST

int main(void)
{
    pqa_env_init();
    pqa_server2 *srv[2];
    pqa_server2_start(srv, 2);
    frozen_srv = srv[0];
    rejecting_srv = srv[1];
    pqa_server2_freeze(frozen_srv);
    pqa_server2_reject(rejecting_srv);
    Suite *s = suite_create("fault-hosts");
    TCase *tc = tcase_create("hosts");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_hosts_at_once);
    suite_add_tcase(s, tc);
    int rc = pqa_run_suite(s);
    pqa_server2_stop_all();
    return rc;
}
