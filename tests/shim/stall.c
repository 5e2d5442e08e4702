/*
 * stall.c -- the loop stall meter (see stall.h).
 */
#include "stall.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#ifdef PQA_HAVE_VALGRIND
#include <valgrind/valgrind.h>
#endif

/* the thread's clocks now.  CPU time from CLOCK_THREAD_CPUTIME_ID, which
 * brings the running slice up to date; schedstat's own first field is
 * only updated at ticks and switches, so it moves in 4 ms steps while the
 * thread runs.  Its second field (run-queue wait) is settled whenever the
 * thread gets the CPU back, which is all a window needs.  rq is 0 when
 * schedstat is unavailable. */
static void mark(const pqa_stall *s, pqa_stall_mark *m)
{
    char buf[128];
    unsigned long long run, wait;
    struct rusage ru;
    struct timespec ts;
    m->wall = pqa_now();
    m->rq = m->cpu = 0;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        m->cpu = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    if (s->rq_fd >= 0) {
        ssize_t n = pread(s->rq_fd, buf, sizeof buf - 1, 0);
        if (n > 0) {
            buf[n] = '\0';
            if (sscanf(buf, "%llu %llu", &run, &wait) == 2)
                m->rq = (double)wait * 1e-9;
        }
    }
    m->nvcsw = m->majflt = 0;
    if (getrusage(RUSAGE_THREAD, &ru) == 0) {
        m->nvcsw = ru.ru_nvcsw;
        m->majflt = ru.ru_majflt;
    }
}

#define KEPT_MAX 512   /* windows kept for the correction */
#define LOST_MAX 8192  /* witness spans recorded; beyond, less is corrected */

/* The witness: sleeps a period at a time and records each span in which
 * it woke late by more than a period (it could not run: see stall.h).
 * Its signals are blocked, so the tests' own signals never land here. */
static void *witness_main(void *arg)
{
    pqa_stall *s = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    double period = pqa_slow_build() ? 0.002 : 0.001;
    struct timespec ts = {0, (long)(period * 1e9)};
    double last = pqa_now();
    while (!__atomic_load_n(&s->witness_stop, __ATOMIC_ACQUIRE)) {
        nanosleep(&ts, NULL);
        double now = pqa_now();
        if (now - last > 2 * period) {
            pthread_mutex_lock(&s->mu);
            if (s->nlost < s->lost_max)
                s->lost[s->nlost++] = (pqa_stall_span){last + period, now};
            pthread_mutex_unlock(&s->mu);
        }
        last = now;
    }
    return NULL;
}

/* Counts a window as it was measured, without correction. */
static void count_as_is(pqa_stall *s, const pqa_stall_window *w)
{
    if (w->held > s->rest_gap) {
        s->rest_gap = w->held;
        s->rest_gap_w = *w;
    }
    if (w->blocked > s->rest_blocked) {
        s->rest_blocked = w->blocked;
        s->rest_blocked_w = *w;
    }
}

/* Keeps a window that slept for the correction at stop; when full, the
 * shortest of them counts as it was. */
static void keep(pqa_stall *s, const pqa_stall_window *w)
{
    if (s->nkept < s->kept_max) {
        s->kept[s->nkept++] = *w;
        return;
    }
    int m = 0;
    for (int i = 1; i < s->nkept; i++)
        if (s->kept[i].held < s->kept[m].held)
            m = i;
    if (s->nkept > 0 && s->kept[m].held < w->held) {
        count_as_is(s, &s->kept[m]);
        s->kept[m] = *w;
    } else {
        count_as_is(s, w);
    }
}

/* first thing after the poll: the loop starts being held */
static void on_after_poll(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)loop;
    (void)revents;
    pqa_stall *s = w->data;
    mark(s, &s->open);
    s->in_window = 1;
}

/* last thing before the poll: the window closes */
static void on_before_poll(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    pqa_stall *s = w->data;
    if (!s->in_window)
        return;
    pqa_stall_mark now, d;
    mark(s, &now);
    s->in_window = 0;
    s->windows++;
    d.wall = now.wall - s->open.wall;
    d.rq = now.rq - s->open.rq;
    d.cpu = now.cpu - s->open.cpu;
    d.nvcsw = now.nvcsw - s->open.nvcsw;
    d.majflt = now.majflt - s->open.majflt;
    /* no sleep in the window: whatever the wall clock adds to the CPU time
     * was taken from outside (run queue, hypervisor) */
    double held = d.nvcsw > 0 || s->rq_fd < 0 ? d.wall - d.rq : d.cpu;
    double blocked = d.nvcsw > 0 ? held - d.cpu : 0;
    pqa_stall_window win = {.d = d, .open = s->open.wall, .held = held, .blocked = blocked};
    if (held > s->raw_gap)
        s->raw_gap = held;
    if (blocked > s->raw_blocked)
        s->raw_blocked = blocked;
    /* a window that never slept has nothing to correct; a short one
     * cannot matter */
    if (d.nvcsw > 0 && (held > s->keep_above || blocked > s->keep_above))
        keep(s, &win);
    else
        count_as_is(s, &win);
}

