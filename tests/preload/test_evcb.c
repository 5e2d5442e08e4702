/*
 * test_evcb.c -- PQAWAIT_EV_CALLBACKS=1 (set by meson for this program):
 * the rules a legacy libev program relies on, each checked.  Linked the
 * way a relinked program is (libpqawait ahead of libev), so the ASan and
 * valgrind runs of the shim suite cover freed watchers.
 *
 *   every_type   io, timer, periodic, signal, child, stat, idle, prepare,
 *                check, fork, async, embed: each callback runs as a task
 *                and may suspend; ev_cleanup runs plainly (destroy)
 *   per_watcher  while a watcher's callback is suspended its new events
 *                wait, are delivered in order afterwards, other watchers
 *                run meanwhile; never two callbacks of one watcher at once
 *   order        callbacks that never suspend run in exactly libev's order
 *                (priorities, last-queued first, feeds from callbacks): the
 *                same sequence as on a loop where libev runs them itself;
 *                order_suspend: the same when one of them suspends in the
 *                middle of a dispatch
 *   freed        watchers freed by their own callback (before and after it
 *                suspended), by another callback while queued or while
 *                their callback is suspended, re-initialised (ev_io_set,
 *                ev_set_cb) while suspended: nothing touches freed memory
 *                (ASan/valgrind) and the new callback waits for the old one
 *   invoke_feed  ev_invoke runs a task (fed instead while busy), ev_feed_event,
 *                a nested ev_run from a callback, ev_break after a suspension
 *   threads      two loops in two threads
 *   runtime      the runtime's own watchers never become tasks
 *   foreign      a program that set its own invoke function is left alone
 */
#include <fcntl.h>
#include <pqawait.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "../runtime/helpers.h"

static char order_log[256];
static int order_n;

static void note(char c)
{
    if (order_n < (int)sizeof order_log - 1)
        order_log[order_n++] = c;
    order_log[order_n] = '\0';
}

static void reset_log(void)
{
    order_n = 0;
    order_log[0] = '\0';
}

/* ---- every watcher type ---- */

enum { T_IO, T_TIMER, T_PERIODIC, T_SIGNAL, T_CHILD, T_STAT, T_IDLE, T_PREPARE, T_CHECK,
       T_FORK, T_ASYNC, T_EMBED, T_INNER, T_N };
static unsigned as_task, suspended_ok, done_mask;

static void mark(int type, int suspend)
{
    if (awaitlet_in_context())
        as_task |= 1u << type;
    if (suspend && awaitlet_sleep(0.001) == 0)
        suspended_ok |= 1u << type;
    done_mask |= 1u << type;
}

