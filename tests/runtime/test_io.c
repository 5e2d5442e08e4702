/*
 * test_io.c -- awaitlet_io moving real data between tasks.
 *
 * Real descriptors (pipes and AF_UNIX socketpairs, nonblocking) carry real
 * data between tasks in both directions, so a wait that wakes the wrong task,
 * too early, or not at all shows up as lost or reordered messages or a
 * timeout, not as a silent pass.  Also: readiness as a subset of what was
 * asked, hang-ups and errors showing as ready, bad arguments, and the fd
 * number reuse rule (AWAITLET_FRESH), exercised both ways the header allows
 * and across tasks, where no flag must be needed.  Timeouts, sleep and
 * yield live in test_time.c.
 */
#include <math.h>

#include "helpers.h"

#include <signal.h>
#include <stdio.h>

/* Read exactly n bytes, waiting as needed.  0 or -1. */
static int read_full(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        } else if (r < 0 && errno == EAGAIN) {
            if (awaitlet_io(fd, EV_READ, 10.0) != EV_READ)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
        if (r < 0 && errno == ENOTSOCK)
            r = write(fd, p, n);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        } else if (r < 0 && errno == EAGAIN) {
            if (awaitlet_io(fd, EV_WRITE, 10.0) != EV_WRITE)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* --- ping-pong ------------------------------------------------------------ */

#define ROUNDS 2000

struct pp {
    int rd, wr;  /* this side's read and write fds */
    int first;   /* 1: sends first */
    int got;     /* messages received in order */
};

static void *ping_pong(void *arg)
{
    struct pp *p = arg;
    for (int i = 0; i < ROUNDS; i++) {
        int v;
        if (p->first) {
            if (write_full(p->wr, &i, sizeof i) || read_full(p->rd, &v, sizeof v))
                return T_PTR(-1);
        } else {
            if (read_full(p->rd, &v, sizeof v))
                return T_PTR(-1);
            if (write_full(p->wr, &v, sizeof v))
                return T_PTR(-1);
        }
        if (v != i)
            return T_PTR(-2);
        p->got++;
    }
    return T_PTR(p->got);
}

START_TEST(pipe_ping_pong)
{
    int ab[2], ba[2];
    t_pipe(ab);
    t_pipe(ba);
    struct pp a = {ba[0], ab[1], 1, 0}, b = {ab[0], ba[1], 0, 0};
    awaitlet_task *ta = awaitlet_async_def(t_loop, ping_pong, &a);
    awaitlet_task *tb = awaitlet_async_def(t_loop, ping_pong, &b);
    ck_assert_ptr_nonnull(ta);
    ck_assert_ptr_nonnull(tb);
    T_JOIN_EQ(ta, ROUNDS);
    T_JOIN_EQ(tb, ROUNDS);
    t_close2(ab);
    t_close2(ba);
}
END_TEST

START_TEST(socketpair_ping_pong_both_ways)
{
    /* The same socket carries both directions; the roles swap so each end
     * both starts exchanges and answers them. */
    int sv[2];
    t_socketpair(sv);
    for (int round = 0; round < 2; round++) {
        struct pp a = {sv[0], sv[0], round == 0, 0}, b = {sv[1], sv[1], round == 1, 0};
        awaitlet_task *tb = awaitlet_async_def(t_loop, ping_pong, &b);
        awaitlet_task *ta = awaitlet_async_def(t_loop, ping_pong, &a);
        ck_assert_ptr_nonnull(ta);
        ck_assert_ptr_nonnull(tb);
        T_JOIN_EQ(tb, ROUNDS);
        T_JOIN_EQ(ta, ROUNDS);
    }
    t_close2(sv);
}
END_TEST

/* --- back-pressure: fill until EAGAIN, wait EV_WRITE ---------------------- */

struct fill {
    int wfd, rfd;
    size_t filled;      /* bytes written before the first EAGAIN */
    size_t total;       /* bytes the writer wrote in all */
    size_t drained;     /* bytes the reader read */
    int write_wait_rc;  /* what the first EV_WRITE wait returned */
    int reader_ran_before_writable;
    int reader_started;
};

#define FILL_EXTRA 65536

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 7 + (i >> 9));
}

