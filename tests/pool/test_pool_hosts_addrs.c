/*
 * test_pool_hosts_addrs.c -- a host *name* with several addresses: when
 * its first address is silent, libpq's blocking PQconnectdb waits
 * connect_timeout on it and goes on to the name's next address (not to the
 * next host); the pool must do the same -- reach the same server, wait on
 * the silent address as many times, fail with the same message -- and,
 * going on with the next address itself, keep what libpq does with the
 * name: the password file is searched by the name, TLS checks the
 * server's certificate against the name, target_session_attrs and
 * prefer-standby's second pass apply.  Each scenario is judged against
 * plain PQconnectdb outside tasks (hosts_common.c).
 *
 * No machine here has a name with two addresses, so the test makes one:
 * it runs in a mount namespace of its own (unshare(CLONE_NEWNS), as root)
 * with /etc/hosts bind-mounted from a copy that adds
 *     127.0.0.2 pqa-multi
 *     127.0.0.1 pqa-multi
 * and /etc/gai.conf from one that ranks 127.0.0.2 first (glibc's default
 * sorting would put 127.0.0.1, the source address, first).  The with-pg
 * server listens on 127.0.0.1 only, so a silent listener of the test's
 * takes 127.0.0.2 with the server's own port.  Not root, or no namespace
 * allowed: the program exits 77 (skipped) saying why.
 */
#include "hosts_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAME "pqa-multi"   /* 127.0.0.2, 127.0.0.1 */
#define THREE "pqa-three"  /* 127.0.0.2, 127.0.0.3, 127.0.0.1 */

/* Copy `from` (if it exists) into a new file `to`, then append `extra`. */
static int write_file(const char *to, const char *from, const char *extra)
{
    FILE *out = fopen(to, "w");
    if (!out)
        return -1;
    FILE *in = from ? fopen(from, "r") : NULL;
    if (in) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, in)) > 0)
            (void)fwrite(buf, 1, n, out);
        fclose(in);
    }
    fputs(extra, out);
    return fclose(out);
}

/* The addresses of name in getaddrinfo's order, as libpq asks for them. */
static void name_addresses(const char *name, char *out, size_t len)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res, *a;
    out[0] = 0;
    if (getaddrinfo(name, NULL, &hints, &res) != 0)
        return;
    for (a = res; a; a = a->ai_next) {
        char s[INET6_ADDRSTRLEN] = "?";
        if (a->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)a->ai_addr)->sin_addr, s, sizeof s);
        size_t k = strlen(out);
        snprintf(out + k, len - k, "%s%s", k ? " " : "", s);
    }
    freeaddrinfo(res);
}

/* This process (and the test children Check forks) gets its own mount
 * namespace where NAME has two addresses.  NULL when done, else why the
 * test cannot run here.  Before any thread exists: a namespace is per
 * thread, and libpq's lookups run on worker threads made later. */
static const char *isolate(void)
{
    static char why[256];
    if (geteuid() != 0)
        return "not root: the test needs a mount namespace of its own (unshare -m) to give a host "
               "name two addresses in /etc/hosts";
    if (unshare(CLONE_NEWNS) != 0) {
        snprintf(why, sizeof why, "unshare(CLONE_NEWNS) refused: %s", strerror(errno));
        return why;
    }
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        snprintf(why, sizeof why, "mount --make-rprivate /: %s", strerror(errno));
        return why;
    }
    char hosts[128], gai[128];
    snprintf(hosts, sizeof hosts, "/tmp/pqa-hosts-addrs.%ld.hosts", (long)getpid());
    snprintf(gai, sizeof gai, "/tmp/pqa-hosts-addrs.%ld.gai", (long)getpid());
    /* glibc's default precedence table, with 127.0.0.2 ranked above the
     * rest of IPv4 (a precedence line replaces the whole table) */
    static const char gai_conf[] = "precedence ::1/128 50\nprecedence ::/0 40\nprecedence 2002::/16 30\n"
                                   "precedence ::/96 20\nprecedence ::ffff:127.0.0.2/128 15\n"
                                   "precedence ::ffff:127.0.0.3/128 12\nprecedence ::ffff:0:0/96 10\n";
    int ok = write_file(hosts, "/etc/hosts",
                        "\n127.0.0.2 " NAME " " THREE "\n127.0.0.3 " THREE "\n127.0.0.1 " NAME " " THREE "\n") == 0 &&
             write_file(gai, NULL, gai_conf) == 0;
    const char *what = "/etc/hosts";
    if (ok && (ok = mount(hosts, "/etc/hosts", NULL, MS_BIND, NULL) == 0)) {
        what = "/etc/gai.conf";
        ok = mount(gai, "/etc/gai.conf", NULL, MS_BIND, NULL) == 0;
    }
    int err = errno;
    unlink(hosts);
    unlink(gai);
    if (!ok) {
        snprintf(why, sizeof why, "cannot bind-mount a file over %s: %s", what, strerror(err));
        return why;
    }
    return NULL;
}

