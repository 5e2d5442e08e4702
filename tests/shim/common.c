/*
 * common.c -- environment, connections, tasks and the interposition proof
 * shared by the shim's integration tests (see common.h).
 */
#include "common.h"
#include "pqawait.h"

#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef PQA_HAVE_VALGRIND
#include <valgrind/valgrind.h>
#endif

static const char *env_host, *env_port, *env_db, *env_sslroot;

static const char *need(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        fprintf(stderr,
                "FATAL: %s is not set.  The shim tests need a real PostgreSQL: run them\n"
                "through tests/pg/with-pg (meson test does) or export PQAWAIT_TEST_HOST,\n"
                "PQAWAIT_TEST_PORT, PQAWAIT_TEST_DB and PQAWAIT_TEST_SSLROOT yourself.\n",
                name);
        exit(1);
    }
    return v;
}

void pqa_env_init(void)
{
    env_host = need("PQAWAIT_TEST_HOST");
    env_port = need("PQAWAIT_TEST_PORT");
    env_db = need("PQAWAIT_TEST_DB");
    env_sslroot = need("PQAWAIT_TEST_SSLROOT");
    if (access(env_sslroot, R_OK) != 0) {
        fprintf(stderr, "FATAL: PQAWAIT_TEST_SSLROOT=%s is not readable: %s\n", env_sslroot,
                strerror(errno));
        exit(1);
    }
}

const char *pqa_env_host(void) { return env_host; }
const char *pqa_env_port(void) { return env_port; }
const char *pqa_env_db(void) { return env_db; }
const char *pqa_env_sslroot(void) { return env_sslroot; }

/* conninfo values are single-quoted, backslash-escaped: paths may hold spaces */
static void append_kv(char *buf, size_t cap, const char *key, const char *val)
{
    size_t n = strlen(buf);
    n += (size_t)snprintf(buf + n, cap - n, "%s%s='", n ? " " : "", key);
    for (; *val && n + 3 < cap; val++) {
        if (*val == '\'' || *val == '\\')
            buf[n++] = '\\';
        buf[n++] = *val;
    }
    snprintf(buf + n, cap - n, "'");
}

char *pqa_conninfo(pqa_kind kind, const char *extra)
{
    size_t cap = 2048 + (extra ? strlen(extra) : 0);
    char *buf = calloc(1, cap);
    ck_assert_ptr_nonnull(buf);
    switch (kind) {
    case PQA_UNIX:
        append_kv(buf, cap, "host", env_host);
        break;
    case PQA_TCP:
    case PQA_SCRAM:
        append_kv(buf, cap, "host", "127.0.0.1");
        append_kv(buf, cap, "sslmode", "disable");
        break;
    case PQA_TCP_NAME:
        append_kv(buf, cap, "host", "localhost");
        append_kv(buf, cap, "sslmode", "disable");
        break;
    case PQA_SSL:
    case PQA_SCRAM_SSL:
        append_kv(buf, cap, "host", "localhost");
        append_kv(buf, cap, "sslmode", "verify-full");
        append_kv(buf, cap, "sslrootcert", env_sslroot);
        break;
    }
    append_kv(buf, cap, "port", env_port);
    append_kv(buf, cap, "dbname", env_db);
    if (kind == PQA_SCRAM || kind == PQA_SCRAM_SSL) {
        append_kv(buf, cap, "user", "pqa_scram");
        append_kv(buf, cap, "password", "scram-secret");
    } else {
        append_kv(buf, cap, "user", "pqa_trust");
    }
    if (extra) {
        strcat(buf, " ");
        strcat(buf, extra);
    }
    return buf;
}

char *pqa_conninfo_port(int port, const char *extra)
{
    char p[16];
    size_t cap = 1024 + (extra ? strlen(extra) : 0);
    char *buf = calloc(1, cap);
    ck_assert_ptr_nonnull(buf);
    snprintf(p, sizeof p, "%d", port);
    append_kv(buf, cap, "host", "127.0.0.1");
    append_kv(buf, cap, "port", p);
    append_kv(buf, cap, "dbname", env_db);
    append_kv(buf, cap, "user", "pqa_trust");
    append_kv(buf, cap, "sslmode", "disable");
    if (extra) {
        strcat(buf, " ");
        strcat(buf, extra);
    }
    return buf;
}

PGconn *pqa_connect(pqa_kind kind, const char *extra)
{
    char *ci = pqa_conninfo(kind, extra);
    PGconn *conn = PQconnectdb(ci);
    ck_assert_msg(conn && PQstatus(conn) == CONNECTION_OK, "connect (%s) failed: %s", ci,
                  conn ? PQerrorMessage(conn) : "out of memory");
    free(ci);
    return conn;
}

PGresult *pqa_exec_ok(PGconn *conn, const char *sql, ExecStatusType expect)
{
    PGresult *r = PQexec(conn, sql);
    ck_assert_msg(r && PQresultStatus(r) == expect, "%s: expected %s, got %s: %s", sql,
                  PQresStatus(expect), r ? PQresStatus(PQresultStatus(r)) : "NULL",
                  PQerrorMessage(conn));
    return r;
}

void *pqa_usable_task(void *conn)
{
    PGresult *r = pqa_exec_ok(conn, "select 'usable'", PGRES_TUPLES_OK);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "usable");
    PQclear(r);
    return NULL;
}

double pqa_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int pqa_slow_build(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return 1;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer) || __has_feature(thread_sanitizer)
    return 1;
