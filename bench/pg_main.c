/*
 * pg_main.c -- bench-pg / bench-pg-plain: options, the measurement window,
 * the epoll_ctl counter and the one-line result.
 *
 *   bench-pg --variant a|b|c|d --workload select1|point|extended|copy|storm
 *            --sessions N [--loops N] [--warmup S] [--duration S]
 *            [--count N] [--churn] [--hold Q] [--conninfo STR]
 *
 * Timed mode (default): the sessions run from "go" until the main thread
 * stops them; throughput is what they completed between warmup and
 * warmup + duration.  Count mode (--count N): N operations in all, spread
 * evenly, then exit; for perf/strace/callgrind, which script/bench runs at
 * N and 2N and subtracts.  Memory mode (--hold Q): every session connects
 * and runs one query, the resident set is read while all of them sit idle,
 * then each runs Q more queries and disconnects.
 *
 * The result is one line on stdout, "result key=value ...", for
 * script/bench to parse.  The exit status is non-zero if any session or
 * operation failed: a failed run is never a number.
 *
 * epoll_ctl: this executable defines epoll_ctl, counting every call (and
 * per descriptor) before forwarding to libc's; libev's calls bind to it,
 * since an executable's definitions come first.  That makes "epoll_ctl per
 * query in steady state" exact, and attributable: the calls on the measured
 * sessions' sockets are counted apart from everything else (--churn's
 * connections), which is the point of the churn measurement.
 */
#include "pg.h"

#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#if !defined(NO_SHIM) && !defined(PGB_FLOOR)
#include <pqawait.h>
#endif

struct pgb_run pgb;

/* ---- the epoll_ctl counter ---- */

#define CTL_FDS 65536
static _Atomic unsigned long ctl_total;
static _Atomic unsigned ctl_by_fd[CTL_FDS];
static int (*real_epoll_ctl)(int, int, int, struct epoll_event *);

__attribute__((constructor)) static void resolve_epoll_ctl(void)
{
    real_epoll_ctl = (int (*)(int, int, int, struct epoll_event *))dlsym(RTLD_NEXT, "epoll_ctl");
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    atomic_fetch_add_explicit(&ctl_total, 1, memory_order_relaxed);
    if (fd >= 0 && fd < CTL_FDS)
        atomic_fetch_add_explicit(&ctl_by_fd[fd], 1, memory_order_relaxed);
    if (!real_epoll_ctl) {
        errno = ENOSYS;
        return -1;
    }
    return real_epoll_ctl(epfd, op, fd, ev);
}

/* ---- sampling ---- */