/* The silent listener on NAME's first address, with the server's port. */
static int silent_first(struct ph_scenario *sc)
{
    return ph_silent_listener(sc, "127.0.0.2", atoi(pqa_env_port()));
}

/* The server's port: 127.0.0.2 silent, 127.0.0.1 the server. */
START_TEST(name_first_address_silent)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = NAME ": silent address, then the server" };
    silent_first(&sc);
    ph_conninfo(&sc, "host=" NAME " connect_timeout=1");
    ph_run(&sc, 1);
}
END_TEST

/* No address answers: 127.0.0.2 silent, 127.0.0.1 refused (same port);
 * libpq's message has a line per address, each naming NAME and the
 * address. */
START_TEST(name_no_address_answers_message)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = NAME ": silent address, refused address" };
    int port = ph_silent_listener(&sc, "127.0.0.2", 0);
    char h[256];
    snprintf(h, sizeof h, "host=" NAME " port=%d connect_timeout=1", port);
    ph_conninfo(&sc, h);
    ph_run(&sc, 0);
    ck_assert_msg(strstr(sc.ref.msg, "(127.0.0.1)") != NULL, "127.0.0.1:%d was not refused: %s", port,
                  sc.ref.msg);
}
END_TEST

/* A list: NAME (silent, refused), then a refused 127.0.0.1 port: the
 * next host comes after the name's last address, and the message has a
 * line for each of the three. */
START_TEST(name_then_next_host)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = NAME " (silent, refused), then a refused host" };
    int port = ph_silent_listener(&sc, "127.0.0.2", 0);
    char h[512];
    snprintf(h, sizeof h, "host=" NAME ",127.0.0.1 port=%d,%d connect_timeout=1", port,
             ph_refused_port("127.0.0.1"));
    ph_conninfo(&sc, h);
    ph_run(&sc, 0);
}
END_TEST

/* target_session_attrs=standby, no standby: the silent address times
 * out, the server at the next address is refused for not being a standby;
 * the message has both lines. */
START_TEST(name_standby_message)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = NAME ": standby wanted, silent, primary" };
    silent_first(&sc);
    ph_conninfo(&sc, "host=" NAME " connect_timeout=1 target_session_attrs=standby");
    ph_run(&sc, 0);
}
END_TEST

/* prefer-standby, no standby: pass 1 waits on the silent address and
 * rejects the primary at the next one, pass 2 goes over the name again,
 * waits on the silent address again and takes the primary. */
START_TEST(name_prefer_standby_second_pass)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = NAME ": prefer-standby, silent, primary" };
    silent_first(&sc);
    ph_conninfo(&sc, "host=" NAME " connect_timeout=1 target_session_attrs=prefer-standby");
    ph_run(&sc, 1);
}
END_TEST

/* A password from the password file, whose entry names the host by NAME
 * (libpq looks it up by host, not by address): pqa_scram needs one over
 * TCP. */
START_TEST(name_password_file_by_name)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = NAME ": password file entry for the name" };
    silent_first(&sc);
    char path[128];
    snprintf(path, sizeof path, "/tmp/pqa-hosts-addrs.%ld.pgpass", (long)getpid());
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, NAME ":%s:*:pqa_scram:scram-secret\n", pqa_env_port());
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(chmod(path, 0600), 0);
    snprintf(sc.ci, sizeof sc.ci,
             "host=" NAME " connect_timeout=1 dbname=%s user=pqa_scram passfile=%s sslmode=disable "
             "gssencmode=disable application_name=%s",
             pqa_env_db(), path, pt_app());
    ph_run(&sc, 1);
    unlink(path);
}
END_TEST

/* sslmode=verify-full: the certificate (localhost, 127.0.0.1) is checked
 * against NAME, as libpq does, so both fail the same way -- a check
 * against the address would have passed. */
