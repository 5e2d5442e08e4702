/*
 * stats.c -- counters, the latency histogram, loop stalls, and /stats.
 *
 * Percentiles come from a fixed log-linear histogram (no samples kept, no
 * allocation, no lock): each bucket is 1/16 of a power of two of
 * microseconds wide, so a percentile is exact to about 6 %.  A loop's
 * stall is how long one iteration kept it from polling: the time from the
 * ev_check after a poll (highest priority: first) to the ev_prepare before
 * the next one (lowest: last).  With tasks that stays small however long a
 * query takes; with --blocking a /slow request shows up in full.
 *
 * On a loaded machine (the demo runs wrk, PostgreSQL and the server on two
 * cores) the kernel often lets an iteration wait for a CPU; that is not the
 * server's doing.  So the stall reported first leaves out the time the
 * thread was runnable but not running (run_delay in
 * /proc/thread-self/schedstat), and the wall-clock figure is reported
 * beside it.  That costs one pread per loop iteration -- an example's
 * instrumentation, not a library's hot path.
 */
#include "server.h"

#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

int stats_stopping;
#define BUMP(x, n) __atomic_store_n(&(x), (x) + (n), __ATOMIC_RELAXED)

unsigned long long stats_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* The thread's run_delay so far (ns), 0 when unknown. */
static unsigned long long run_delay(struct stats *s)
{
    char buf[96];
    if (s->schedstat_fd < 0)
        return 0;
    ssize_t n = pread(s->schedstat_fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    unsigned long long on_cpu, delay;
    return sscanf(buf, "%llu %llu", &on_cpu, &delay) == 2 ? delay : 0;
}

static void check_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)loop, (void)revents;
    struct stats *s = w->data;
    s->woke_ns = stats_now_ns();
    s->delay0_ns = run_delay(s);
}

static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop, (void)revents;
    struct stats *s = w->data;
    if (!s->woke_ns)
        return;
    unsigned long long busy = stats_now_ns() - s->woke_ns;
    if (busy > s->stall_wall_max_ns)
        __atomic_store_n(&s->stall_wall_max_ns, busy, __ATOMIC_RELAXED);
    if (busy <= s->stall_max_ns)
        return; /* cannot be a new longest: skip the pread */
    unsigned long long waited = run_delay(s) - s->delay0_ns;
    busy = waited < busy ? busy - waited : 0;
    if (busy > s->stall_max_ns)
        __atomic_store_n(&s->stall_max_ns, busy, __ATOMIC_RELAXED);
}

void stats_watch_loop(struct stats *s, struct ev_loop *loop)
{
    ev_check_init(&s->chk, check_cb);
    ev_set_priority(&s->chk, EV_MAXPRI);
    ev_prepare_init(&s->prep, prepare_cb);
    ev_set_priority(&s->prep, EV_MINPRI);
    s->chk.data = s->prep.data = s;
    s->schedstat_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    ev_check_start(loop, &s->chk);
    ev_prepare_start(loop, &s->prep);
    /* they only measure: they must not keep the loop alive on their own */
    ev_unref(loop);
    ev_unref(loop);
}

void stats_unwatch_loop(struct stats *s, struct ev_loop *loop)
{
    ev_ref(loop);
    ev_ref(loop);
    ev_check_stop(loop, &s->chk);
    ev_prepare_stop(loop, &s->prep);
    if (s->schedstat_fd >= 0)
        close(s->schedstat_fd);
    s->schedstat_fd = -1;
}

static int bucket(unsigned long long us)
{
    if (us < 16)
        return (int)us; /* exact below 16 us */
    int e = 63 - __builtin_clzll(us); /* >= 4 */
    int m = (int)((us >> (e - 4)) & 15);
    int b = (e - 3) * 16 + m;
    return b < LAT_BUCKETS ? b : LAT_BUCKETS - 1;
}

/* The upper end of bucket b, microseconds. */
static double bucket_top(int b)
{
    if (b < 16)
        return b + 1;
    int e = b / 16 + 3, m = b % 16;
    return (double)((16ull + (unsigned long long)m + 1) << e) / 16.0;
}

void stats_record(struct stats *s, int status, double seconds)
{
    double us = seconds * 1e6;
    int b = bucket(us > 0 ? (unsigned long long)us : 0);
    BUMP(s->lat[b], 1);
    BUMP(s->requests, 1);
    int c = status / 100;
    BUMP(s->by_class[c >= 0 && c < 6 ? c : 0], 1);
}