static void io_cb(struct ev_loop *l, ev_io *w, int r)
{
    (void)r;
    char c;
    ck_assert_int_eq(read(w->fd, &c, 1), 1);
    ev_io_stop(l, w);
    mark(T_IO, 1);
}
static void timer_cb(struct ev_loop *l, ev_timer *w, int r) { (void)l, (void)w, (void)r; mark(T_TIMER, 1); }
static void periodic_cb(struct ev_loop *l, ev_periodic *w, int r)
{
    (void)r;
    ev_periodic_stop(l, w);
    mark(T_PERIODIC, 1);
}
static void signal_cb(struct ev_loop *l, ev_signal *w, int r)
{
    (void)r;
    ev_signal_stop(l, w);
    mark(T_SIGNAL, 1);
}
static void child_cb(struct ev_loop *l, ev_child *w, int r)
{
    (void)r;
    ev_child_stop(l, w);
    ck_assert(WIFEXITED(w->rstatus) && WEXITSTATUS(w->rstatus) == 3);
    mark(T_CHILD, 1);
}
static void stat_cb(struct ev_loop *l, ev_stat *w, int r)
{
    (void)r;
    if (w->attr.st_size == 0)
        return; /* not the change we made */
    ev_stat_stop(l, w);
    mark(T_STAT, 1);
}
static void idle_cb(struct ev_loop *l, ev_idle *w, int r)
{
    (void)r;
    ev_idle_stop(l, w);
    mark(T_IDLE, 1);
}
static void prepare_cb(struct ev_loop *l, ev_prepare *w, int r)
{
    (void)r;
    ev_prepare_stop(l, w);
    mark(T_PREPARE, 1);
}
static void check_cb(struct ev_loop *l, ev_check *w, int r)
{
    (void)r;
    ev_check_stop(l, w);
    mark(T_CHECK, 1);
}
static void fork_cb(struct ev_loop *l, ev_fork *w, int r)
{
    (void)r;
    ev_fork_stop(l, w);
    mark(T_FORK, 1);
}
static void async_cb(struct ev_loop *l, ev_async *w, int r)
{
    (void)r;
    ev_async_stop(l, w);
    mark(T_ASYNC, 1);
}
static void inner_cb(struct ev_loop *l, ev_io *w, int r)
{
    (void)r;
    char c;
    ck_assert_int_eq(read(w->fd, &c, 1), 1);
    ev_io_stop(l, w);
    mark(T_INNER, 0);
}
static void embed_cb(struct ev_loop *l, ev_embed *w, int r)
{
    (void)r;
    ev_embed_sweep(l, w);
    if (done_mask & (1u << T_INNER)) {
        ev_embed_stop(l, w);
        mark(T_EMBED, 1);
    }
}
static void cleanup_cb(struct ev_loop *l, ev_cleanup *w, int r)
{
    (void)l, (void)r;
    *(int *)w->data = awaitlet_in_context() ? 2 : 1;
}
static void touch_cb(struct ev_loop *l, ev_timer *w, int r)
{
    (void)l, (void)r;
    int fd = open(w->data, O_WRONLY | O_APPEND);
    ck_assert_int_eq(write(fd, "changed", 7), 7);
    close(fd);
}
static void guard_cb(struct ev_loop *l, ev_timer *w, int r)
{
    (void)w, (void)r;
    ev_break(l, EVBREAK_ALL);
}
static void later_cb(struct ev_loop *l, ev_timer *w, int r)
{
    (void)l, (void)r;
    ck_assert_int_eq(write((int)T_INT(w->data), "y", 1), 1);
}

static ev_async *async_w;
static struct ev_loop *async_loop;
static void *async_sender(void *arg)
{
    (void)arg;
    usleep(10000);
    ev_async_send(async_loop, async_w);
    return NULL;
}

START_TEST(test_every_type)
{
    struct ev_loop *loop = EV_DEFAULT; /* ev_child needs it */
    as_task = suspended_ok = done_mask = 0;
    int p[2], q[2];
    t_pipe(p);
    t_pipe(q);
    ck_assert_int_eq(write(p[1], "x", 1), 1);
    char name[] = "/tmp/pqa-evcb-XXXXXX";
    int sfd = mkstemp(name);
    ck_assert_int_ge(sfd, 0);
    close(sfd);
    ev_io io;
    ev_timer timer, touch, guard, later;
    ev_periodic per;
    ev_signal sig;
    ev_child child;
    ev_stat st;
    ev_idle idle;
    ev_prepare prep;
    ev_check chk;
    ev_fork fk;
    ev_async as;
    ev_embed emb;
    ev_io inner;
    ev_io_init(&io, io_cb, p[0], EV_READ);
    ev_io_start(loop, &io);
    ev_timer_init(&timer, timer_cb, 0.001, 0);
    ev_timer_start(loop, &timer);
    ev_periodic_init(&per, periodic_cb, ev_now(loop) + 0.01, 0, 0);
    ev_periodic_start(loop, &per);
    ev_signal_init(&sig, signal_cb, SIGUSR2);
    ev_signal_start(loop, &sig);
    pid_t pid = fork();
    if (pid == 0)
        _exit(3);
    ev_child_init(&child, child_cb, pid, 0);
    ev_child_start(loop, &child);
    ev_stat_init(&st, stat_cb, name, 0.01);
    ev_stat_start(loop, &st);
    ev_timer_init(&touch, touch_cb, 0.03, 0);
    touch.data = name;
    ev_timer_start(loop, &touch);
    ev_idle_init(&idle, idle_cb);
    ev_idle_start(loop, &idle);
    ev_prepare_init(&prep, prepare_cb);
    ev_prepare_start(loop, &prep);
    ev_check_init(&chk, check_cb);
    ev_check_start(loop, &chk);
    ev_fork_init(&fk, fork_cb);
    ev_fork_start(loop, &fk);
    ev_loop_fork(loop); /* fork watchers run on the next iteration */
    ev_async_init(&as, async_cb);
    ev_async_start(loop, &as);
    async_w = &as;
    async_loop = loop;
    pthread_t th;
    pthread_create(&th, NULL, async_sender, NULL);
    struct ev_loop *other = NULL;
    unsigned want = (1u << T_N) - 1;
    if (ev_embeddable_backends() & ev_recommended_backends())
        other = ev_loop_new(ev_embeddable_backends() & ev_recommended_backends());
    if (other) {
        ev_io_init(&inner, inner_cb, q[0], EV_READ);
        ev_io_start(other, &inner);
        ev_embed_init(&emb, embed_cb, other);
        ev_embed_start(loop, &emb);
        /* written later: the embed's prepare sweeps the inner loop once
         * while registering, and would consume an early event itself */
        ev_timer_init(&later, later_cb, 0.02, 0);
        later.data = T_PTR(q[1]);
        ev_timer_start(loop, &later);
    } else {
        want &= ~((1u << T_EMBED) | (1u << T_INNER));
    }
    ev_timer_init(&guard, guard_cb, 5, 0);
    ev_timer_start(loop, &guard);
    kill(getpid(), SIGUSR2);
    while ((done_mask & want) != want && ev_timer_remaining(loop, &guard) > 0)
        ev_run(loop, EVRUN_ONCE);
    pthread_join(th, NULL);
    ck_assert_msg((done_mask & want) == want, "ran %#x of %#x", done_mask, want);
    ck_assert_msg((as_task & want) == want, "as tasks %#x of %#x", as_task, want);
    unsigned susp = want & ~(1u << T_INNER);
    ck_assert_msg((suspended_ok & susp) == susp, "suspended %#x of %#x", suspended_ok, susp);
    ev_timer_stop(loop, &guard);
    ev_timer_stop(loop, &timer);
    ev_timer_stop(loop, &touch);
    /* ev_cleanup at ev_loop_destroy: plainly, never a task */
    if (other) {
        int how = 0;
        ev_cleanup cl;
        ev_cleanup_init(&cl, cleanup_cb);
        cl.data = &how;
        ev_cleanup_start(other, &cl);
        ev_loop_destroy(other);
        ck_assert_int_eq(how, 1);
    }
    t_drain(loop, 100);
    unlink(name);
    t_close2(p);
    t_close2(q);
}
END_TEST