static void *filler(void *arg)
{
    struct fill *f = arg;
    unsigned char buf[4096];
    size_t off = 0;
    for (;;) {
        for (size_t i = 0; i < sizeof buf; i++)
            buf[i] = pattern(off + i);
        ssize_t r = write(f->wfd, buf, sizeof buf);
        if (r < 0 && errno == EAGAIN)
            break;
        if (r <= 0)
            return T_PTR(-1);
        off += (size_t)r;
    }
    f->filled = off;
    f->write_wait_rc = awaitlet_io(f->wfd, EV_WRITE, 10.0);
    f->reader_ran_before_writable = f->reader_started;
    /* Now write some more, waiting whenever the buffer is full again. */
    size_t end = off + FILL_EXTRA;
    while (off < end) {
        size_t n = end - off < sizeof buf ? end - off : sizeof buf;
        for (size_t i = 0; i < n; i++)
            buf[i] = pattern(off + i);
        if (write_full(f->wfd, buf, n))
            return T_PTR(-1);
        off += n;
    }
    f->total = off;
    shutdown(f->wfd, SHUT_WR);
    return T_PTR(1);
}

static void *drainer(void *arg)
{
    struct fill *f = arg;
    /* Let the writer hit EAGAIN and park first. */
    if (awaitlet_sleep(0.02) != 0)
        return T_PTR(-1);
    f->reader_started = 1;
    unsigned char buf[1000];
    for (;;) {
        ssize_t r = read(f->rfd, buf, sizeof buf);
        if (r == 0)
            break;
        if (r < 0 && errno == EAGAIN) {
            if (awaitlet_io(f->rfd, EV_READ, 10.0) != EV_READ)
                return T_PTR(-1);
            continue;
        }
        if (r < 0)
            return T_PTR(-1);
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != pattern(f->drained + (size_t)i))
                return T_PTR(-2);
        f->drained += (size_t)r;
    }
    return T_PTR(1);
}

START_TEST(fill_until_eagain_then_wait_write)
{
    int sv[2];
    t_socketpair(sv);
    struct fill f;
    memset(&f, 0, sizeof f);
    f.wfd = sv[0];
    f.rfd = sv[1];
    awaitlet_task *tw = awaitlet_async_def(t_loop, filler, &f);
    ck_assert_ptr_nonnull(tw);
    /* The writer filled the buffer and is parked in its EV_WRITE wait. */
    ck_assert_uint_gt(f.filled, 0);
    ck_assert_int_eq(awaitlet_done(tw), 0);
    awaitlet_task *tr = awaitlet_async_def(t_loop, drainer, &f);
    ck_assert_ptr_nonnull(tr);
    T_JOIN_EQ(tr, 1);
    T_JOIN_EQ(tw, 1);
    ck_assert_int_eq(f.write_wait_rc, EV_WRITE);
    /* The buffer was full: only the reader could make it writable. */
    ck_assert_int_eq(f.reader_ran_before_writable, 1);
    ck_assert_uint_eq(f.total, f.filled + FILL_EXTRA);
    ck_assert_uint_eq(f.drained, f.total);
    t_close2(sv);
}
END_TEST

/* Same fd, two tasks: one waits EV_READ on it, the other EV_WRITE. */
struct duplex {
    int fd;
    size_t got, sent;
};

static void *duplex_reader(void *arg)
{
    struct duplex *d = arg;
    char buf[512];
    for (;;) {
        ssize_t r = read(d->fd, buf, sizeof buf);
        if (r == 0)
            return T_PTR(1);
        if (r < 0 && errno == EAGAIN) {
            if (awaitlet_io(d->fd, EV_READ, 10.0) != EV_READ)
                return T_PTR(-1);
            continue;
        }
        if (r < 0)
            return T_PTR(-1);
        d->got += (size_t)r;
    }
}

static void *duplex_writer(void *arg)
{
    struct duplex *d = arg;
    char buf[8192];
    memset(buf, 'd', sizeof buf);
    for (int i = 0; i < 64; i++) {
        if (write_full(d->fd, buf, sizeof buf))
            return T_PTR(-1);
        d->sent += sizeof buf;
    }
    shutdown(d->fd, SHUT_WR);
    return T_PTR(1);
}

