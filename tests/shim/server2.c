/*
 * server2.c -- extra private PostgreSQL servers, frozen or shutting down
 * (see server2.h).
 *
 * Everything goes through tests/pg/pgserver, the same script that makes
 * the shared server, so root handling (the server runs as `postgres`) and
 * clean-up live in one place.  The script is run as `/bin/bash pgserver
 * ...` through posix_spawn: under valgrind (children not traced) bash then
 * runs natively, and no test binary is exec'd twice.
 *
 * Clean-up has three layers because a leaked frozen postmaster would live
 * forever: pqa_server2_stop_all() from main, the same from atexit, and a
 * watchdog bash in its own session (so the SIGTERM/SIGKILL meson sends the
 * test's process group on a timeout spares it) that runs `pgserver stop`
 * once this process is gone; `pgserver stop` continues a frozen postmaster
 * itself.  Check forks every test and the children inherit the atexit
 * handler, so it acts only in the process that started the servers.
 */
#include "server2.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PQA_PGSERVER_DEFAULT
#define PQA_PGSERVER_DEFAULT "tests/pg/pgserver"
#endif

#define MAX_SERVERS 4

extern char **environ;

struct pqa_server2 {
    char dir[64];       /* pgserver's DIR */
    char conninfo[160]; /* TCP, as the scenarios reach it */
    int port;
    pid_t postmaster;
    pid_t watchdog;
    int frozen;
    PGconn *holder;     /* the session keeping a smart shutdown pending */
    char bouncer[64];   /* tests/pg/pgbouncer's DIR, "" if none */
    pid_t bouncer_watchdog;
};

static pqa_server2 *servers[MAX_SERVERS];
static int n_servers;
static pid_t owner;

static const char *pgserver(void)
{
    const char *p = getenv("PQAWAIT_PGSERVER");
    return p && *p ? p : PQA_PGSERVER_DEFAULT;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "server2: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    pqa_server2_stop_all();
    exit(1);
}

/* posix_spawn argv; stdout to out_fd (-1: inherited), own session if asked
 * (then all of stdin/stdout/stderr are /dev/null). */
static pid_t spawn(char *const argv[], int out_fd, int own_session)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    pid_t pid = -1;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    if (own_session) {
        posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    } else if (out_fd >= 0) {
        posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
    }
    int rc = posix_spawn(&pid, argv[0], &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    return pid;
}

/* The exit status of a child, -1 unless it exited normally. */
static int wait_exit(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static pid_t spawn_pgserver(const char *cmd, const char *dir, int out_fd)
{
    char *argv[] = {"/bin/bash", (char *)pgserver(), (char *)cmd, (char *)dir, NULL};
    return spawn(argv, out_fd, 0);
}

/* tests/pg/pgbouncer, beside pgserver */
static const char *pgbouncer_script(void)
{
    static char path[4096];
    const char *srv = pgserver();
    const char *slash = strrchr(srv, '/');
    int dirlen = slash ? (int)(slash - srv + 1) : 0;
    snprintf(path, sizeof path, "%.*spgbouncer", dirlen, srv);
    return path;
}

/* `pgserver cmd dir`, stdout into buf (NUL-terminated); its exit status. */
static int pgserver_capture(const char *cmd, const char *dir, char *buf, size_t cap)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    pid_t pid = spawn_pgserver(cmd, dir, p[1]);
    close(p[1]);
    size_t len = 0;
    for (;;) {
        ssize_t k = read(p[0], buf + len, cap - 1 - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        len += (size_t)k;
        if (len == cap - 1)
            break;
    }
    buf[len] = '\0';
    close(p[0]);
    return pid < 0 ? -1 : wait_exit(pid);
}

/* The state letter of /proc/pid/stat ('T' stopped, 'Z' zombie), 0 if gone. */
static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *paren = strrchr(buf, ')'); /* the command name may hold anything */
    return paren && paren[1] == ' ' ? paren[2] : 0;
}

