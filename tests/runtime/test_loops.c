/*
 * test_loops.c -- the runtime's per-loop state: binding, closing, walking,
 * destruction under live tasks, fork.
 *
 * The runtime finds its state for a loop by the loop's address.  So a loop
 * destroyed while the runtime still has state for it must not leave that
 * state behind for the next loop malloc puts at the same address: the test
 * serves loops from a fixed slot through ev_set_allocator, which makes "the
 * same address" deterministic (also under ASan, whose quarantine would
 * otherwise never hand the address out again).  A loop belongs to the first
 * thread that starts a task on it until awaitlet_loop_close; after fork()
 * the child owns every loop and libev has been told (ev_loop_fork), which
 * the test sees by counting the epoll_create1 calls libev makes to rebuild
 * its kernel state.
 */
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/wait.h>

#include "helpers.h"

static void *quick(void *arg)
{
    return arg;
}

static void *yield_ret(void *arg)
{
    return awaitlet_sleep(0) == 0 ? arg : T_PTR(-1);
}

static void *sleep_long(void *arg)
{
    errno = 0;
    if (awaitlet_sleep(10.0) != 0)
        return T_PTR(-errno);
    return arg;
}

/* --- a fixed address for loops ------------------------------------------- */

static _Alignas(64) unsigned char slot[64 * 1024];
static int slot_armed, slot_busy;

static void *slot_alloc(void *ptr, long size)
{
    if (ptr == (void *)slot) {
        if (size == 0) {
            slot_busy = 0;
            return NULL;
        }
        abort(); /* libev never resizes its loop struct */
    }
    if (!ptr && size > 0 && slot_armed) {
        slot_armed = 0;
        if ((size_t)size > sizeof slot || slot_busy)
            abort();
        slot_busy = 1;
        memset(slot, 0, (size_t)size);
        return slot;
    }
    if (size == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, (size_t)size);
}

/* A new loop whose struct lives in `slot` (ev_loop_new allocates it first). */
static struct ev_loop *loop_in_slot(void)
{
    ev_set_allocator(slot_alloc);
    slot_armed = 1;
    struct ev_loop *l = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_eq(l, (void *)slot);
    return l;
}

