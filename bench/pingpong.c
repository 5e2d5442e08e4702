/*
 * pingpong.c -- what a task costs per I/O round trip, against plain callbacks.
 *
 * The two ends of a socketpair bounce one byte back and forth N times through
 * one libev loop.  The baseline is how a callback library does it (hiredis'
 * libev adapter, for one): an ev_io watcher per end that stays started and
 * whose callback reads, then writes.  The variant is two awaitlet tasks, each
 * looping awaitlet_io(fd, EV_READ) / read / write -- the blocking-style code
 * awaitlet exists for.  The difference per round trip is the price of the
 * task abstraction on the hot path: four context switches plus the wait
 * bookkeeping, and (the promise of awaitlet_io) no epoll_ctl, since each task
 * waits on the same fd and events every time.  script/bench checks that last
 * point with strace.
 *
 * One loop and one socketpair serve every round of both variants, so no fd
 * number is ever closed and reused under libev (see AWAITLET_FRESH).
 */
#include "bench.h"

#include <awaitlet.h>
#include <ev.h>
#include <fcntl.h>
#include <sys/socket.h>

#define PING 'p'
#define QUIT 'q'

static struct ev_loop *loop;
static int sv[2]; /* sv[0]: end A, counts round trips; sv[1]: end B, echoes */

/* Read one byte from a nonblocking fd: the byte, -2 if none yet, -1 on error. */
static int get_byte(int fd)
{
    char c;
    ssize_t r = read(fd, &c, 1);
    if (r == 1)
        return (unsigned char)c;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return -2;
    if (r == 0)
        errno = EPIPE;
    return -1;
}

static void put_byte(int fd, char c)
{
    if (write(fd, &c, 1) != 1)
        bench_die("write");
}

/* ---- baseline: two ev_io callbacks ---- */

struct cb_end {
    ev_io w;    /* first, so the callback can cast back */
    long left;  /* end A: round trips still to do */
};

static void cb_a(struct ev_loop *l, ev_io *w, int revents)
{
    struct cb_end *e = (struct cb_end *)w;
    int c = get_byte(w->fd);
    (void)revents;
    if (c == -2)
        return;
    if (c < 0)
        bench_die("read A");
    if (--e->left > 0) {
        put_byte(w->fd, PING);
    } else {
        put_byte(w->fd, QUIT);
        ev_io_stop(l, w);
    }
}

static void cb_b(struct ev_loop *l, ev_io *w, int revents)
{
    int c = get_byte(w->fd);
    (void)revents;
    if (c == -2)
        return;
    if (c < 0)
        bench_die("read B");
    if (c == QUIT) {
        ev_io_stop(l, w);
        ev_break(l, EVBREAK_ALL);
        return;
    }
    put_byte(w->fd, (char)c);
}

static double run_callback(long n)
{
    struct cb_end a, b;
    double t0, t1;
    ev_io_init(&a.w, cb_a, sv[0], EV_READ);
    ev_io_init(&b.w, cb_b, sv[1], EV_READ);
    a.left = n;
    t0 = bench_now();
    ev_io_start(loop, &a.w);
    ev_io_start(loop, &b.w);
    put_byte(sv[0], PING);
    ev_run(loop, 0);
    t1 = bench_now();
    return t1 - t0;
}

/* ---- variant: two awaitlet tasks ---- */

static void *task_a(void *arg)
{
    long left = *(long *)arg;
    for (;;) {
        int c;
        if (awaitlet_io(sv[0], EV_READ, -1) < 0)
            bench_die("awaitlet_io A");
        if ((c = get_byte(sv[0])) == -2)
            continue;
        if (c < 0)
            bench_die("read A");
        if (--left == 0) {
            put_byte(sv[0], QUIT);
            return NULL;
        }
        put_byte(sv[0], PING);
    }
}

static void *task_b(void *arg)
{
    (void)arg;
    for (;;) {
        int c;
        if (awaitlet_io(sv[1], EV_READ, -1) < 0)
            bench_die("awaitlet_io B");
        if ((c = get_byte(sv[1])) == -2)
            continue;
        if (c < 0)
            bench_die("read B");
        if (c == QUIT) {
            /* Same exit as the baseline: whatever the runtime keeps active
             * on the loop, ev_run below returns now. */
            ev_break(awaitlet_current_loop(), EVBREAK_ALL);
            return NULL;
        }
        put_byte(sv[1], (char)c);
    }
}

static double run_task(long n)
{
    awaitlet_task *a, *b;
    double t0, t1;
    t0 = bench_now();
    if (!(a = awaitlet_async_def(loop, task_a, &n)) || !(b = awaitlet_async_def(loop, task_b, NULL)))
        bench_die("awaitlet_async_def");
    put_byte(sv[0], PING);
    ev_run(loop, 0);
    errno = 0;
    if ((awaitlet_join(a) == NULL && errno) || (awaitlet_join(b) == NULL && errno))
        bench_die("awaitlet_join");
    t1 = bench_now();
    return t1 - t0;
}

int main(int argc, char **argv)
{
    struct bench_args args;
    struct bench_variant v[2] = {
        { .name = "callback", .run = run_callback },
        { .name = "task", .run = run_task },
    };

    bench_parse(argc, argv, &args, "callback task");
    v[0].n = v[1].n = bench_scaled(&args, 10000);

    if (!(loop = ev_loop_new(EVFLAG_AUTO)))
        bench_die("ev_loop_new");
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        bench_die("socketpair");

    if (!bench_only(v, 2, &args)) {
        bench_interleave(v, 2, args.rounds);
        bench_report("pingpong", &v[0], "ns/roundtrip", args.rounds, NULL);
        bench_report("pingpong", &v[1], "ns/roundtrip", args.rounds, NULL);
        bench_ratio("pingpong", &v[1], &v[0], "(target <= 1.05)");
    }

    close(sv[0]);
    close(sv[1]);
    ev_loop_destroy(loop);
    return 0;
}