START_TEST(same_fd_read_and_write_tasks)
{
    int sv[2];
    t_socketpair(sv);
    struct duplex a = {sv[0], 0, 0}, b = {sv[1], 0, 0};
    awaitlet_task *t[4];
    t[0] = awaitlet_async_def(t_loop, duplex_reader, &a);
    t[1] = awaitlet_async_def(t_loop, duplex_writer, &a);
    t[2] = awaitlet_async_def(t_loop, duplex_reader, &b);
    t[3] = awaitlet_async_def(t_loop, duplex_writer, &b);
    for (int i = 0; i < 4; i++)
        ck_assert_ptr_nonnull(t[i]);
    for (int i = 0; i < 4; i++)
        T_JOIN_EQ(t[i], 1);
    ck_assert_uint_eq(a.sent, 64 * 8192);
    ck_assert_uint_eq(b.got, a.sent);
    ck_assert_uint_eq(a.got, b.sent);
    t_close2(sv);
}
END_TEST

/* --- combined events ------------------------------------------------------ */

struct combo {
    int fd, peer;
    int rc[4];
};

static void *combo_task(void *arg)
{
    struct combo *c = arg;
    /* Writable, nothing to read. */
    c->rc[0] = awaitlet_io(c->fd, EV_READ | EV_WRITE, 1.0);
    /* Fill our send buffer, have the peer send us something: readable only. */
    char buf[4096];
    memset(buf, 'c', sizeof buf);
    while (write(c->fd, buf, sizeof buf) > 0)
        ;
    if (write(c->peer, "p", 1) != 1)
        return T_PTR(-1);
    c->rc[1] = awaitlet_io(c->fd, EV_READ | EV_WRITE, 1.0);
    /* Drain what we sent at the peer: now both. */
    while (read(c->peer, buf, sizeof buf) > 0)
        ;
    c->rc[2] = awaitlet_io(c->fd, EV_READ | EV_WRITE, 1.0);
    /* Only EV_READ asked while both are ready: never more than asked. */
    c->rc[3] = awaitlet_io(c->fd, EV_READ, 1.0);
    return T_PTR(1);
}

START_TEST(read_write_combined_returns_ready_subset)
{
    int sv[2];
    t_socketpair(sv);
    struct combo c = {sv[0], sv[1], {0, 0, 0, 0}};
    ck_assert_ptr_eq(awaitlet_run(t_loop, combo_task, &c), T_PTR(1));
    ck_assert_int_eq(c.rc[0], EV_WRITE);
    ck_assert_int_eq(c.rc[1], EV_READ);
    ck_assert_int_eq(c.rc[2], EV_READ | EV_WRITE);
    ck_assert_int_eq(c.rc[3], EV_READ);
    t_close2(sv);
}
END_TEST

/* --- hang-up and errors show as ready ------------------------------------- */

struct hup {
    int fd;
    int rc;
    ssize_t rd;
};

static void *hup_reader(void *arg)
{
    struct hup *h = arg;
    h->rc = awaitlet_io(h->fd, EV_READ, 5.0);
    char c;
    h->rd = read(h->fd, &c, 1);
    return T_PTR(1);
}

static void *closer(void *arg)
{
    int *fd = arg;
    if (awaitlet_sleep(0.01) != 0)
        return T_PTR(-1);
    close(*fd);
    *fd = -1;
    return T_PTR(1);
}

START_TEST(hangup_shows_as_ready)
{
    int p[2];
    t_pipe(p);
    struct hup h = {p[0], -5, -5};
    awaitlet_task *r = awaitlet_async_def(t_loop, hup_reader, &h);
    awaitlet_task *c = awaitlet_async_def(t_loop, closer, &p[1]);
    ck_assert_ptr_nonnull(r);
    ck_assert_ptr_nonnull(c);
    T_JOIN_EQ(r, 1);
    T_JOIN_EQ(c, 1);
    ck_assert_int_eq(h.rc, EV_READ);
    ck_assert_int_eq(h.rd, 0); /* EOF, not a spurious wakeup */
    t_close2(p);
}
END_TEST