/* Run f with stderr going to a file; return what it printed. */
static char *capture_stderr(void (*f)(void *), void *arg)
{
    FILE *tmp = tmpfile();
    ck_assert_ptr_nonnull(tmp);
    fflush(stderr);
    int saved = dup(2);
    ck_assert_int_ge(saved, 0);
    ck_assert_int_eq(dup2(fileno(tmp), 2), 2);
    f(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    static char buf[1024];
    rewind(tmp);
    size_t n = fread(buf, 1, sizeof buf - 1, tmp);
    buf[n] = '\0';
    fclose(tmp);
    return buf;
}

static void destroy_loop(void *loop)
{
    ev_loop_destroy(loop);
}

START_TEST(destroy_with_live_tasks_is_reported_and_forgotten)
{
    struct ev_loop *l = loop_in_slot();
    awaitlet_task *waiting = awaitlet_async_def(l, sleep_long, T_PTR(1));
    awaitlet_task *ended = awaitlet_async_def(l, quick, T_PTR(2));
    ck_assert_ptr_nonnull(waiting);
    ck_assert_ptr_nonnull(ended);
    ck_assert_uint_eq(awaitlet_loop_tasks(l), 2);
    char *msg = capture_stderr(destroy_loop, l);
    ck_assert_msg(strstr(msg, "ev_loop_destroy") && strstr(msg, "2 tasks"),
                  "no clear report on stderr: \"%s\"", msg);
    ck_assert_msg(strchr(msg, '\n') == strrchr(msg, '\n'), "more than one line: \"%s\"", msg);

    /* a new loop at the same address starts clean */
    struct ev_loop *l2 = loop_in_slot();
    ck_assert_uint_eq(awaitlet_loop_tasks(l2), 0);
    /* the abandoned handles are refused, not run on the new loop */
    T_FAILS(awaitlet_cancel(waiting), -1, EINVAL);
    T_FAILS(awaitlet_join_ex(ended, NULL), -1, EINVAL);
    double t0 = t_now();
    awaitlet_task *t = awaitlet_async_def(l2, yield_ret, T_PTR(3));
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(awaitlet_loop_tasks(l2), 1);
    T_JOIN_EQ(t, 3);
    ck_assert_double_lt(t_now() - t0, 1.0);
    /* and the join does not spin: nothing left means EDEADLK-free return */
    ck_assert_int_eq(ev_run(l2, EVRUN_NOWAIT), 0); /* no watcher of ours left */
    ck_assert_int_eq(awaitlet_loop_close(l2), 0);
    ev_loop_destroy(l2);
}
END_TEST

/* The same from inside a task (started outside the loop's callbacks): the
 * running task cannot be reclaimed, so nothing is; every watcher is stopped,
 * the waiting task's handle is refused, the ended one can still be joined. */
static awaitlet_task *destroyer;

static void *destroys_own_loop(void *arg)
{
    ev_loop_destroy(awaitlet_current_loop());
    return arg; /* without waiting again */
}

static void start_destroyer(void *loop)
{
    destroyer = awaitlet_async_def(loop, destroys_own_loop, T_PTR(7));
}

START_TEST(destroy_from_inside_a_task)
{
    struct ev_loop *l = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(l);
    awaitlet_task *waiting = awaitlet_async_def(l, sleep_long, T_PTR(1));
    ck_assert_ptr_nonnull(waiting);
    char *msg = capture_stderr(start_destroyer, l);
    ck_assert_msg(strstr(msg, "ev_loop_destroy") && strstr(msg, "2 tasks") && strstr(msg, "left"),
                  "no clear report on stderr: \"%s\"", msg);
    ck_assert_ptr_nonnull(destroyer);
    ck_assert_int_eq(awaitlet_done(destroyer), 1);
    T_FAILS(awaitlet_cancel(waiting), -1, EINVAL);
    T_FAILS(awaitlet_join_ex(waiting, NULL), -1, EINVAL);
    T_JOIN_EQ(destroyer, 7);
}
END_TEST

/* A loop without tasks destroyed without awaitlet_loop_close: quiet, and
 * its state is freed with it.  100 loops alive at once get 100 addresses
 * (a freed one would just be reused), so kept states would show as growth. */
#define NLOOPS 100

static void use_and_destroy_loops(void *close_half)
{
    struct ev_loop *l[NLOOPS];
    for (int i = 0; i < NLOOPS; i++) {
        l[i] = ev_loop_new(EVFLAG_AUTO);
        ck_assert_ptr_nonnull(l[i]);
        ck_assert_ptr_eq(awaitlet_run(l[i], yield_ret, T_PTR(1)), T_PTR(1));
    }
    for (int i = 0; i < NLOOPS; i++) {
        if (close_half && i % 2)
            ck_assert_int_eq(awaitlet_loop_close(l[i]), 0);
        ev_loop_destroy(l[i]);
    }
}

START_TEST(destroy_without_tasks_frees_state)
{
    use_and_destroy_loops(NULL); /* warm up malloc, the stack pool, the free list */
    struct mallinfo2 before = mallinfo2();
    char *msg = capture_stderr(use_and_destroy_loops, T_PTR(1));
    struct mallinfo2 after = mallinfo2();
    ck_assert_str_eq(msg, "");
    /* 100 loop states of ~300 bytes would be 30 KB */
    ck_assert_msg(after.uordblks < before.uordblks + 4096, "heap grew by %zu bytes over %d loops",
                  after.uordblks - before.uordblks, NLOOPS);
}
END_TEST

/* --- awaitlet_loop_close ---------------------------------------------------- */

static void *closes_own_loop(void *arg)
{
    (void)arg;
    errno = 0;
    int rc = awaitlet_loop_close(awaitlet_current_loop());
    return rc == -1 && errno == EBUSY ? T_PTR(1) : T_PTR(-1);
}

START_TEST(loop_close_contract)
{
    struct ev_loop *never = ev_loop_new(EVFLAG_AUTO);
    ck_assert_int_eq(awaitlet_loop_close(never), 0); /* never seen */
    ev_loop_destroy(never);
    T_FAILS(awaitlet_loop_close(NULL), -1, EINVAL);

    awaitlet_task *t = awaitlet_async_def(t_loop, yield_ret, T_PTR(1));
    ck_assert_ptr_nonnull(t);
    T_FAILS(awaitlet_loop_close(t_loop), -1, EBUSY);
    T_JOIN_EQ(t, 1);
    t = awaitlet_async_def(t_loop, quick, T_PTR(2)); /* ended, not released */
    T_FAILS(awaitlet_loop_close(t_loop), -1, EBUSY);
    T_JOIN_EQ(t, 2);
    ck_assert_ptr_eq(awaitlet_run(t_loop, closes_own_loop, NULL), T_PTR(1));
    ck_assert_int_eq(awaitlet_loop_close(t_loop), 0);
    ck_assert_int_eq(awaitlet_loop_close(t_loop), 0); /* twice: nothing left */
    /* a closed loop can be used again */
    ck_assert_ptr_eq(awaitlet_run(t_loop, yield_ret, T_PTR(3)), T_PTR(3));
}
END_TEST

/* --- binding to a thread ---------------------------------------------------- */

struct other_thread {
    struct ev_loop *loop;
    awaitlet_task *def;
    int def_err, close_rc, close_err, walk_rc, walk_err, cancel_rc, cancel_err;
    unsigned ntasks;
};

static int count_cb(awaitlet_task *t, void *arg)
{
    (void)t;
    ++*(int *)arg;
    return 0;
}

static void *other_thread_main(void *arg)
{
    struct other_thread *o = arg;
    int n = 0;
    errno = 0;
    o->def = awaitlet_async_def(o->loop, quick, T_PTR(1));
    o->def_err = errno;
    errno = 0;
    o->close_rc = awaitlet_loop_close(o->loop);
    o->close_err = errno;
    errno = 0;
    o->walk_rc = awaitlet_loop_walk(o->loop, count_cb, &n);
    o->walk_err = errno;
    errno = 0;
    o->cancel_rc = awaitlet_loop_cancel_all(o->loop);
    o->cancel_err = errno;
    o->ntasks = awaitlet_loop_tasks(o->loop); /* any thread may ask */
    return NULL;
}

START_TEST(loop_bound_to_first_thread)
{
    /* used here, no task alive: still this thread's */
    ck_assert_ptr_eq(awaitlet_run(t_loop, yield_ret, T_PTR(1)), T_PTR(1));
    struct other_thread o;
    memset(&o, 0, sizeof o);
    o.loop = t_loop;
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, other_thread_main, &o), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_msg(o.def == NULL && o.def_err == EXDEV,
                  "another thread started a task on this thread's loop (errno %d)", o.def_err);
    ck_assert_int_eq(o.close_rc, -1);
    ck_assert_int_eq(o.close_err, EXDEV);
    ck_assert_int_eq(o.walk_rc, -1);
    ck_assert_int_eq(o.walk_err, EXDEV);
    ck_assert_int_eq(o.cancel_rc, -1);
    ck_assert_int_eq(o.cancel_err, EXDEV);
    ck_assert_uint_eq(o.ntasks, 0);
}
END_TEST