/* the witness's lost time inside [from, to] */
static double lost_within(const pqa_stall *s, double from, double to)
{
    double lost = 0;
    for (int i = 0; i < s->nlost; i++) {
        double a = s->lost[i].from > from ? s->lost[i].from : from;
        double b = s->lost[i].to < to ? s->lost[i].to : to;
        if (b > a)
            lost += b - a;
    }
    return lost;
}

/* Takes the witness's lost time off every kept window (see stall.h) and
 * settles max_gap, max_blocked and the window measured. */
static void correct(pqa_stall *s)
{
    s->max_gap = s->rest_gap;
    s->max_blocked = s->rest_blocked;
    int measure_blocked = 0;
#ifdef PQA_HAVE_VALGRIND
    measure_blocked = RUNNING_ON_VALGRIND != 0;
#endif
    double worst = measure_blocked ? s->max_blocked : s->max_gap;
    s->worst = measure_blocked ? s->rest_blocked_w : s->rest_gap_w;
    for (int i = 0; i < s->nkept; i++) {
        pqa_stall_window *w = &s->kept[i];
        w->lost = lost_within(s, w->open, w->open + w->d.wall);
        double held = w->held - w->lost, blocked = w->blocked - w->lost;
        if (held < w->d.cpu)
            held = w->d.cpu;
        if (blocked < 0)
            blocked = 0;
        if (held > s->max_gap)
            s->max_gap = held;
        if (blocked > s->max_blocked)
            s->max_blocked = blocked;
        double m = measure_blocked ? blocked : held;
        if (m > worst) {
            worst = m;
            s->worst = *w;
        }
    }
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    pqa_stall *s = w->data;
    double now = pqa_now();
    s->ticks++;
    if (now - s->last_tick > s->max_raw_gap)
        s->max_raw_gap = now - s->last_tick;
    s->last_tick = now;
}

void pqa_stall_start(pqa_stall *s, struct ev_loop *loop)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->keep_above = pqa_stall_bound() / 4;
    s->kept = calloc(KEPT_MAX, sizeof *s->kept);
    s->kept_max = s->kept ? KEPT_MAX : 0;
    s->lost = calloc(LOST_MAX, sizeof *s->lost);
    s->lost_max = s->lost ? LOST_MAX : 0;
    pthread_mutex_init(&s->mu, NULL);
    s->witness_on = pthread_create(&s->witness, NULL, witness_main, s) == 0;
    s->rq_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    ev_now_update(loop);
    ev_timer_init(&s->tick, on_tick, 0.001, 0.001);
    s->tick.data = s;
    ev_timer_start(loop, &s->tick);
    ev_check_init(&s->after_poll, on_after_poll);
    ev_set_priority(&s->after_poll, EV_MAXPRI);
    s->after_poll.data = s;
    ev_check_start(loop, &s->after_poll);
    ev_prepare_init(&s->before_poll, on_before_poll);
    ev_set_priority(&s->before_poll, EV_MINPRI);
    s->before_poll.data = s;
    ev_prepare_start(loop, &s->before_poll);
    s->last_tick = pqa_now();
}

void pqa_stall_stop(pqa_stall *s)
{
    if (!ev_is_active(&s->tick))
        return;
    if (pqa_now() - s->last_tick > s->max_raw_gap)
        s->max_raw_gap = pqa_now() - s->last_tick;
    ev_timer_stop(s->loop, &s->tick);
    ev_check_stop(s->loop, &s->after_poll);
    ev_prepare_stop(s->loop, &s->before_poll);
    if (s->rq_fd >= 0)
        close(s->rq_fd);
    s->rq_fd = -1;
    if (s->witness_on) {
        __atomic_store_n(&s->witness_stop, 1, __ATOMIC_RELEASE);
        pthread_join(s->witness, NULL);
        s->witness_on = 0;
    }
    correct(s);
    free(s->kept);
    free(s->lost);
    s->kept = NULL;
    s->lost = NULL;
    s->nkept = s->kept_max = s->nlost = s->lost_max = 0;
    pthread_mutex_destroy(&s->mu);
}

const char *pqa_stall_describe(const pqa_stall *s, char *buf, size_t size)
{
    const pqa_stall_mark *d = &s->worst.d;
    snprintf(buf, size,
             "window measured %.1f ms wall, %.1f ms run-queue, %.1f ms CPU, %ld sleeps, %ld major faults, "
             "%.1f ms the witness thread lost too; %lu windows, %lu ticks, longest tick gap %.1f ms; "
             "before the witness's correction held %.1f ms, blocked %.1f ms",
             d->wall * 1e3, d->rq * 1e3, d->cpu * 1e3, d->nvcsw, d->majflt, s->worst.lost * 1e3, s->windows,
             s->ticks, s->max_raw_gap * 1e3, s->raw_gap * 1e3, s->raw_blocked * 1e3);
    return buf;
}

double pqa_stall_bound(void)
{
    const char *env = getenv("PQAWAIT_STALL_BOUND_MS");
    if (env && *env)
        return atof(env) / 1000.0;
    return pqa_slow_build() ? 0.100 : 0.010;
}

double pqa_stall_measure(const pqa_stall *s)
{
#ifdef PQA_HAVE_VALGRIND
    if (RUNNING_ON_VALGRIND)
        return s->max_blocked;
#endif
    return s->max_gap;
}