static void stop_one(pqa_server2 *s)
{
    if (s->bouncer[0]) {
        char *argv[] = {"/bin/bash", (char *)pgbouncer_script(), "stop", s->bouncer, NULL};
        pid_t pid = spawn(argv, -1, 0);
        if (pid < 0 || wait_exit(pid) != 0)
            fprintf(stderr, "server2: `pgbouncer stop %s` failed\n", s->bouncer);
        if (s->bouncer_watchdog > 0) {
            kill(s->bouncer_watchdog, SIGKILL);
            wait_exit(s->bouncer_watchdog);
        }
    }
    if (s->postmaster > 0 && s->frozen)
        kill(s->postmaster, SIGCONT);
    if (s->holder) {
        /* the last session gone, a smart shutdown completes by itself;
         * `pgserver stop` then finds the server already stopped */
        PQfinish(s->holder);
        s->holder = NULL;
        for (int i = 0; i < 250; i++) {
            char st = proc_state(s->postmaster);
            if (st == 0 || st == 'Z')
                break;
            sleep_ms(20);
        }
    }
    pid_t pid = spawn_pgserver("stop", s->dir, -1);
    if (pid < 0 || wait_exit(pid) != 0)
        fprintf(stderr, "server2: `pgserver stop %s` failed\n", s->dir);
    if (s->watchdog > 0) {
        kill(s->watchdog, SIGKILL);
        wait_exit(s->watchdog);
    }
    free(s);
}

void pqa_server2_stop_all(void)
{
    if (getpid() != owner)
        return; /* a forked test child: the servers are not its to stop */
    while (n_servers > 0) {
        pqa_server2 *s = servers[--n_servers];
        servers[n_servers] = NULL;
        stop_one(s);
    }
}

static void at_exit(void)
{
    pqa_server2_stop_all();
}

/* Stops `SCRIPT stop DIR` (pgserver's, pgbouncer's) from being skipped when
 * this process is killed: waits in its own session for us to disappear. */
static pid_t spawn_watchdog_for(const char *script, const char *dir)
{
    char me[32];
    snprintf(me, sizeof me, "%d", (int)getpid());
    char *argv[] = {"/bin/bash", "-c",
                    "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; exec /bin/bash \"$2\" stop \"$3\"",
                    "pqa-server2-watchdog", me, (char *)script, (char *)dir, NULL};
    return spawn(argv, -1, 1);
}

static pid_t spawn_watchdog(const char *dir)
{
    return spawn_watchdog_for(pgserver(), dir);
}

static void read_state(pqa_server2 *s)
{
    char buf[4096];
    if (pgserver_capture("env", s->dir, buf, sizeof buf) != 0)
        die("`pgserver env %s` failed", s->dir);
    const char *p = strstr(buf, "PQAWAIT_TEST_PORT=");
    if (!p)
        die("`pgserver env %s` names no port", s->dir);
    p += strlen("PQAWAIT_TEST_PORT=");
    s->port = atoi(p + (*p == '\''));
    if (s->port <= 0 || s->port > 65535)
        die("`pgserver env %s`: bad port", s->dir);
    if (pgserver_capture("pid", s->dir, buf, sizeof buf) != 0)
        die("`pgserver pid %s` failed", s->dir);
    s->postmaster = (pid_t)atoi(buf);
    if (s->postmaster <= 1 || proc_state(s->postmaster) == 0)
        die("`pgserver pid %s`: no such postmaster (%s)", s->dir, buf);
    snprintf(s->conninfo, sizeof s->conninfo,
             "host=127.0.0.1 port=%d dbname=pqawait user=pqa_trust sslmode=disable", s->port);
}

/* A registered server slot with its directory and watchdog (started
 * first, so a kill during the start is covered too). */