#endif
#endif
#ifdef PQA_HAVE_VALGRIND
    if (RUNNING_ON_VALGRIND)
        return 1;
#endif
    return 0;
}

int pqa_tsan_build(void)
{
#if defined(__SANITIZE_THREAD__)
    return 1;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
    return 1;
#endif
#endif
    return 0;
}

struct ev_loop *pqa_loop_new(void)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(loop);
    return loop;
}

void *pqa_run_in_task(awaitlet_fn fn, void *arg)
{
    struct ev_loop *loop = pqa_loop_new();
    awaitlet_task *t = awaitlet_async_def(loop, fn, arg);
    ck_assert_msg(t != NULL, "awaitlet_async_def: %s", strerror(errno));
    errno = 0;
    void *res = awaitlet_join(t);
    ck_assert_msg(res != NULL || errno == 0, "awaitlet_join: %s", strerror(errno));
    ck_assert_uint_eq(awaitlet_loop_tasks(loop), 0);
    ev_loop_destroy(loop);
    return res;
}

/* ---- interposition proof ---- */

/* libc symbols may be claimed first by a sanitizer runtime, whose
 * interceptor then calls the next definition (ours); the behavioural check
 * in pqa_check_interposed proves the chain still reaches the shim. */
static int sanitizer_lib(const char *path)
{
    return strstr(path, "libasan") || strstr(path, "libtsan") || strstr(path, "libclang_rt");
}

static void assert_from_shim(const char *sym, int libc_sym)
{
    Dl_info info;
    void *p = dlsym(RTLD_DEFAULT, sym);
    ck_assert_msg(p != NULL, "dlsym(%s) failed", sym);
    ck_assert_msg(dladdr(p, &info) && info.dli_fname != NULL, "dladdr(%s) failed", sym);
    if (libc_sym && sanitizer_lib(info.dli_fname))
        return;
    ck_assert_msg(strstr(info.dli_fname, "libpqawait") != NULL,
                  "%s resolves to %s, not to libpqawait: the shim is not interposed "
                  "(link libpqawait before libpq)",
                  sym, info.dli_fname);
}

struct interp {
    ev_timer tick;
    unsigned long ticks;
    int ok;
    char err[256];
};

static void interp_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    ((struct interp *)w->data)->ticks++;
}

static void *interp_task(void *arg)
{
    struct interp *ip = arg;
    PGconn *conn = pqa_connect(PQA_UNIX, NULL);
    PGresult *r = PQexec(conn, "select pg_sleep(0.2), 7");
    ip->ok = r && PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 1), "7") == 0;
    if (!ip->ok)
        snprintf(ip->err, sizeof ip->err, "%s", PQerrorMessage(conn));
    PQclear(r);
    PQfinish(conn);
    ev_timer_stop(awaitlet_current_loop(), &ip->tick);
    return NULL;
}

void pqa_check_interposed(void)
{
    ck_assert_msg(pqawait_interposed() == 1, "pqawait_interposed() says the shim is not interposed");
    assert_from_shim("PQexec", 0);
    assert_from_shim("PQconnectdb", 0);
    assert_from_shim("lo_import", 0);
    assert_from_shim("poll", 1);
    assert_from_shim("getaddrinfo", 1);

    struct interp ip = {0};
    struct ev_loop *loop = pqa_loop_new();
    ev_timer_init(&ip.tick, interp_tick, 0.001, 0.001);
    ip.tick.data = &ip;
    ev_timer_start(loop, &ip.tick);
    awaitlet_task *t = awaitlet_async_def(loop, interp_task, &ip);
    ck_assert_ptr_nonnull(t);
    errno = 0;
    awaitlet_join(t);
    ck_assert_int_eq(errno, 0);
    ev_loop_destroy(loop);
    ck_assert_msg(ip.ok, "pg_sleep query in a task failed: %s", ip.err);
    /* 200 ms at 1 ms per tick: a frozen loop would show 0 or 1 ticks */
    ck_assert_msg(ip.ticks >= 50,
                  "only %lu timer ticks while a task waited 200 ms in PQexec: the loop was "
                  "blocked, PQexec is not cooperative",
                  ip.ticks);
}

/* ---- files ---- */

char *pqa_temp_file(size_t size, unsigned seed)
{
    char *path = strdup("/tmp/pqa-test-XXXXXX");
    ck_assert_ptr_nonnull(path);
    int fd = mkstemp(path);
    ck_assert_msg(fd >= 0, "mkstemp: %s", strerror(errno));
    if (size == 0) {
        close(fd);
        unlink(path);
        return path;
    }
    char *buf = malloc(65536);
    ck_assert_ptr_nonnull(buf);
    unsigned x = seed * 2654435761u + 1;
    for (size_t done = 0; done < size;) {
        size_t n = size - done < 65536 ? size - done : 65536;
        for (size_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            buf[i] = (char)(x >> 16);
        }
        ck_assert_msg(write(fd, buf, n) == (ssize_t)n, "write temp file: %s", strerror(errno));
        done += n;
    }
    free(buf);
    close(fd);
    return path;
}

char *pqa_read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t k = read(fd, buf + n, cap - n);
        if (k < 0) {
            free(buf);
            close(fd);
            return NULL;
        }
        if (k == 0)
            break;
        n += (size_t)k;
    }
    close(fd);
    *len = n;
    return buf;
}

const char *pqa_unique(void)
{
    static char buf[32];
    snprintf(buf, sizeof buf, "p%ld", (long)getpid());
    return buf;
}

int pqa_run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK); /* see common.h */
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