/* ---- per-watcher order ---- */

static int depth, max_depth, w_calls, pw_fired;
static ev_timer pw_timers[3];

static void slow_cb(struct ev_loop *l, ev_io *w, int r)
{
    (void)l, (void)r;
    depth++;
    if (depth > max_depth)
        max_depth = depth;
    char buf[8];
    ssize_t n = read(w->fd, buf, sizeof buf);
    for (ssize_t i = 0; i < n; i++)
        note(buf[i]);
    if (w_calls++ == 0) {
        /* suspended until the three timers ran: two of them give its
         * watcher more data meanwhile, the third notes 'O'.  Started here,
         * so however slow the machine (valgrind), they run while we sleep. */
        for (int i = 0; i < 3; i++)
            ev_timer_start(l, &pw_timers[i]);
        double until = t_now() + 5;
        while (pw_fired < 3 && t_now() < until)
            ck_assert_int_eq(awaitlet_sleep(0.002), 0);
    }
    depth--;
}

static void writer_cb(struct ev_loop *l, ev_timer *w, int r)
{
    (void)l, (void)r;
    int fd = (int)T_INT(w->data);
    ck_assert_int_eq(write(fd, "b", 1), 1);
    pw_fired++;
}

static void other_cb(struct ev_loop *l, ev_timer *w, int r)
{
    (void)l, (void)w, (void)r;
    note('O');
    pw_fired++;
}

static void writer2_cb(struct ev_loop *l, ev_timer *w, int r)
{
    (void)l, (void)r;
    ck_assert_int_eq(write((int)T_INT(w->data), "c", 1), 1);
    pw_fired++;
}

