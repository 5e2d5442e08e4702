/*
 * test_offload.c -- the offload pool's wake-up: no worker touches a loop
 * after the job it finished was delivered.
 *
 * A worker that finished a job posts it to the loop's done list and wakes
 * the loop with ev_async_send.  If the post becomes visible to the loop
 * before the send is over, another worker's wake-up can deliver the job
 * first; its task ends, the program joins it and destroys the loop, and the
 * late send writes into the freed loop (and maybe 8 bytes into whatever
 * descriptor now has the loop's old eventfd number).
 *
 * The window is a few instructions wide, too narrow to hit by load alone,
 * so this program interposes ev_async_send (the executable's definition
 * wins over libev's for libawaitlet's calls) and makes chosen sends slow:
 *   - the deterministic test holds one worker inside its send while a
 *     second worker's job completes, and checks that the loop it is about
 *     to wake has not been destroyed meanwhile;
 *   - the stress test delays sends at random while several tasks offload,
 *     destroying each loop right after the last join, and lets the real
 *     send run, so ASan (heap-use-after-free) and valgrind (invalid write)
 *     see any send that comes too late.
 * Handing a job to the pool never puts the loop's thread to sleep: with
 * the loop and the workers on one CPU and the loop's thread real-time
 * during a burst of submissions (so no worker runs before it sleeps), no
 * submission may wait for a worker to be scheduled (glibc's
 * pthread_cond_signal does, when the waiters it woke before have not run:
 * 3-10 sleeps in 2,000 submissions before the fix).
 * And awaitlet_offload's misuse error (a NULL function).
 */
#include "helpers.h"

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/resource.h>

/* ---- the interposed ev_async_send --------------------------------------- */

typedef void (*send_fn)(struct ev_loop *, ev_async *);
static send_fn real_send;

static _Thread_local int delay_this_send; /* set by a job on its worker */
static atomic_int in_delayed_send, delayed_send_done;
static struct ev_loop *_Atomic destroyed_loop;
static struct ev_loop *_Atomic live_loop; /* stress: the loop of the round */
static atomic_int jitter;                 /* stress: delay sends at random */
static atomic_int late_sends;

static void wait_flag(atomic_int *flag, double seconds)
{
    double t0 = t_now();
    while (!atomic_load(flag) && t_now() - t0 < seconds)
        usleep(200);
}

static unsigned next_random(void)
{
    static _Thread_local unsigned x;
    if (!x)
        x = (unsigned)(uintptr_t)&x | 1u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x;
}

void ev_async_send(struct ev_loop *loop, ev_async *w)
{
    if (delay_this_send) {
        /* Stay here until the loop is gone (it must not be: the job posted
         * just before cannot have been delivered yet), or 300 ms. */
        delay_this_send = 0;
        atomic_store(&in_delayed_send, 1);
        double t0 = t_now();
        while (atomic_load(&destroyed_loop) != loop && t_now() - t0 < 0.3)
            usleep(500);
        if (atomic_load(&destroyed_loop) == loop) {
            atomic_fetch_add(&late_sends, 1);
            atomic_store(&delayed_send_done, 1);
            return; /* a clean failure instead of writing into freed memory */
        }
        real_send(loop, w);
        atomic_store(&delayed_send_done, 1);
        return;
    }
    if (atomic_load(&jitter)) {
        unsigned r = next_random();
        if (r & 1)
            usleep(r % 300);
        else if (r & 2)
            sched_yield();
        if (loop != atomic_load(&live_loop))
            atomic_fetch_add(&late_sends, 1);
    }
    real_send(loop, w); /* after a late send: ASan/valgrind report it here */
}

/* ---- deterministic: a send held open while the other job completes ------- */

static atomic_int b_started, b_saw_a_sending;

static void *job_a(void *arg)
{
    wait_flag(&b_started, 5.0); /* both jobs are running at once */
    delay_this_send = 1;        /* this worker's wake-up will be slow */
    return arg;
}

static void *job_b(void *arg)
{
    atomic_store(&b_started, 1);
    wait_flag(&in_delayed_send, 5.0); /* A's job is posted, its send not over */
    atomic_store(&b_saw_a_sending, atomic_load(&in_delayed_send));
    return arg;
}

static void *offload_task(void *arg)
{
    void *res = NULL;
    if (awaitlet_offload((awaitlet_fn)arg, arg, &res) != 0 || res != arg)
        return T_PTR(-1);
    return T_PTR(1);
}