struct snap {
    double t;
    unsigned long ops, ctl, ctl_sess;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_until(double t)
{
    struct timespec ts;
    double d;
    while ((d = t - now()) > 0) {
        ts.tv_sec = (time_t)d;
        ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
        nanosleep(&ts, NULL);
    }
}

static struct snap take(void)
{
    struct snap s = { now(), 0, atomic_load_explicit(&ctl_total, memory_order_relaxed), 0 };
    for (int i = 0; i < pgb.sessions; i++) {
        int fd = pgb.s[i].fd;
        s.ops += atomic_load_explicit(&pgb.s[i].ops, memory_order_relaxed);
        if (fd >= 0 && fd < CTL_FDS)
            s.ctl_sess += atomic_load_explicit(&ctl_by_fd[fd], memory_order_relaxed);
    }
    return s;
}

static long count_mappings(void)
{
    long lines = 0;
    int c;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return -1;
    while ((c = getc(f)) != EOF)
        lines += c == '\n';
    fclose(f);
    return lines;
}

/* ---- options ---- */

static const char *const variant_names[] = {
    [PGB_TASKS] = "a", [PGB_TASKS_MT] = "b", [PGB_THREADS] = "c", [PGB_LIBEV] = "d",
};

__attribute__((noreturn)) static void usage(const char *msg)
{
    if (msg)
        fprintf(stderr, "bench-pg: %s\n", msg);
    fprintf(stderr,
            "usage: bench-pg --variant a|b|c|d --workload select1|point|extended|copy|storm\n"
            "                --sessions N [--loops N] [--warmup S] [--duration S]\n"
            "                [--count N] [--churn] [--hold Q] [--conninfo STR]\n"
            "  a: tasks on one loop; b: one loop per CPU; c: a thread per session;\n"
            "  d: hand-written libev state machines%s\n",
#ifdef NO_SHIM
            " (this build, without the shim: c and d only)"
#else
            ""
#endif
    );
    exit(2);
}

static int lookup(const char *const *names, int n, const char *s)
{
    for (int i = 0; i < n; i++)
        if (names[i] && strcmp(names[i], s) == 0)
            return i;
    return -1;
}

static double positive(const char *s, const char *what)
{
    char *end;
    double v = strtod(s, &end);
    if (*end || !(v >= 0) || v > 1e6) {
        fprintf(stderr, "bench-pg: %s: not a valid number: %s\n", what, s);
        exit(2);
    }
    return v;
}

static void default_conninfo(void)
{
    const char *ci = getenv("BENCH_PG_CONNINFO");
    const char *host = getenv("PQAWAIT_TEST_HOST"), *port = getenv("PQAWAIT_TEST_PORT");
    const char *db = getenv("PQAWAIT_TEST_DB");
    int len;
    if (pgb.conninfo[0])
        return;
    if (ci)
        len = snprintf(pgb.conninfo, sizeof pgb.conninfo, "%s", ci);
    else if (host && port)
        len = snprintf(pgb.conninfo, sizeof pgb.conninfo,
                       "host='%s' port=%s user=pqa_trust dbname=%s", host, port, db ? db : "pqawait");
    else
        usage("no server: give --conninfo, BENCH_PG_CONNINFO, or PQAWAIT_TEST_HOST and "
              "PQAWAIT_TEST_PORT (eval \"$(tests/pg/pgserver env DIR)\")");
    if (len < 0 || (size_t)len >= sizeof pgb.conninfo)
        usage("connection string too long");
}

static void parse(int argc, char **argv)
{
    static const struct option opts[] = {
        { "variant", required_argument, NULL, 'v' },  { "workload", required_argument, NULL, 'w' },
        { "sessions", required_argument, NULL, 'c' }, { "loops", required_argument, NULL, 'l' },
        { "warmup", required_argument, NULL, 'W' },   { "duration", required_argument, NULL, 'T' },
        { "count", required_argument, NULL, 'n' },    { "churn", no_argument, NULL, 'C' },
        { "hold", required_argument, NULL, 'H' },     { "conninfo", required_argument, NULL, 'i' },
        { "help", no_argument, NULL, 'h' },           { NULL, 0, NULL, 0 },
    };
    int c, v = -1, w = -1;
    pgb.sessions = 1;
    pgb.warmup = 0.5;
    pgb.duration = 1.0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'v': v = lookup(variant_names, 4, optarg); break;
        case 'w': w = lookup(pgb_workload_names, PGB_STORM + 1, optarg); break;
        case 'c': pgb.sessions = (int)positive(optarg, "--sessions"); break;
        case 'l': pgb.loops = (int)positive(optarg, "--loops"); break;
        case 'W': pgb.warmup = positive(optarg, "--warmup"); break;
        case 'T': pgb.duration = positive(optarg, "--duration"); break;
        case 'n': pgb.count = (long)positive(optarg, "--count"); break;
        case 'C': pgb.churn = 1; break;
        case 'H': pgb.hold = 1; pgb.hold_queries = (int)positive(optarg, "--hold"); break;
        case 'i':
            if (snprintf(pgb.conninfo, sizeof pgb.conninfo, "%s", optarg) >= (int)sizeof pgb.conninfo)
                usage("connection string too long");
            break;
        default: usage(NULL);
        }
    }
    if (optind != argc)
        usage("unexpected argument");
    if (v < 0 || w < 0)
        usage("--variant and --workload are required (and must be one of those listed)");
    pgb.variant = (enum pgb_variant)v;
    pgb.workload = (enum pgb_workload)w;
#ifdef NO_SHIM
    if (pgb.variant == PGB_TASKS || pgb.variant == PGB_TASKS_MT)
        usage("variants a and b need the shim: use bench-pg");
#endif
    if (pgb.sessions < 1 || pgb.sessions > 100000)
        usage("--sessions must be 1..100000");
    if (pgb.duration <= 0)
        usage("--duration must be > 0");
    if (pgb.count && pgb.count < pgb.sessions)
        usage("--count must be at least --sessions");
    if (pgb.hold && (pgb.count || pgb.hold_queries < 1 || pgb.workload != PGB_SELECT1 ||
                     (pgb.variant != PGB_TASKS && pgb.variant != PGB_LIBEV)))
        usage("--hold Q (Q >= 1) is for variants a and d, workload select1, without --count");
    if (pgb.churn && pgb.variant == PGB_LIBEV)
        usage("--churn is for variants a, b and c");
    if (pgb.variant == PGB_TASKS_MT) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        if (!pgb.loops)
            pgb.loops = cpus > 0 ? (int)cpus : 1;
        if (pgb.loops > pgb.sessions)
            pgb.loops = pgb.sessions;
    } else {
        if (pgb.loops > 1)
            usage("--loops is for variant b");
        pgb.loops = 1;
    }
    default_conninfo();
}