START_TEST(test_per_watcher)
{
    int p[2];
    t_pipe(p);
    reset_log();
    depth = max_depth = w_calls = pw_fired = 0;
    ev_io w;
    ev_io_init(&w, slow_cb, p[0], EV_READ);
    ev_io_start(t_loop, &w);
    /* started by slow_cb once it has 'a' (in this order of time) */
    ev_timer_init(&pw_timers[0], writer_cb, 0.001, 0);
    pw_timers[0].data = T_PTR(p[1]);
    ev_timer_init(&pw_timers[1], other_cb, 0.002, 0);
    ev_timer_init(&pw_timers[2], writer2_cb, 0.003, 0);
    pw_timers[2].data = T_PTR(p[1]);
    ck_assert_int_eq(write(p[1], "a", 1), 1);
    double until = t_now() + 5;
    while (order_n < 4 && t_now() < until)
        ev_run(t_loop, EVRUN_ONCE);
    ev_io_stop(t_loop, &w);
    for (int i = 0; i < 3; i++)
        ev_timer_stop(t_loop, &pw_timers[i]);
    ck_assert_int_eq(max_depth, 1);
    /* a, then the other watcher ran while w's callback slept, then b and c
     * (held, in one call or two) after it ended */
    ck_assert_str_eq(order_log, "aObc");
    ck_assert_int_ge(w_calls, 2);
    t_drain(t_loop, 100);
    t_close2(p);
}
END_TEST

/* ---- order of callbacks that never suspend ---- */

static ev_idle ow[8];
static int order_suspend = -1; /* ord_cb of this one suspends (in a task) */
static struct ev_loop *oloop;

static void ord_cb(struct ev_loop *l, ev_idle *w, int r)
{
    (void)r;
    int i = (int)(w - ow);
    note((char)('A' + i));
    if (i == 2) /* feeds from inside a callback restart from the top priority */
        ev_feed_event(l, &ow[7], EV_CUSTOM);
    if (i == 5)
        ev_feed_event(l, &ow[6], EV_CUSTOM);
    if (i == order_suspend && awaitlet_in_context()) {
        /* suspends in the middle of a dispatch: the others go on, in order */
        ck_assert_int_eq(awaitlet_sleep(0.001), 0);
        note((char)('a' + i));
    }
    (void)oloop;
}

static void run_order(struct ev_loop *l)
{
    static const int pri[8] = {0, 2, -1, 0, 1, -2, 2, 1};
    reset_log();
    for (int i = 0; i < 8; i++) {
        ev_idle_init(&ow[i], ord_cb);
        ev_set_priority(&ow[i], pri[i]);
    }
    for (int i = 0; i < 6; i++)
        ev_feed_event(l, &ow[i], EV_CUSTOM);
    ev_feed_event(l, &ow[3], EV_CUSTOM); /* twice: one call */
    ev_run(l, EVRUN_NOWAIT);
}

START_TEST(test_order)
{
    run_order(t_loop);
    char ours[64];
    strcpy(ours, order_log);
    struct ev_loop *plain = ev_loop_new(0);
    ev_set_invoke_pending_cb(plain, ev_invoke_pending); /* libev's own */
    run_order(plain);
    ev_loop_destroy(plain);
    ck_assert_str_eq(ours, order_log);
    ck_assert_int_eq((int)strlen(ours), 8);
}
END_TEST

/* The same with callbacks that suspend in the middle of a dispatch (the
 * rest of that dispatch goes on around them): the callbacks still start in
 * libev's order, and the suspended ones end after the others. */
START_TEST(test_order_suspend)
{
    struct ev_loop *plain = ev_loop_new(0);
    ev_set_invoke_pending_cb(plain, ev_invoke_pending); /* libev's own */
    run_order(plain);
    ev_loop_destroy(plain);
    char want[64];
    strcpy(want, order_log);
    for (int k = 0; k < 8; k++) {
        order_suspend = k;
        run_order(t_loop);
        t_drain(t_loop, 100);
        char started[64], *o = started;
        for (const char *c = order_log; *c; c++)
            if (*c >= 'A' && *c <= 'H')
                *o++ = *c;
        *o = '\0';
        ck_assert_str_eq(started, want);
        ck_assert_int_eq(order_log[8], 'a' + k); /* ended after all the others started */
        ck_assert_int_eq((int)strlen(order_log), 9);
    }
    order_suspend = -1;
}
END_TEST

/* ---- freed, re-initialised ---- */

struct hw {
    ev_io io;
    int fd;
    char tag;
};

static struct hw *victim;

static void self_free_cb(struct ev_loop *l, ev_io *w, int r)
{
    (void)r;
    struct hw *h = (struct hw *)w;
    char c;
    (void)!read(w->fd, &c, 1);
    note(h->tag);
    if (h->tag == 'S')
        ck_assert_int_eq(awaitlet_sleep(0.005), 0);
    ev_io_stop(l, w);
    free(h);
}