static void *write_to_dead_peer(void *arg)
{
    int fd = *(int *)arg;
    char buf[4096];
    memset(buf, 'z', sizeof buf);
    while (write(fd, buf, sizeof buf) > 0)
        ;
    /* Parked until the peer closes: the error must wake us as writable. */
    int rc = awaitlet_io(fd, EV_WRITE, 5.0);
    ssize_t w = send(fd, buf, 1, MSG_NOSIGNAL);
    return T_PTR(rc == EV_WRITE && w < 0 && errno == EPIPE ? 1 : -rc - 100);
}

START_TEST(error_shows_as_writable)
{
    int sv[2];
    t_socketpair(sv);
    awaitlet_task *w = awaitlet_async_def(t_loop, write_to_dead_peer, &sv[0]);
    awaitlet_task *c = awaitlet_async_def(t_loop, closer, &sv[1]);
    ck_assert_ptr_nonnull(w);
    ck_assert_ptr_nonnull(c);
    T_JOIN_EQ(w, 1);
    T_JOIN_EQ(c, 1);
    t_close2(sv);
}
END_TEST

/* --- argument errors ------------------------------------------------------ */

struct bad_io {
    int rc[8], err[8];
};

/* Every bad argument is EINVAL, never a wait: a NaN duration would sit in
 * libev's timer heap forever. */
static void *bad_io_task(void *arg)
{
    struct bad_io *b = arg;
    static const struct {
        int fd, ev;
    } cases[5] = {
        {-1, EV_READ}, {0, 0}, {0, AWAITLET_FRESH}, {-7, EV_WRITE}, {0, EV_TIMER},
    };
    for (int i = 0; i < 5; i++) {
        errno = 0;
        b->rc[i] = awaitlet_io(cases[i].fd, cases[i].ev, 0.1);
        b->err[i] = errno;
    }
    errno = 0;
    b->rc[5] = awaitlet_io(0, EV_READ, NAN);
    b->err[5] = errno;
    errno = 0;
    b->rc[6] = awaitlet_sleep(NAN);
    b->err[6] = errno;
    errno = 0;
    b->rc[7] = awaitlet_set_deadline(awaitlet_current(), NAN);
    b->err[7] = errno;
    return T_PTR(1);
}

START_TEST(io_invalid_arguments)
{
    struct bad_io b;
    memset(&b, 0, sizeof b);
    ck_assert_ptr_eq(awaitlet_run(t_loop, bad_io_task, &b), T_PTR(1));
    for (int i = 0; i < 8; i++) {
        ck_assert_msg(b.rc[i] == -1 && b.err[i] == EINVAL, "case %d: rc %d errno %d", i,
                      b.rc[i], b.err[i]);
    }
}
END_TEST

/* A descriptor that is not open: the header lists no errno for it, but it
 * must neither hang nor crash.  libev reports it as an error, which shows as
 * ready; an implementation may instead fail with EBADF. */
static void *closed_fd_task(void *arg)
{
    int *out = arg;
    int fd = dup(0);
    if (fd < 0)
        return T_PTR(-1);
    close(fd);
    for (int i = 0; i < 2; i++) {
        errno = 0;
        out[2 * i] = awaitlet_io(fd, EV_READ, i ? 1.0 : 0.0);
        out[2 * i + 1] = errno;
    }
    return T_PTR(1);
}

START_TEST(io_closed_fd_does_not_hang)
{
    int out[4] = {-5, 0, -5, 0};
    double t0 = t_now();
    ck_assert_ptr_eq(awaitlet_run(t_loop, closed_fd_task, out), T_PTR(1));
    ck_assert_double_lt(t_now() - t0, 0.5); /* not the 1 s timeout */
    for (int i = 0; i < 2; i++)
        ck_assert_msg(out[2 * i] == EV_READ || (out[2 * i] == -1 && out[2 * i + 1] == EBADF),
                      "wait %d: rc %d errno %d", i, out[2 * i], out[2 * i + 1]);
}
END_TEST

/* Regular files cannot be polled (epoll refuses them); like poll(), they
 * count as always ready. */
static void *file_task(void *arg)
{
    int fd = *(int *)arg;
    int r1 = awaitlet_io(fd, EV_READ, 2.0);
    int r2 = awaitlet_io(fd, EV_READ | EV_WRITE, 2.0);
    return T_PTR(r1 == EV_READ && r2 == (EV_READ | EV_WRITE) ? 1 : -(r1 * 10 + r2) - 100);
}