/* After awaitlet_loop_close the loop is free for any thread, and back. */
static void *thread_runs_and_closes(void *arg)
{
    struct ev_loop *l = arg;
    void *r = awaitlet_run(l, yield_ret, T_PTR(5));
    if (r != T_PTR(5))
        return T_PTR(-1);
    return T_PTR(awaitlet_loop_close(l) == 0 ? 1 : -2);
}

START_TEST(loop_handed_over_after_close)
{
    ck_assert_ptr_eq(awaitlet_run(t_loop, yield_ret, T_PTR(1)), T_PTR(1));
    ck_assert_int_eq(awaitlet_loop_close(t_loop), 0);
    pthread_t th;
    void *res;
    ck_assert_int_eq(pthread_create(&th, NULL, thread_runs_and_closes, t_loop), 0);
    ck_assert_int_eq(pthread_join(th, &res), 0);
    ck_assert_ptr_eq(res, T_PTR(1));
    /* and back */
    ck_assert_ptr_eq(awaitlet_run(t_loop, yield_ret, T_PTR(2)), T_PTR(2));
}
END_TEST

/* --- walking and cancelling ------------------------------------------------- */

struct walk {
    int seen, ended, cancelled, detached;
    awaitlet_task *started;
    int nested_rc, nested_err, close_rc, close_err, sleep_rc, sleep_err;
    awaitlet_task *cur;
    int stop_after;
};

static int walk_cb(awaitlet_task *t, void *arg)
{
    struct walk *w = arg;
    w->seen++;
    w->cur = awaitlet_current();
    if (awaitlet_done(t)) {
        w->ended++;
        if (awaitlet_detach(t) == 0) /* released now, during the walk */
            w->detached++;
    } else if (awaitlet_cancel(t) == 0) {
        w->cancelled++;
    }
    if (w->seen == 1) {
        errno = 0;
        w->nested_rc = awaitlet_loop_walk(t_loop, walk_cb, w);
        w->nested_err = errno;
        errno = 0;
        w->close_rc = awaitlet_loop_close(t_loop);
        w->close_err = errno;
        errno = 0;
        w->sleep_rc = awaitlet_sleep(0.001);
        w->sleep_err = errno;
        w->started = awaitlet_async_def(t_loop, yield_ret, T_PTR(50)); /* not visited */
    }
    return w->stop_after && w->seen == w->stop_after ? 42 : 0;
}