static ev_timer kill_t, reinit_t; /* started by the callbacks they act on */
static int reinit_done;

static void sleeper_cb(struct ev_loop *l, ev_io *w, int r)
{
    (void)r;
    char c;
    (void)!read(w->fd, &c, 1);
    note('V');
    ev_timer_start(l, &kill_t); /* freed under us meanwhile */
    double until = t_now() + 5;
    while (victim && t_now() < until)
        ck_assert_int_eq(awaitlet_sleep(0.002), 0);
    note('v');
    /* w must not be touched now: it is gone */
}

static void killer_cb(struct ev_loop *l, ev_timer *w, int r)
{
    (void)w, (void)r;
    note('K');
    ev_io_stop(l, &victim->io); /* it is pending again: the held event dies */
    free(victim);
    victim = NULL;
}

static struct hw *queued;

static void first_cb(struct ev_loop *l, ev_idle *w, int r)
{
    (void)w, (void)r;
    note('F');
    ev_io_stop(l, &queued->io); /* queued behind us in this very iteration */
    free(queued);
    queued = NULL;
}

static void never_cb(struct ev_loop *l, ev_io *w, int r)
{
    (void)l, (void)w, (void)r;
    note('!');
}

static struct hw *reinit;
static int reinit_fd2;

static void old_cb(struct ev_loop *l, ev_io *w, int r)
{
    (void)w, (void)r;
    char c;
    (void)!read(w->fd, &c, 1);
    note('1');
    ev_timer_start(l, &reinit_t); /* re-initialises w while we sleep */
    double until = t_now() + 5;
    while (!reinit_done && t_now() < until)
        ck_assert_int_eq(awaitlet_sleep(0.002), 0);
    note('2');
}

static void new_cb(struct ev_loop *l, ev_io *w, int r)
{
    (void)r;
    char c;
    (void)!read(w->fd, &c, 1);
    note('N');
    ev_io_stop(l, w);
    free(w);
}

static void reinit_cb(struct ev_loop *l, ev_timer *w, int r)
{
    (void)w, (void)r;
    note('R');
    ev_io_stop(l, &reinit->io);
    ev_io_set(&reinit->io, reinit_fd2, EV_READ);
    ev_set_cb(&reinit->io, new_cb);
    ev_io_start(l, &reinit->io);
    ck_assert_int_eq(write(reinit_fd2 + 1, "n", 1), 1); /* pipe: write end is read end + 1 */
    reinit_done = 1;
}

static struct hw *hw_new(struct ev_loop *l, int fd, char tag, void (*cb)(struct ev_loop *, ev_io *, int))
{
    struct hw *h = malloc(sizeof *h);
    ev_io_init(&h->io, cb, fd, EV_READ);
    h->fd = fd;
    h->tag = tag;
    ev_io_start(l, &h->io);
    return h;
}