/* Enough descriptors for every session (and pgbouncer's 10,000). */
static void raise_nofile(void)
{
    struct rlimit r;
    rlim_t want = (rlim_t)pgb.sessions * 2 + 64;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < want) {
        r.rlim_cur = r.rlim_max < want ? r.rlim_max : want;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

static void check_linkage(void)
{
#if defined(PGB_FLOOR)
    /* checked after the run: libpq's waits went through floor.c's poll */
#elif !defined(NO_SHIM)
    if (!pqawait_interposed()) {
        fprintf(stderr, "bench-pg: libpq's calls do not reach libpqawait (link order?)\n");
        exit(1);
    }
#else
    if (dlsym(RTLD_DEFAULT, "pqawait_version")) {
        fprintf(stderr, "bench-pg: the plain build has libpqawait loaded (LD_PRELOAD?)\n");
        exit(1);
    }
#endif
}

static void start(void)
{
    switch (pgb.variant) {
#ifndef NO_SHIM
    case PGB_TASKS:
    case PGB_TASKS_MT: pgb_tasks_start(); return;
#else
    case PGB_TASKS:
    case PGB_TASKS_MT: return;
#endif
    case PGB_THREADS: pgb_threads_start(); return;
    case PGB_LIBEV: pgb_libev_start(); return;
    }
}

static void join(void)
{
    switch (pgb.variant) {
#ifndef NO_SHIM
    case PGB_TASKS:
    case PGB_TASKS_MT: pgb_tasks_join(); return;
#else
    case PGB_TASKS:
    case PGB_TASKS_MT: return;
#endif
    case PGB_THREADS: pgb_threads_join(); return;
    case PGB_LIBEV: pgb_libev_join(); return;
    }
}

/* Every session connected (or failed)?  Bounded: a server that stopped
 * answering must not hang the bench. */
static int wait_ready(double limit)
{
    double t_end = now() + limit;
    while (atomic_load_explicit(&pgb.connected, memory_order_acquire) +
               atomic_load_explicit(&pgb.failed, memory_order_acquire) <
           pgb.sessions) {
        if (now() > t_end)
            return -1;
        sleep_until(now() + 0.001);
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct snap a, b;
    double t0, t_ready, t_go;
    long rss_held = 0, maps = 0;
    uint64_t one = 1;

    parse(argc, argv);
    check_linkage();
    raise_nofile();
    if ((pgb.go_fd = eventfd(0, EFD_CLOEXEC)) < 0 ||
        !(pgb.s = calloc((size_t)pgb.sessions, sizeof *pgb.s))) {
        perror("bench-pg: eventfd/calloc");
        return 1;
    }
    for (int i = 0; i < pgb.sessions; i++) {
        pgb.s[i].index = i;
        pgb.s[i].fd = -1;
        if (pgb.count)
            pgb.s[i].quota = pgb.count / pgb.sessions + (i < pgb.count % pgb.sessions);
        else if (pgb.hold)
            pgb.s[i].quota = pgb.hold_queries;
    }

    t0 = now();
    start();
    if (wait_ready(180) < 0) {
        fprintf(stderr, "bench-pg: sessions not ready after 180 s (%d connected, %d failed of %d)\n",
                atomic_load(&pgb.connected), atomic_load(&pgb.failed), pgb.sessions);
        _exit(1);
    }
    t_ready = now();
    if (pgb.hold) {
        rss_held = pgb_rss_bytes();
        maps = count_mappings();
    }
    if (atomic_load(&pgb.failed))
        atomic_store(&pgb.stop, 1);
    a = take(); /* every counter still 0 but epoll_ctl's */
    t_go = a.t = now();
    if (write(pgb.go_fd, &one, sizeof one) != sizeof one) {
        perror("bench-pg: write(eventfd)");
        _exit(1);
    }
    if (pgb.count || pgb.hold) {
        join();
        b = take();
    } else {
        sleep_until(t_go + pgb.warmup);
        a = take();
        sleep_until(a.t + pgb.duration);
        b = take();
        atomic_store(&pgb.stop, 1);
        join();
    }

    {
        unsigned long ops = b.ops - a.ops, errors = atomic_load(&pgb.errors);
        double secs = b.t - a.t, per = ops ? (double)ops : 1;
        int failed = atomic_load(&pgb.failed);
        printf("result variant=%s workload=%s sessions=%d loops=%d mode=%s ops=%lu seconds=%.4f "
               "ops_s=%.1f errors=%lu failed=%d connect_s=%.3f ctl_per_op=%.4f ctl_sess_per_op=%.4f "
               "churn_ops=%lu",
               variant_names[pgb.variant], pgb_workload_names[pgb.workload], pgb.sessions, pgb.loops,
               pgb.count ? "count" : pgb.hold ? "hold" : "timed", ops, secs,
               secs > 0 ? (double)ops / secs : 0, errors, failed, t_ready - t0,
               (double)(b.ctl - a.ctl) / per, (double)(b.ctl_sess - a.ctl_sess) / per,
               atomic_load(&pgb.churn_ops));
        if (pgb.hold)
            printf(" rss_base=%ld rss_held=%ld rss_per_session=%.0f maps=%ld", pgb.rss_base,
                   rss_held, (double)(rss_held - pgb.rss_base) / pgb.sessions, maps);
        printf("\n");
        fflush(stdout);
        if (errors || failed)
            return 1;
#ifdef PGB_FLOOR
        if (pgb.variant == PGB_TASKS && pgb_floor_polls == 0) {
            fprintf(stderr, "bench-pg-floor: libpq's waits did not reach floor.c's poll\n");
            return 1;
        }
#endif
        if (!pgb.count && !pgb.hold && ops == 0) {
            fprintf(stderr, "bench-pg: no operation completed in the window\n");
            return 1;
        }
    }
    free(pgb.s);
    close(pgb.go_fd);
    return 0;
}
