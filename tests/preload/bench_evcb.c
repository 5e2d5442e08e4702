/*
 * bench_evcb.c -- what PQAWAIT_EV_CALLBACKS costs a callback that never
 * suspends, in plain libev programs (no libpq): built WITHOUT pqawait and
 * run with and without the preload (preload-bench-evcb, docs/preload.md).
 *
 *   ring N M   N socketpairs in a ring; each io callback reads the byte it
 *              was sent and writes one to the next pair, M callbacks in
 *              all: a server's shape (two system calls per callback)
 *   idle M     one ev_idle whose callback only counts: nothing but the
 *              dispatch, the worst case
 *   timers M   1000 repeating zero-interval timers counting to M
 * Prints "<mode> <ns per callback>", CPU time (user + system) of the
 * process, so other load on the machine matters less.
 */
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long count, limit;
static int (*pairs)[2];
static int npairs;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); /* CPU time: a loaded machine stretches wall time, not this */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void ring_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    char c;
    if (read(w->fd, &c, 1) != 1)
        return;
    int i = (int)(intptr_t)w->data;
    if (++count >= limit) {
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    if (write(pairs[(i + 1) % npairs][0], &c, 1) != 1)
        abort();
}

static void idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)w, (void)revents;
    if (++count >= limit)
        ev_break(loop, EVBREAK_ALL);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w, (void)revents;
    if (++count >= limit)
        ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    const char *mode = argv[1];
    double t0;
    if (!strcmp(mode, "ring")) {
        npairs = atoi(argv[2]);
        limit = atol(argv[3]);
        pairs = calloc((size_t)npairs, sizeof *pairs);
        ev_io *ws = calloc((size_t)npairs, sizeof *ws);
        for (int i = 0; i < npairs; i++) {
            if (socketpair(AF_UNIX, SOCK_STREAM, 0, pairs[i]) < 0)
                return 1;
            ev_io_init(&ws[i], ring_cb, pairs[i][1], EV_READ);
            ws[i].data = (void *)(intptr_t)i;
            ev_io_start(loop, &ws[i]);
        }
        for (int i = 0; i < npairs; i += 10) /* several bytes travel at once */
            if (write(pairs[i][0], "x", 1) != 1)
                return 1;
        t0 = now();
        ev_run(loop, 0);
    } else if (!strcmp(mode, "idle")) {
        limit = atol(argv[2]);
        ev_idle w;
        ev_idle_init(&w, idle_cb);
        ev_idle_start(loop, &w);
        t0 = now();
        ev_run(loop, 0);
    } else {
        limit = atol(argv[2]);
        static ev_timer ts[1000];
        for (int i = 0; i < 1000; i++) {
            ev_timer_init(&ts[i], timer_cb, 0., 1e-9);
            ev_timer_start(loop, &ts[i]);
        }
        t0 = now();
        ev_run(loop, 0);
    }
    double dt = now() - t0;
    printf("%s %.0f\n", mode, dt / (double)count * 1e9);
    return 0;
}
