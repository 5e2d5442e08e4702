/*
 * test_pool_hosts.c -- the pool walks a multi-host conninfo exactly as
 * libpq's blocking PQconnectdb does: same server reached (same host entry:
 * PQhost and PQport), same failure message when no host is acceptable.
 *
 * The reference is always plain PQconnectdb with the same conninfo, called
 * outside any task (so libpq's own blocking walk, its own timers), and the
 * pool is then judged against what it did.  The hard cases are the ones
 * where the pool has to take over from libpq: a host that accepts the TCP
 * connection and then says nothing (a listener of the test's that never
 * accepts) gets connect_timeout -- libpq's private timer -- and the pool
 * skips it with an attempt of its own; that must not change the result:
 *
 *   - target_session_attrs=prefer-standby with no standby in the list:
 *     libpq's second pass goes back over the *whole* list (hosts before the
 *     silent one too, the silent one waited on again) and accepts any
 *     server;
 *   - failures: the message names every host tried, the silent ones with
 *     libpq's "timeout expired";
 *   - host lists (and connect_timeout, target_session_attrs) that come
 *     from a service file (service=name, PGSERVICEFILE) rather than from
 *     the conninfo itself.
 *
 * Only the with-pg server is needed: reached over its unix socket and over
 * TCP it gives two distinct host entries for the same primary.
 */
#include "hosts_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* prefer-standby, no standby: the primary first, then a silent host.  libpq:
 * pass 1 rejects the primary, waits on the silent host, pass 2 takes the
 * primary.  The pool must not fail at the silent (last) host. */
START_TEST(prefer_standby_primary_before_silent_host)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = "prefer-standby: primary, silent" };
    char h[512];
    snprintf(h, sizeof h, "host=127.0.0.1,127.0.0.1 port=%s,%d connect_timeout=1 "
             "target_session_attrs=prefer-standby", pqa_env_port(), ph_silent_listener(&sc, "127.0.0.1", 0));
    ph_conninfo(&sc, h);
    ph_run(&sc, 1);
}
END_TEST

/* prefer-standby, no standby: primary (socket), silent, primary (TCP).
 * libpq's pass 2 starts again at the first host: the socket entry. */
START_TEST(prefer_standby_second_pass_from_first_host)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = "prefer-standby: primary (socket), silent, primary (TCP)" };
    char h[1024];
    snprintf(h, sizeof h, "host=%s,127.0.0.1,127.0.0.1 port=%s,%d,%s connect_timeout=1 "
             "target_session_attrs=prefer-standby", pqa_env_host(), pqa_env_port(), ph_silent_listener(&sc, "127.0.0.1", 0),
             pqa_env_port());
    ph_conninfo(&sc, h);
    ph_run(&sc, 1);
}
END_TEST

/* prefer-standby, a silent host first: the primary after it (libpq: both
 * passes wait on the silent host). */
START_TEST(prefer_standby_silent_host_first)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = "prefer-standby: silent, primary" };
    char h[512];
    snprintf(h, sizeof h, "host=127.0.0.1,127.0.0.1 port=%d,%s connect_timeout=1 "
             "target_session_attrs=prefer-standby", ph_silent_listener(&sc, "127.0.0.1", 0), pqa_env_port());
    ph_conninfo(&sc, h);
    ph_run(&sc, 1);
}
END_TEST

/* Nothing reachable: a silent host and a refused port, twice over
 * (prefer-standby's two passes); the message names all four tries. */
START_TEST(prefer_standby_nothing_reachable_message)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = "prefer-standby: silent, refused" };
    char h[512];
    snprintf(h, sizeof h, "host=127.0.0.1,127.0.0.1 port=%d,%d connect_timeout=1 "
             "target_session_attrs=prefer-standby", ph_silent_listener(&sc, "127.0.0.1", 0), ph_refused_port("127.0.0.1"));
    ph_conninfo(&sc, h);
    ph_run(&sc, 0);
}
END_TEST

/* target_session_attrs=standby, no standby: the silent host is skipped,
 * the primary refused; the message has both. */
START_TEST(standby_message_names_skipped_host)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = "standby: silent, primary" };
    char h[512];
    snprintf(h, sizeof h, "host=127.0.0.1,127.0.0.1 port=%d,%s connect_timeout=1 "
             "target_session_attrs=standby", ph_silent_listener(&sc, "127.0.0.1", 0), pqa_env_port());
    ph_conninfo(&sc, h);
    ph_run(&sc, 0);
}
END_TEST

/* prefer-standby, no standby: the primary, then a server that refuses the
 * session.  libpq's pass 1 ends at the refusal -- no pass 2, no connection
 * -- so the pool must fail too, with the same message, not take the
 * primary in a second pass of its own. */
