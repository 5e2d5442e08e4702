/*
 * stats.h -- what /stats reports: request counts, latency percentiles
 * from a fixed histogram, the loop's longest stall, the pools' statistics.
 *
 * Each worker thread writes its own counters (no locks on the request
 * path); /stats, on whatever thread serves it, reads every worker's with
 * relaxed atomic loads and sums them.
 */
#ifndef PQA_SERVER_STATS_H
#define PQA_SERVER_STATS_H

#include <ev.h>

#include "http.h"

/* Latency histogram: microseconds in buckets of 1/16 of a power of two
 * (about 6 % wide), up to 2^31 us. */
#define LAT_BUCKETS (32 * 16)

struct stats {
    unsigned long long requests;   /* responses sent */
    unsigned long long by_class[6];/* by status / 100 */
    unsigned long long lat[LAT_BUCKETS];
    unsigned long long stall_max_ns;      /* less time spent runnable, not running */
    unsigned long long stall_wall_max_ns; /* as a clock on the wall saw it */
    /* the loop's busy time per iteration: from its wake-up (ev_check) to
     * its next poll (ev_prepare) */
    ev_prepare prep;
    ev_check chk;
    unsigned long long woke_ns, delay0_ns;
    int schedstat_fd;                     /* /proc/thread-self/schedstat, or -1 */
};

/* Start measuring loop's stalls into s. */
void stats_watch_loop(struct stats *s, struct ev_loop *loop);
void stats_unwatch_loop(struct stats *s, struct ev_loop *loop);
/* One response with this status, `seconds` after its request was read. */
void stats_record(struct stats *s, int status, double seconds);
unsigned long long stats_now_ns(void);

/* Set when the server shuts down: /stats then reads no other thread's
 * pool (it may be closing). */
extern int stats_stopping;

/* Everything, as the body of GET /stats.  reset_stall: then start the
 * longest-stall measurement afresh (GET /stats?reset=stall), so a load can
 * be measured on its own. */
void stats_json(struct sbuf *out, int reset_stall);

#endif