START_TEST(name_tls_checks_the_name)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = NAME ": verify-full checks the name" };
    silent_first(&sc);
    snprintf(sc.ci, sizeof sc.ci,
             "host=" NAME " connect_timeout=1 dbname=%s user=pqa_trust sslmode=verify-full sslrootcert=%s "
             "gssencmode=disable application_name=%s",
             pqa_env_db(), pqa_env_sslroot(), pt_app());
    ph_run(&sc, 0);
    ck_assert_msg(strstr(sc.ref.msg, "does not match host name \"" NAME "\"") != NULL, "%s", sc.ref.msg);
}
END_TEST

/* Three addresses: silent, refused, the server.  libpq goes from the
 * refused address to the next one (not to the next host) by itself; the
 * pool hands it the two after the silent one. */
START_TEST(three_silent_refused_server)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = THREE ": silent, refused, the server" };
    silent_first(&sc);
    ph_conninfo(&sc, "host=" THREE " connect_timeout=1");
    ph_run(&sc, 1);
}
END_TEST

/* Three addresses: silent, silent, the server: two timeouts, the second
 * one on an address the pool gave libpq (the one counted here). */
START_TEST(three_silent_silent_server)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = THREE ": silent, silent, the server" };
    silent_first(&sc);
    ph_silent_listener(&sc, "127.0.0.3", atoi(pqa_env_port()));
    ph_conninfo(&sc, "host=" THREE " connect_timeout=1");
    ph_run(&sc, 1);
}
END_TEST

/* Three addresses: silent, a server that answers 57P03 "cannot connect
 * now", the server.  libpq leaves the *name* at 57P03 (try_next_host: no
 * further address of it), so with no host after it the connect fails --
 * the pool must not go on to the name's third address. */
START_TEST(three_cannot_connect_now_leaves_the_name)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = THREE ": silent, 57P03, the server" };
    silent_first(&sc);
    ph_fatal_listener("127.0.0.3", atoi(pqa_env_port()), "57P03");
    ph_conninfo(&sc, "host=" THREE " connect_timeout=1");
    ph_run(&sc, 0);
}
END_TEST

/* The same with a host after the name: libpq goes from 57P03 at the
 * name's second address to that host (the socket). */
START_TEST(three_cannot_connect_now_next_host)
{
    struct ph_scenario sc = { .silent_fd = -1, .name = THREE ": silent, 57P03, then the socket" };
    silent_first(&sc);
    ph_fatal_listener("127.0.0.3", atoi(pqa_env_port()), "57P03");
    char h[512];
    snprintf(h, sizeof h, "host=" THREE ",%s connect_timeout=1", pqa_env_host());
    ph_conninfo(&sc, h);
    ph_run(&sc, 1);
}
END_TEST

int main(void)
{
    const char *why = isolate();
    if (why) {
        printf("pool-hosts-addrs skipped: %s\n", why);
        return 77;
    }
    static const char *const want[][2] = { { NAME, "127.0.0.2 127.0.0.1" },
                                            { THREE, "127.0.0.2 127.0.0.3 127.0.0.1" } };
    for (int i = 0; i < 2; i++) {
        char addrs[256];
        name_addresses(want[i][0], addrs, sizeof addrs);
        if (strcmp(addrs, want[i][1]) != 0) {
            /* the namespace works but the name is not what the test needs */
            fprintf(stderr, "pool-hosts-addrs: %s resolves to \"%s\", not \"%s\"\n", want[i][0], addrs,
                    want[i][1]);
            return 1;
        }
    }
    pqa_env_init();
    Suite *s = suite_create("pool-hosts-addrs");
    TCase *tc = tcase_create("addrs");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, name_first_address_silent);
    tcase_add_test(tc, name_no_address_answers_message);
    tcase_add_test(tc, name_then_next_host);
    tcase_add_test(tc, name_standby_message);
    tcase_add_test(tc, name_prefer_standby_second_pass);
    tcase_add_test(tc, name_password_file_by_name);
    tcase_add_test(tc, name_tls_checks_the_name);
    tcase_add_test(tc, three_silent_refused_server);
    tcase_add_test(tc, three_silent_silent_server);
    tcase_add_test(tc, three_cannot_connect_now_leaves_the_name);
    tcase_add_test(tc, three_cannot_connect_now_next_host);
    suite_add_tcase(s, tc);
    return pqa_run_suite(s);
}