START_TEST(offload_send_done_before_delivery)
{
    ck_assert_int_eq(awaitlet_set_offload_threads(4), 0);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(loop);
    awaitlet_task *ta = awaitlet_async_def(loop, offload_task, (void *)job_a);
    awaitlet_task *tb = awaitlet_async_def(loop, offload_task, (void *)job_b);
    ck_assert_ptr_nonnull(ta);
    ck_assert_ptr_nonnull(tb);
    T_JOIN_EQ(ta, 1);
    T_JOIN_EQ(tb, 1);
    /* The program's part: every task joined, so the loop may go. */
    ck_assert_uint_eq(awaitlet_loop_tasks(loop), 0);
    atomic_store(&destroyed_loop, loop);
    ev_loop_destroy(loop);
    wait_flag(&delayed_send_done, 5.0);
    ck_assert_msg(atomic_load(&b_saw_a_sending), "scenario not reached: job B never saw A's "
                  "worker inside its wake-up");
    ck_assert_int_eq(atomic_load(&delayed_send_done), 1);
    ck_assert_msg(atomic_load(&late_sends) == 0,
                  "a worker woke the loop after its job was delivered, the task joined and "
                  "the loop destroyed (ev_async_send on freed memory)");
}
END_TEST

/* ---- stress: random slow sends, the loop destroyed after the last join --- */

static atomic_int arrived;
static int gate_width;
static atomic_long calls;

/* Returns once gate_width jobs run at the same time, so that they all finish
 * together and their workers race to post and wake. */
static void *gate(void *arg)
{
    atomic_fetch_add(&arrived, 1);
    double t0 = t_now();
    while (atomic_load(&arrived) < gate_width && t_now() - t0 < 5.0)
        sched_yield();
    atomic_fetch_add(&calls, 1);
    return arg;
}

START_TEST(offload_wakeup_stress)
{
    enum { TASKS = 6 };
    int rounds = 1500;
    if (RUNNING_ON_VALGRIND || T_TSAN)
        rounds = 150;
    else if (T_ASAN)
        rounds = 800;
    gate_width = TASKS;
    ck_assert_int_eq(awaitlet_set_offload_threads(TASKS), 0);
    atomic_store(&jitter, 1);
    long expect = 0;
    for (int r = 0; r < rounds; r++) {
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        ck_assert_ptr_nonnull(loop);
        atomic_store(&live_loop, loop);
        atomic_store(&arrived, 0);
        awaitlet_task *t[TASKS];
        for (int i = 0; i < TASKS; i++) {
            t[i] = awaitlet_async_def(loop, offload_task, (void *)gate);
            ck_assert_ptr_nonnull(t[i]);
        }
        for (int i = 0; i < TASKS; i++)
            T_JOIN_EQ(t[i], 1);
        expect += TASKS;
        ck_assert_uint_eq(awaitlet_loop_tasks(loop), 0);
        /* Every offload was counted back: the async watcher is stopped and
         * nothing of the runtime keeps the loop alive. */
        ck_assert_int_eq(ev_run(loop, EVRUN_NOWAIT), 0);
        atomic_store(&live_loop, NULL);
        ev_loop_destroy(loop);
    }
    atomic_store(&jitter, 0);
    usleep(2000); /* a send delayed past the last round still counts */
    ck_assert_msg(atomic_load(&late_sends) == 0,
                  "%d wake-ups reached a loop after it was destroyed", atomic_load(&late_sends));
    ck_assert_int_eq(atomic_load(&calls), expect);
}
END_TEST

/* ---- submitting never sleeps ----------------------------------------------- */

enum { BURST = 400 };
static long burst_nvcsw[BURST + 1];
static unsigned burst_iter[BURST + 1];
static struct ev_loop *burst_loop;

static int burst_rt; /* the burst runs SCHED_FIFO */

static long nvcsw_now(void)
{
    struct rusage ru;
    ck_assert_int_eq(getrusage(RUSAGE_THREAD, &ru), 0);
    return ru.ru_nvcsw;
}

static void *trivial(void *arg)
{
    return arg;
}

/* Records the loop thread's voluntary context switches and the loop
 * iteration just before submitting; the last of the burst only records. */
static void *burst_task(void *arg)
{
    intptr_t i = (intptr_t)arg;
    burst_iter[i] = ev_iteration(burst_loop);
    burst_nvcsw[i] = nvcsw_now();
    if (i == BURST) {
        if (burst_rt) {
            struct sched_param sp = { .sched_priority = 0 };
            ck_assert_int_eq(pthread_setschedparam(pthread_self(), SCHED_OTHER, &sp), 0);
        }
        return T_PTR(1);
    }
    void *res = NULL;
    return T_PTR(awaitlet_offload(trivial, arg, &res) == 0 && res == arg ? 1 : -1);
}