START_TEST(walk_visits_every_task)
{
    awaitlet_task *live[3], *ended[2];
    for (int i = 0; i < 3; i++)
        ck_assert_ptr_nonnull(live[i] = awaitlet_async_def(t_loop, sleep_long, T_PTR(i)));
    for (int i = 0; i < 2; i++)
        ck_assert_ptr_nonnull(ended[i] = awaitlet_async_def(t_loop, quick, T_PTR(i)));
    struct walk w;
    memset(&w, 0, sizeof w);
    w.cur = T_PTR(1);
    ck_assert_int_eq(awaitlet_loop_walk(t_loop, walk_cb, &w), 0);
    ck_assert_int_eq(w.seen, 5);
    ck_assert_int_eq(w.ended, 2);
    ck_assert_int_eq(w.detached, 2);
    ck_assert_int_eq(w.cancelled, 3);
    ck_assert_ptr_null(w.cur);
    ck_assert_int_eq(w.nested_rc, -1);
    ck_assert_int_eq(w.nested_err, EBUSY);
    ck_assert_int_eq(w.close_rc, -1);
    ck_assert_int_eq(w.close_err, EBUSY);
    ck_assert_int_eq(w.sleep_rc, -1);
    ck_assert_int_eq(w.sleep_err, EPERM);
    ck_assert_ptr_nonnull(w.started);
    ck_assert_uint_eq(awaitlet_loop_tasks(t_loop), 4); /* 3 cancelled + the new one */
    for (int i = 0; i < 3; i++)
        T_JOIN_EQ(live[i], -ECANCELED);
    T_JOIN_EQ(w.started, 50);

    /* a non-zero return stops the walk and is returned */
    for (int i = 0; i < 3; i++)
        ck_assert_ptr_nonnull(live[i] = awaitlet_async_def(t_loop, yield_ret, T_PTR(i)));
    memset(&w, 0, sizeof w);
    w.stop_after = 2;
    w.seen = 1; /* skip the first-visit probes */
    ck_assert_int_eq(awaitlet_loop_walk(t_loop, walk_cb, &w), 42);
    ck_assert_int_eq(w.seen, 2);
    for (int i = 0; i < 3; i++)
        awaitlet_join(live[i]);

    /* from inside a task the callback still runs outside any task */
    struct ev_loop *never = ev_loop_new(EVFLAG_AUTO);
    int n = 0;
    ck_assert_int_eq(awaitlet_loop_walk(never, count_cb, &n), 0);
    ck_assert_int_eq(n, 0);
    ev_loop_destroy(never);
    T_FAILS(awaitlet_loop_walk(t_loop, NULL, NULL), -1, EINVAL);
    T_FAILS(awaitlet_loop_walk(NULL, count_cb, &n), -1, EINVAL);
}
END_TEST

static void *walks_inside(void *arg)
{
    struct walk *w = arg;
    w->cur = T_PTR(1);
    if (awaitlet_loop_walk(awaitlet_current_loop(), walk_cb, w) != 0)
        return T_PTR(-1);
    return T_PTR(1);
}

START_TEST(walk_from_inside_a_task)
{
    struct walk w;
    memset(&w, 0, sizeof w);
    w.seen = 1; /* skip the first-visit probes */
    awaitlet_task *t = awaitlet_async_def(t_loop, walks_inside, &w);
    ck_assert_ptr_nonnull(t);
    T_JOIN_EQ(t, 1);
    ck_assert_int_eq(w.seen, 2); /* itself */
    ck_assert_ptr_null(w.cur);
}
END_TEST

START_TEST(cancel_all_cancels_unended)
{
    awaitlet_task *live[4];
    for (int i = 0; i < 4; i++)
        ck_assert_ptr_nonnull(live[i] = awaitlet_async_def(t_loop, sleep_long, T_PTR(i)));
    awaitlet_task *ended = awaitlet_async_def(t_loop, quick, T_PTR(9));
    ck_assert_int_eq(awaitlet_loop_cancel_all(t_loop), 4);
    for (int i = 0; i < 4; i++)
        T_JOIN_EQ(live[i], -ECANCELED);
    T_JOIN_EQ(ended, 9);
    ck_assert_int_eq(awaitlet_loop_cancel_all(t_loop), 0);
    struct ev_loop *never = ev_loop_new(EVFLAG_AUTO);
    ck_assert_int_eq(awaitlet_loop_cancel_all(never), 0);
    ev_loop_destroy(never);
    T_FAILS(awaitlet_loop_cancel_all(NULL), -1, EINVAL);
}
END_TEST