static pqa_server2 *new_server(void)
{
    static int registered;
    owner = getpid();
    if (!registered && atexit(at_exit) == 0)
        registered = 1;
    if (n_servers == MAX_SERVERS)
        die("more than %d servers asked for", MAX_SERVERS);
    pqa_server2 *s = calloc(1, sizeof *s);
    if (!s)
        die("out of memory");
    strcpy(s->dir, "/tmp/pqa-srv2.XXXXXX");
    if (!mkdtemp(s->dir)) {
        free(s);
        die("mkdtemp: %s", strerror(errno));
    }
    servers[n_servers++] = s;
    s->watchdog = spawn_watchdog(s->dir);
    if (s->watchdog < 0)
        die("cannot start the watchdog: %s", strerror(errno));
    return s;
}

void pqa_server2_start(pqa_server2 **out, int n)
{
    if (n < 1 || n_servers + n > MAX_SERVERS)
        die("pqa_server2_start: %d servers asked for, at most %d", n, MAX_SERVERS);

    pid_t starter[MAX_SERVERS];
    for (int i = 0; i < n; i++) {
        pqa_server2 *s = out[i] = new_server();
        starter[i] = spawn_pgserver("start", s->dir, -1);
        if (starter[i] < 0)
            die("cannot run %s: %s", pgserver(), strerror(errno));
    }
    int failed = 0;
    for (int i = 0; i < n; i++) {
        if (wait_exit(starter[i]) != 0) {
            fprintf(stderr, "server2: `pgserver start %s` failed\n", out[i]->dir);
            failed = 1;
        }
    }
    if (failed)
        die("could not start %d server(s) with %s", n, pgserver());
    for (int i = 0; i < n; i++)
        read_state(out[i]);
}

int pqa_server2_port(const pqa_server2 *s) { return s->port; }

void pqa_server2_freeze(pqa_server2 *s)
{
    if (kill(s->postmaster, SIGSTOP) != 0)
        die("SIGSTOP to postmaster %d: %s", (int)s->postmaster, strerror(errno));
    s->frozen = 1;
    for (int i = 0; proc_state(s->postmaster) != 'T'; i++) {
        if (i == 250)
            die("postmaster %d did not stop", (int)s->postmaster);
        sleep_ms(20);
    }
}

void pqa_server2_reject(pqa_server2 *s)
{
    s->holder = PQconnectdb(s->conninfo);
    if (PQstatus(s->holder) != CONNECTION_OK)
        die("holding session on port %d: %s", s->port, PQerrorMessage(s->holder));
    pid_t pid = spawn_pgserver("stop-smart", s->dir, -1);
    if (pid < 0 || wait_exit(pid) != 0)
        die("`pgserver stop-smart %s` failed", s->dir);
    for (int i = 0; PQping(s->conninfo) != PQPING_REJECT; i++) {
        if (i == 250)
            die("server on port %d still not rejecting 5 s after a smart shutdown", s->port);
        sleep_ms(20);
    }
}

void pqa_server2_check(const pqa_server2 *s)
{
    if (s->frozen)
        ck_assert_msg(proc_state(s->postmaster) == 'T', "server2 on port %d: postmaster %d no longer frozen",
                      s->port, (int)s->postmaster);
    if (s->holder) {
        PGPing p = PQping(s->conninfo);
        ck_assert_msg(p == PQPING_REJECT, "server2 on port %d: PQping gives %d, not PQPING_REJECT", s->port, (int)p);
    }
}

/* ---- fault tests ---- */

const char *pqa_server2_dir(const pqa_server2 *s) { return s->dir; }

pqa_server2 *pqa_server2_standby(pqa_server2 *primary)
{
    pqa_server2 *s = new_server();
    char *argv[] = {"/bin/bash", (char *)pgserver(), "standby", primary->dir, s->dir, NULL};
    pid_t pid = spawn(argv, -1, 0);
    if (pid < 0 || wait_exit(pid) != 0)
        die("`pgserver standby %s %s` failed", primary->dir, s->dir);
    read_state(s);
    return s;
}