START_TEST(regular_file_is_ready)
{
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    int fd = fileno(f);
    double t0 = t_now();
    ck_assert_ptr_eq(awaitlet_run(t_loop, file_task, &fd), T_PTR(1));
    ck_assert_double_lt(t_now() - t0, 1.0);
    fclose(f);
}
END_TEST

/* --- fd number reuse (AWAITLET_FRESH) ------------------------------------- */

struct fresh {
    int p[2];
    int mode; /* 0: FRESH flag, 1: wait on another fd in between */
    int rc_empty, rc_ready;
};

static void *fresh_task(void *arg)
{
    struct fresh *f = arg;
    int other[2];
    /* Register the old pipe's read end, ready. */
    if (write(f->p[1], "a", 1) != 1 || awaitlet_io(f->p[0], EV_READ, 1.0) != EV_READ)
        return T_PTR(-1);
    int old_rd = f->p[0], old_wr = f->p[1];
    close(f->p[0]);
    close(f->p[1]);
    if (pipe2(f->p, O_NONBLOCK | O_CLOEXEC) != 0)
        return T_PTR(-2);
    if (f->p[0] != old_rd || f->p[1] != old_wr)
        return T_PTR(-3); /* the test needs the same numbers */
    int flags = EV_READ;
    if (f->mode == 0) {
        flags |= AWAITLET_FRESH;
    } else {
        if (pipe2(other, O_NONBLOCK | O_CLOEXEC) != 0)
            return T_PTR(-4);
        int rc = awaitlet_io(other[1], EV_WRITE, 1.0);
        close(other[0]);
        close(other[1]);
        if (rc != EV_WRITE)
            return T_PTR(-5);
    }
    /* The new pipe is empty: must time out, not report the old readiness. */
    f->rc_empty = awaitlet_io(f->p[0], flags, 0.03);
    /* Then see data written to the new pipe. */
    if (write(f->p[1], "b", 1) != 1)
        return T_PTR(-6);
    f->rc_ready = awaitlet_io(f->p[0], EV_READ, 2.0);
    return T_PTR(1);
}

START_TEST(fd_reuse_with_fresh)
{
    for (int mode = 0; mode < 2; mode++) {
        struct fresh f;
        memset(&f, 0, sizeof f);
        f.mode = mode;
        t_pipe(f.p);
        ck_assert_ptr_eq(awaitlet_run(t_loop, fresh_task, &f), T_PTR(1));
        ck_assert_int_eq(f.rc_empty, 0);
        ck_assert_int_eq(f.rc_ready, EV_READ);
        t_close2(f.p);
    }
}
END_TEST

static void *wait_readable(void *arg)
{
    return T_PTR(awaitlet_io(*(int *)arg, EV_READ, 2.0));
}

START_TEST(fd_reuse_across_tasks_needs_no_flag)
{
    /* The FRESH rule is per task: a new task waiting on a recycled number
     * must get a working registration without any flag. */
    for (int i = 0; i < 3; i++) {
        int p[2];
        t_pipe(p);
        awaitlet_task *t = awaitlet_async_def(t_loop, wait_readable, &p[0]);
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(write(p[1], "x", 1), 1);
        T_JOIN_EQ(t, EV_READ);
        t_close2(p);
    }
}
END_TEST

static Suite *io_suite(void)
{
    Suite *s = suite_create("io");
    TCase *tc = t_tcase("data");
    tcase_add_test(tc, pipe_ping_pong);
    tcase_add_test(tc, socketpair_ping_pong_both_ways);
    tcase_add_test(tc, fill_until_eagain_then_wait_write);
    tcase_add_test(tc, same_fd_read_and_write_tasks);
    tcase_add_test(tc, read_write_combined_returns_ready_subset);
    tcase_add_test(tc, hangup_shows_as_ready);
    tcase_add_test(tc, error_shows_as_writable);
    tcase_add_test(tc, io_invalid_arguments);
    tcase_add_test(tc, io_closed_fd_does_not_hang);
    tcase_add_test(tc, regular_file_is_ready);
    tcase_add_test(tc, fd_reuse_with_fresh);
    tcase_add_test(tc, fd_reuse_across_tasks_needs_no_flag);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    return t_run_suite(io_suite());
}