START_TEST(test_freed)
{
    int a[2], b[2], c[2], d[2], e[2], f[2];
    t_pipe(a);
    t_pipe(b);
    t_pipe(c);
    t_pipe(d);
    t_pipe(e);
    /* a pipe whose write end is its read end + 1, for reinit_cb */
    ck_assert_int_eq(pipe2(f, O_NONBLOCK | O_CLOEXEC), 0);
    ck_assert_int_eq(f[1], f[0] + 1);
    reset_log();
    /* frees itself without suspending, and after suspending */
    hw_new(t_loop, a[0], 's', self_free_cb);
    hw_new(t_loop, b[0], 'S', self_free_cb);
    ck_assert_int_eq(write(a[1], "x", 1), 1);
    ck_assert_int_eq(write(b[1], "x", 1), 1);
    t_drain(t_loop, 0);
    for (int i = 0; i < 20 && order_n < 2; i++)
        ev_run(t_loop, EVRUN_ONCE);
    /* freed by another callback while its own is suspended and an event
     * of it is held */
    victim = hw_new(t_loop, c[0], 'V', sleeper_cb);
    ck_assert_int_eq(write(c[1], "xy", 2), 2);
    ev_timer_init(&kill_t, killer_cb, 0.001, 0); /* started by sleeper_cb */
    /* freed by another callback while queued in the same iteration */
    queued = hw_new(t_loop, d[0], 'Q', never_cb);
    ev_idle first;
    ev_idle_init(&first, first_cb);
    ev_set_priority(&first, EV_MAXPRI);
    ck_assert_int_eq(write(d[1], "x", 1), 1);
    ev_feed_event(t_loop, &first, EV_CUSTOM); /* runs before queued's event */
    ev_feed_event(t_loop, &queued->io, EV_READ);
    /* re-initialised (ev_io_set, ev_set_cb) while its callback is suspended */
    reinit = hw_new(t_loop, e[0], 'r', old_cb);
    reinit_fd2 = f[0];
    ck_assert_int_eq(write(e[1], "x", 1), 1);
    reinit_done = 0;
    ev_timer_init(&reinit_t, reinit_cb, 0.001, 0); /* started by old_cb */
    double until = t_now() + 10;
    while (awaitlet_loop_tasks(t_loop) + ev_is_active(&kill_t) + ev_is_active(&reinit_t) +
               (strchr(order_log, 'N') == NULL) > 0 && t_now() < until)
        ev_run(t_loop, EVRUN_ONCE);
    /* s and S ran; F freed Q before it ran; V slept, K freed it, v ended;
     * the re-initialised watcher's new callback ran after the old one */
    ck_assert_msg(!strchr(order_log, '!'), "a freed queued watcher ran: %s", order_log);
    ck_assert_msg(strchr(order_log, 'v') > strchr(order_log, 'K'), "%s", order_log);
    ck_assert_msg(strchr(order_log, 'N') > strchr(order_log, '2'), "%s", order_log);
    ck_assert_msg(strchr(order_log, '2') > strchr(order_log, 'R'), "%s", order_log);
    ck_assert_int_eq(awaitlet_loop_tasks(t_loop), 0);
    t_close2(a), t_close2(b), t_close2(c), t_close2(d), t_close2(e), t_close2(f);
}
END_TEST

/* ---- ev_invoke, ev_feed_event, nested ev_run, ev_break ---- */

static int inv_in_task, inv_depth, inv_max, inv_calls;

static void inv_cb(struct ev_loop *l, ev_idle *w, int r)
{
    (void)l, (void)w, (void)r;
    inv_calls++;
    inv_in_task += awaitlet_in_context();
    if (++inv_depth > inv_max)
        inv_max = inv_depth;
    if (inv_calls == 1)
        ck_assert_int_eq(awaitlet_sleep(0.02), 0);
    inv_depth--;
}

static int nested_saw;

static void inner_idle_cb(struct ev_loop *l, ev_idle *w, int r)
{
    (void)r;
    ev_idle_stop(l, w);
    nested_saw = 1 + awaitlet_in_context();
}

static void nester_cb(struct ev_loop *l, ev_timer *w, int r)
{
    (void)r;
    ev_idle *in = w->data;
    ev_idle_start(l, in);
    ev_run(l, EVRUN_NOWAIT); /* nested: runs the idle watcher */
    ck_assert_int_eq(awaitlet_sleep(0.005), 0);
    ev_break(l, EVBREAK_ONE); /* after a suspension */
}

START_TEST(test_invoke_feed)
{
    ev_idle w;
    ev_idle_init(&w, inv_cb);
    inv_in_task = inv_depth = inv_max = inv_calls = 0;
    ev_invoke(t_loop, &w, EV_CUSTOM); /* a task; it suspends */
    ck_assert_int_eq(inv_calls, 1);
    ck_assert_int_eq(inv_in_task, 1);
    ev_invoke(t_loop, &w, EV_CUSTOM); /* busy: fed, delivered after */
    ck_assert_int_eq(inv_calls, 1);
    ev_feed_event(t_loop, &w, EV_CUSTOM); /* OR-ed into the same pending entry */
    t_drain(t_loop, 100);
    ev_run(t_loop, EVRUN_NOWAIT);
    ck_assert_int_eq(inv_calls, 2);
    ck_assert_int_eq(inv_max, 1);
    ck_assert_int_eq(inv_in_task, 2);
    /* nested ev_run, then ev_break after a suspension ends the outer run */
    ev_timer t;
    ev_idle in;
    ev_idle_init(&in, inner_idle_cb);
    ev_timer_init(&t, nester_cb, 0.001, 0);
    t.data = &in;
    ev_timer_start(t_loop, &t);
    ev_timer keep;
    ev_timer_init(&keep, guard_cb, 5, 0); /* keeps the loop alive; breaks at worst */
    ev_timer_start(t_loop, &keep);
    double t0 = t_now();
    ev_run(t_loop, 0);
    ck_assert(t_now() - t0 < 2);
    ck_assert_int_eq(nested_saw, 2); /* the nested run's callback was a task too */
    ev_timer_stop(t_loop, &keep);
    t_drain(t_loop, 100);
}
END_TEST