void pqa_server2_promote(pqa_server2 *s)
{
    pid_t pid = spawn_pgserver("promote", s->dir, -1);
    if (pid < 0 || wait_exit(pid) != 0)
        die("`pgserver promote %s` failed", s->dir);
}

/* The postmaster's pid from its lock file (the data directory is named in
 * DIR/env as PQA_DATA='...'), -1 if it is not running. */
static pid_t lockfile_pid(const pqa_server2 *s)
{
    char path[256], line[4096], data[4096] = "";
    snprintf(path, sizeof path, "%s/env", s->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "PQA_DATA='%4000[^']'", data) == 1)
            break;
    fclose(f);
    if (!data[0])
        return -1;
    snprintf(line, sizeof line, "%s/postmaster.pid", data);
    f = fopen(line, "r");
    if (!f)
        return -1;
    long pid = -1;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = -1;
    fclose(f);
    return pid > 1 && proc_state((pid_t)pid) != 0 ? (pid_t)pid : -1;
}

int pqa_server2_crash(pqa_server2 *s)
{
    pid_t pid = lockfile_pid(s);
    if (pid < 0) {
        errno = ESRCH;
        return -1;
    }
    s->postmaster = pid;
    return kill(pid, SIGQUIT); /* pg_ctl stop -m immediate */
}

int pqa_server2_wait_down(pqa_server2 *s, double timeout)
{
    for (int ms = 0; ms < timeout * 1000; ms += 10) {
        char st = proc_state(s->postmaster);
        if (st == 0 || st == 'Z')
            return 0;
        sleep_ms(10);
    }
    errno = ETIMEDOUT;
    return -1;
}

int pqa_server2_restart(pqa_server2 *s)
{
    pid_t pid = spawn_pgserver("restart", s->dir, -1);
    if (pid < 0 || wait_exit(pid) != 0)
        return -1;
    pid_t pm = lockfile_pid(s);
    if (pm > 0)
        s->postmaster = pm;
    return pm > 0 ? 0 : -1;
}

int pqa_server2_bouncer(pqa_server2 *s, int pool)
{
    if (s->bouncer[0])
        die("server on port %d has a pgbouncer already", s->port);
    strcpy(s->bouncer, "/tmp/pqa-bnc.XXXXXX");
    if (!mkdtemp(s->bouncer))
        die("mkdtemp: %s", strerror(errno));
    s->bouncer_watchdog = spawn_watchdog_for(pgbouncer_script(), s->bouncer);
    if (s->bouncer_watchdog < 0)
        die("cannot start the pgbouncer watchdog: %s", strerror(errno));
    char npool[16], buf[256];
    snprintf(npool, sizeof npool, "%d", pool);
    char *argv[] = {"/bin/bash", (char *)pgbouncer_script(), "start", s->bouncer, s->dir, npool, NULL};
    pid_t pid = spawn(argv, -1, 0);
    if (pid < 0 || wait_exit(pid) != 0)
        die("`pgbouncer start %s %s %s` failed", s->bouncer, s->dir, npool);
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        die("pipe: %s", strerror(errno));
    char *envv[] = {"/bin/bash", (char *)pgbouncer_script(), "env", s->bouncer, NULL};
    pid = spawn(envv, p[1], 0);
    close(p[1]);
    ssize_t k = read(p[0], buf, sizeof buf - 1);
    close(p[0]);
    if (pid < 0 || wait_exit(pid) != 0 || k <= 0)
        die("`pgbouncer env %s` failed", s->bouncer);
    buf[k] = '\0';
    const char *eq = strchr(buf, '=');
    int port = eq ? atoi(eq + 1) : 0;
    if (port <= 0 || port > 65535)
        die("`pgbouncer env %s`: bad port (%s)", s->bouncer, buf);
    return port;
}