START_TEST(offload_submit_never_sleeps)
{
    /* one CPU for this thread and (inherited) for the workers it starts */
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    ck_assert_int_eq(sched_setaffinity(0, sizeof one, &one), 0);
    ck_assert_int_eq(awaitlet_set_offload_threads(4), 0);
    struct ev_loop *loop = burst_loop = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(loop);
    int slept = 0;
    /* All four workers first, outside the measurement: pthread_create may
     * wait for the new thread (TSan's does).  gate returns once four jobs
     * run at once, so four workers exist. */
    gate_width = 4;
    atomic_store(&arrived, 0);
    awaitlet_task *w[4];
    for (int i = 0; i < 4; i++)
        ck_assert_ptr_nonnull(w[i] = awaitlet_async_def(loop, offload_task, (void *)gate));
    for (int i = 0; i < 4; i++)
        T_JOIN_EQ(w[i], 1);
    ck_assert_int_eq(atomic_load(&arrived), 4);
    for (int round = 1; round <= 5; round++) {
        awaitlet_task *t[BURST + 1];
        /* all made ready before the loop runs: they start one after
         * another in one go, with no poll between them */
        for (intptr_t i = 0; i <= BURST; i++)
            ck_assert_ptr_nonnull(t[i] = awaitlet_async_def(loop, burst_task, (void *)i));
        /* real-time until the burst's last task: the workers (same CPU,
         * SCHED_OTHER) run only when this thread sleeps.  Without the
         * privilege the burst still runs, with the workers free to
         * preempt it (a sleep on the pool's lock is then possible) */
        struct sched_param sp = { .sched_priority = 1 };
        burst_rt = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) == 0;
        for (int i = 0; i <= BURST; i++)
            T_JOIN_EQ(t[i], 1);
        ck_assert_uint_eq(burst_iter[0], burst_iter[BURST]);
        slept += (int)(burst_nvcsw[BURST] - burst_nvcsw[0]);
    }
    ck_assert_uint_eq(awaitlet_loop_tasks(loop), 0);
    ev_loop_destroy(loop);
    printf("%d offloads submitted in 5 bursts of %d on one CPU (%s): the loop's thread slept %d times\n",
           5 * BURST, BURST, burst_rt ? "SCHED_FIFO" : "no real-time priority", slept);
    /* Under valgrind all threads take turns on one lock of valgrind's own,
     * released around every system call (sem_post's futex wake too): a
     * worker may take it then, and the loop's thread sleeps until it gets
     * it back.  That is valgrind's scheduler, so there it is reported only. */
    if (RUNNING_ON_VALGRIND)
        return;
    /* Without the privilege the workers may preempt the burst, hold the
     * pool's lock and make the loop wait for it: a count then, not a check
     * (CI runs as root). */
    if (!burst_rt)
        return;
    ck_assert_msg(slept == 0, "submitting %d offloads (5 bursts of %d, one CPU) put the loop's thread to sleep %d times",
                  5 * BURST, BURST, slept);
}
END_TEST

/* ---- misuse ---------------------------------------------------------------- */

static void *null_fn_task(void *arg)
{
    (void)arg;
    errno = 0;
    int rc = awaitlet_offload(NULL, NULL, NULL);
    return T_PTR(rc == -1 && errno == EINVAL ? 1 : -1);
}

START_TEST(offload_null_fn_einval)
{
    T_FAILS(awaitlet_offload(NULL, NULL, NULL), -1, EINVAL);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(loop);
    ck_assert_ptr_eq(awaitlet_run(loop, null_fn_task, NULL), T_PTR(1));
    /* the refused offload left nothing behind: no watcher keeps the loop */
    ck_assert_int_eq(ev_run(loop, EVRUN_NOWAIT), 0);
    ev_loop_destroy(loop);
}
END_TEST

static Suite *offload_suite(void)
{
    Suite *s = suite_create("offload");
    TCase *tc = tcase_create("wakeup");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, offload_send_done_before_delivery);
    tcase_add_test(tc, offload_wakeup_stress);
    tcase_add_test(tc, offload_submit_never_sleeps);
    tcase_add_test(tc, offload_null_fn_einval);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    real_send = (send_fn)dlsym(RTLD_NEXT, "ev_async_send");
    if (!real_send) {
        fprintf(stderr, "dlsym(RTLD_NEXT, ev_async_send): %s\n", dlerror());
        return EXIT_FAILURE;
    }
    return t_run_suite(offload_suite());
}