START_TEST(prefer_standby_fatal_error_ends_walk)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = "prefer-standby: primary, FATAL" };
    char h[512];
    snprintf(h, sizeof h, "host=127.0.0.1,127.0.0.1 port=%s,%d connect_timeout=1 "
             "target_session_attrs=prefer-standby", pqa_env_port(), ph_fatal_listener("127.0.0.1", 0, "28000"));
    ph_conninfo(&sc, h);
    ph_run(&sc, 0);
}
END_TEST

/* A hostaddr-only list (no host anywhere: PGHOST unset): prefer-standby's
 * pass 1 over addresses, the silent one last, then pass 2. */
START_TEST(hostaddr_list_prefer_standby)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = "hostaddr only, prefer-standby: primary, silent" };
    ck_assert_int_eq(unsetenv("PGHOST"), 0);
    char h[512];
    snprintf(h, sizeof h, "hostaddr=127.0.0.1,127.0.0.1 port=%s,%d connect_timeout=1 "
             "target_session_attrs=prefer-standby", pqa_env_port(), ph_silent_listener(&sc, "127.0.0.1", 0));
    ph_conninfo(&sc, h);
    ph_run(&sc, 1);
}
END_TEST

/* The host list and timeout from the environment (PGHOST, PGPORT,
 * PGCONNECT_TIMEOUT), none in the conninfo: a silent host, the primary. */
START_TEST(environment_host_list)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = "PGHOST: silent, primary" };
    char port[64];
    snprintf(port, sizeof port, "%d,%s", ph_silent_listener(&sc, "127.0.0.1", 0), pqa_env_port());
    ck_assert_int_eq(setenv("PGHOST", "127.0.0.1,127.0.0.1", 1), 0);
    ck_assert_int_eq(setenv("PGPORT", port, 1), 0);
    ck_assert_int_eq(setenv("PGCONNECT_TIMEOUT", "1", 1), 0);
    ph_conninfo(&sc, "");
    ph_run(&sc, 1);
}
END_TEST

/* Write a service file with one section `name` holding `body`, and point
 * PGSERVICEFILE at it (this test's process only: Check forks each test). */
static void service_file(const char *name, const char *body)
{
    static char path[128];
    snprintf(path, sizeof path, "/tmp/pqa-pool-hosts.%ld.conf", (long)getpid());
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "# written by test_pool_hosts.c\n[%s]\n%s\n", name, body);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(setenv("PGSERVICEFILE", path, 1), 0);
}

static void service_cleanup(void)
{
    const char *path = getenv("PGSERVICEFILE");
    if (path)
        unlink(path);
}

/* The host list, connect_timeout and target_session_attrs come from the
 * service: a silent host, then the primary.  libpq skips the silent host
 * after 2 s; the pool must see the same list and timeout. */
START_TEST(service_file_host_list)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = "service: silent, primary" };
    char body[512];
    snprintf(body, sizeof body, "host=127.0.0.1,127.0.0.1\nport=%d,%s\nconnect_timeout=1\n",
             ph_silent_listener(&sc, "127.0.0.1", 0), pqa_env_port());
    service_file("pqa_hosts", body);
    ph_conninfo(&sc, "service=pqa_hosts");
    ph_run(&sc, 1);
    service_cleanup();
}
END_TEST

/* The same with prefer-standby from the service: primary (socket) first,
 * then a silent host -- the second pass must come back to the socket. */
START_TEST(service_file_prefer_standby)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = "service: prefer-standby, primary, silent" };
    char body[1024];
    snprintf(body, sizeof body, "host=%s,127.0.0.1\nport=%s,%d\nconnect_timeout=1\n"
             "target_session_attrs=prefer-standby\n", pqa_env_host(), pqa_env_port(), ph_silent_listener(&sc, "127.0.0.1", 0));
    service_file("pqa_hosts_ps", body);
    ph_conninfo(&sc, "service=pqa_hosts_ps");
    ph_run(&sc, 1);
    service_cleanup();
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("pool-hosts");
    TCase *tc = tcase_create("hosts");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, prefer_standby_primary_before_silent_host);
    tcase_add_test(tc, prefer_standby_second_pass_from_first_host);
    tcase_add_test(tc, prefer_standby_silent_host_first);
    tcase_add_test(tc, prefer_standby_nothing_reachable_message);
    tcase_add_test(tc, standby_message_names_skipped_host);
    tcase_add_test(tc, service_file_host_list);
    tcase_add_test(tc, service_file_prefer_standby);
    tcase_add_test(tc, prefer_standby_fatal_error_ends_walk);
    tcase_add_test(tc, hostaddr_list_prefer_standby);
    tcase_add_test(tc, environment_host_list);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