/* The q-quantile of all workers' latencies, milliseconds. */
static double percentile(double q, unsigned long long total)
{
    if (!total)
        return 0;
    unsigned long long want = (unsigned long long)(q * (double)total);
    if (want >= total)
        want = total - 1;
    unsigned long long seen = 0;
    for (int b = 0; b < LAT_BUCKETS; b++) {
        for (int i = 0; i < server->nworkers; i++)
            seen += LOAD(server->workers[i].st.lat[b]);
        if (seen > want)
            return bucket_top(b) / 1000.0;
    }
    return bucket_top(LAT_BUCKETS - 1) / 1000.0;
}

static void pool_json(struct sbuf *out, const struct pqawait_pool_stats *p)
{
    sb_printf(out,
              "{\"size\":%u,\"idle\":%u,\"in_use\":%u,\"waiting\":%u,\"connecting\":%u,"
              "\"resetting\":%u,\"acquires\":%llu,\"waits\":%llu,\"wait_ms\":%.3f,"
              "\"timeouts\":%llu,\"rejected\":%llu,\"interrupted\":%llu,\"opened\":%llu,"
              "\"connect_failures\":%llu,\"closed\":%llu,\"lost\":%llu,\"discarded\":%llu,"
              "\"resets\":%llu}",
              p->size, p->idle, p->in_use, p->waiting, p->connecting, p->resetting, p->acquires,
              p->waits, (double)p->wait_ns / 1e6, p->timeouts, p->rejected, p->interrupted,
              p->opened, p->connect_failures, p->closed, p->lost, p->discarded, p->resets);
}

static void add_pool(struct pqawait_pool_stats *t, const struct pqawait_pool_stats *p)
{
    t->size += p->size;
    t->idle += p->idle;
    t->in_use += p->in_use;
    t->waiting += p->waiting;
    t->connecting += p->connecting;
    t->resetting += p->resetting;
    t->acquires += p->acquires;
    t->waits += p->waits;
    t->wait_ns += p->wait_ns;
    t->timeouts += p->timeouts;
    t->rejected += p->rejected;
    t->interrupted += p->interrupted;
    t->opened += p->opened;
    t->connect_failures += p->connect_failures;
    t->closed += p->closed;
    t->lost += p->lost;
    t->discarded += p->discarded;
    t->resets += p->resets;
}

void stats_json(struct sbuf *out, int reset_stall)
{
    unsigned long long requests = 0, total = 0, stall = 0, wall = 0, cls[6] = { 0 };
    struct pqawait_pool_stats sum = { 0 };
    int pools = 0;
    for (int i = 0; i < server->nworkers; i++) {
        struct worker *w = &server->workers[i];
        requests += LOAD(w->st.requests);
        for (int c = 0; c < 6; c++)
            cls[c] += LOAD(w->st.by_class[c]);
        unsigned long long s = LOAD(w->st.stall_max_ns);
        stall = s > stall ? s : stall;
        s = LOAD(w->st.stall_wall_max_ns);
        wall = s > wall ? s : wall;
        struct pqawait_pool_stats p;
        int mine = pthread_equal(w->thread, pthread_self());
        if (w->pool && !LOAD(w->pool_closed) && (mine || !LOAD(stats_stopping)) &&
            pqawait_pool_stats(w->pool, &p) == 0) {
            add_pool(&sum, &p);
            pools++;
        }
    }
    total = 0;
    for (int b = 0; b < LAT_BUCKETS; b++)
        for (int i = 0; i < server->nworkers; i++)
            total += LOAD(server->workers[i].st.lat[b]);
    sb_printf(out,
              "{\"mode\":\"%s\",\"threads\":%d,\"requests\":%llu,\"status\":{\"2xx\":%llu,"
              "\"4xx\":%llu,\"5xx\":%llu},\"latency_ms\":{\"p50\":%.3f,\"p99\":%.3f},"
              "\"longest_stall_ms\":%.3f,\"longest_stall_wall_ms\":%.3f,\"pool\":",
              server->cfg.blocking ? "blocking" : "tasks", server->nworkers, requests, cls[2],
              cls[4], cls[5], percentile(0.50, total), percentile(0.99, total),
              (double)stall / 1e6, (double)wall / 1e6);
    if (pools)
        pool_json(out, &sum);
    else
        sb_puts(out, "null");
    sb_puts(out, ",\"per_thread_requests\":[");
    for (int i = 0; i < server->nworkers; i++)
        sb_printf(out, "%s%llu", i ? "," : "", LOAD(server->workers[i].st.requests));
    sb_puts(out, "]}");
    if (reset_stall)
        for (int i = 0; i < server->nworkers; i++) {
            __atomic_store_n(&server->workers[i].st.stall_max_ns, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&server->workers[i].st.stall_wall_max_ns, 0, __ATOMIC_RELAXED);
        }
}
