/*
 * stall.c -- the loop stall meter (see stall.h).
 */
#include "stall.h"

#include <fcntl.h>
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
    if (held > s->max_gap) {
        s->max_gap = held;
        s->worst = d;
    }
    if (blocked > s->max_blocked)
        s->max_blocked = blocked;
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
}

const char *pqa_stall_describe(const pqa_stall *s, char *buf, size_t size)
{
    snprintf(buf, size,
             "longest window %.1f ms wall, %.1f ms run-queue, %.1f ms CPU, %ld sleeps, %ld major faults; "
             "%lu windows, %lu ticks, longest tick gap %.1f ms",
             s->worst.wall * 1e3, s->worst.rq * 1e3, s->worst.cpu * 1e3, s->worst.nvcsw, s->worst.majflt,
             s->windows, s->ticks, s->max_raw_gap * 1e3);
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