/* ---- threads ---- */

static void th_cb(struct ev_loop *l, ev_timer *w, int r)
{
    (void)r;
    int *n = w->data;
    if (awaitlet_in_context() && awaitlet_sleep(0.002) == 0)
        ++*n;
    if (*n >= 10)
        ev_timer_stop(l, w);
}

static void *th_main(void *arg)
{
    int *n = arg;
    struct ev_loop *l = ev_loop_new(0);
    ev_timer t;
    ev_timer_init(&t, th_cb, 0.001, 0.001);
    t.data = n;
    ev_timer_start(l, &t);
    ev_run(l, 0); /* ends when the timer stopped and no task is left */
    awaitlet_loop_close(l);
    ev_loop_destroy(l);
    return NULL;
}

START_TEST(test_threads)
{
    int n1 = 0, n2 = 0;
    pthread_t a, b;
    pthread_create(&a, NULL, th_main, &n1);
    pthread_create(&b, NULL, th_main, &n2);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    ck_assert_int_ge(n1, 10);
    ck_assert_int_ge(n2, 10);
}
END_TEST

/* ---- the runtime's own watchers ---- */

static void *rt_task(void *arg)
{
    (void)arg;
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(awaitlet_sleep(0.002), 0);
    ck_assert_int_eq(awaitlet_yield(), 0);
    return T_PTR(7);
}

static int prog_ran;

static void prog_cb(struct ev_loop *l, ev_timer *w, int r)
{
    (void)l, (void)w, (void)r;
    prog_ran += awaitlet_in_context();
}

START_TEST(test_runtime)
{
    ck_assert_int_eq(pqawait_stats_enable(1), 0);
    pqawait_stats s0, s1;
    pqawait_stats_get(&s0);
    ev_timer t;
    ev_timer_init(&t, prog_cb, 0.001, 0);
    ev_timer_start(t_loop, &t);
    awaitlet_task *k = awaitlet_async_def(t_loop, rt_task, NULL);
    T_JOIN_EQ(k, 7); /* its timers, the ready list: the runtime's */
    t_drain(t_loop, 100);
    ev_run(t_loop, EVRUN_NOWAIT);
    pqawait_stats_get(&s1);
    ck_assert_int_eq(prog_ran, 1);
    ck_assert_uint_eq(s1.cb_tasks - s0.cb_tasks, 1); /* only the program's timer */
}
END_TEST

/* ---- a program with its own invoke function ---- */

static int foreign_in_task = -1;

static void foreign_cb(struct ev_loop *l, ev_idle *w, int r)
{
    (void)r;
    ev_idle_stop(l, w);
    foreign_in_task = awaitlet_in_context();
}

static void my_invoke(struct ev_loop *l)
{
    ev_invoke_pending(l);
}

START_TEST(test_foreign)
{
    struct ev_loop *l = ev_loop_new(0);
    ev_set_invoke_pending_cb(l, my_invoke);
    ev_idle w;
    ev_idle_init(&w, foreign_cb);
    ev_idle_start(l, &w);
    ev_run(l, 0);
    ck_assert_int_eq(foreign_in_task, 0);
    ev_loop_destroy(l);
}
END_TEST

int main(void)
{
    if (!getenv("PQAWAIT_EV_CALLBACKS")) {
        fprintf(stderr, "run with PQAWAIT_EV_CALLBACKS=1\n");
        return 1;
    }
    Suite *s = suite_create("ev_callbacks");
    TCase *tc = t_tcase("ev_callbacks");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_every_type);
    tcase_add_test(tc, test_per_watcher);
    tcase_add_test(tc, test_order);
    tcase_add_test(tc, test_order_suspend);
    tcase_add_test(tc, test_freed);
    tcase_add_test(tc, test_invoke_feed);
    tcase_add_test(tc, test_threads);
    tcase_add_test(tc, test_runtime);
    tcase_add_test(tc, test_foreign);
    suite_add_tcase(s, tc);
    return t_run_suite(s);
}