/* --- fork ------------------------------------------------------------------- */

static unsigned long ncreate;

int epoll_create1(int flags)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "epoll_create1");
    ncreate++;
    return real(flags);
}

struct owner {
    struct ev_loop *loop;
    pthread_barrier_t bar;
    void *result;
};

static void *wait_pipe(void *arg)
{
    int fd = *(int *)arg;
    int rc = awaitlet_io(fd, EV_READ, 10.0);
    return T_PTR(rc);
}

/* Its task sleeps rather than waiting on an fd: this thread's memory is
 * unreachable in the child, and valgrind would count its fd index as a
 * leak of the child's. */
static void *owner_thread(void *arg)
{
    struct owner *o = arg;
    awaitlet_task *t = awaitlet_async_def(o->loop, sleep_long, T_PTR(1));
    pthread_barrier_wait(&o->bar); /* the main thread forks now */
    pthread_barrier_wait(&o->bar);
    if (t && awaitlet_cancel(t) == 0)
        o->result = awaitlet_join(t);
    awaitlet_loop_close(o->loop);
    return NULL;
}

START_TEST(fork_child_owns_and_reinits_loops)
{
    int p[2];
    t_pipe(p);
    /* a task of this thread, registered on the pipe before the fork */
    awaitlet_task *mine = awaitlet_async_def(t_loop, wait_pipe, &p[0]);
    ck_assert_ptr_nonnull(mine);
    ev_run(t_loop, EVRUN_NOWAIT); /* the registration reaches the kernel */
    /* a loop owned by another thread, with a live task */
    struct owner o;
    memset(&o, 0, sizeof o);
    o.loop = ev_loop_new(EVBACKEND_EPOLL);
    ck_assert_ptr_nonnull(o.loop);
    ck_assert_int_eq(pthread_barrier_init(&o.bar, NULL, 2), 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, owner_thread, &o), 0);
    pthread_barrier_wait(&o.bar);

    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int code = 0;
        unsigned long before = ncreate;
        ev_run(t_loop, EVRUN_NOWAIT);
        if (ncreate == before)
            code |= 1; /* libev was not told about the fork */
        if (write(p[1], "y", 1) != 1)
            code |= 2;
        if (awaitlet_join(mine) != T_PTR(EV_READ))
            code |= 4;
        /* the other thread's loop is this thread's now */
        awaitlet_task *t = awaitlet_async_def(o.loop, quick, T_PTR(1));
        if (!t || awaitlet_join(t) != T_PTR(1))
            code |= 8;
        _exit(code);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    pthread_barrier_wait(&o.bar);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed: status %#x", status);
    ck_assert_ptr_eq(o.result, T_PTR(-ECANCELED));
    /* the parent's own task still works on the parent's kernel state (the
     * child's byte is still in the pipe: its task only waited) */
    T_JOIN_EQ(mine, EV_READ);
    pthread_barrier_destroy(&o.bar);
    ev_loop_destroy(o.loop);
    t_close2(p);
}
END_TEST

static Suite *loops_suite(void)
{
    Suite *s = suite_create("loops");
    TCase *tc = t_tcase("state");
    tcase_add_test(tc, destroy_with_live_tasks_is_reported_and_forgotten);
    tcase_add_test(tc, destroy_from_inside_a_task);
    tcase_add_test(tc, destroy_without_tasks_frees_state);
    tcase_add_test(tc, loop_close_contract);
    tcase_add_test(tc, loop_bound_to_first_thread);
    tcase_add_test(tc, loop_handed_over_after_close);
    suite_add_tcase(s, tc);

    tc = t_tcase("walk");
    tcase_add_test(tc, walk_visits_every_task);
    tcase_add_test(tc, walk_from_inside_a_task);
    tcase_add_test(tc, cancel_all_cancels_unended);
    suite_add_tcase(s, tc);

    tc = t_tcase("fork");
    tcase_add_test(tc, fork_child_owns_and_reinits_loops);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return t_run_suite(loops_suite());
}
