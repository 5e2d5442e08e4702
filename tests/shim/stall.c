/*
 * stall.c -- the loop stall meter (see stall.h).
 */
#include "stall.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common.h"

#ifdef PQA_HAVE_VALGRIND
#include <valgrind/valgrind.h>
#endif

/* CPU time and run-queue wait of the thread, seconds (0 if unknown) */
static void sched(const pqa_stall *s, double *cpu, double *rq)
{
    char buf[128];
    unsigned long long run, wait;
    *cpu = *rq = 0;
    if (s->rq_fd < 0)
        return;
    ssize_t n = pread(s->rq_fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return;
    buf[n] = '\0';
    if (sscanf(buf, "%llu %llu", &run, &wait) != 2)
        return;
    *cpu = (double)run * 1e-9;
    *rq = (double)wait * 1e-9;
}

static void note_gap(pqa_stall *s)
{
    double now = pqa_now(), cpu, rq;
    sched(s, &cpu, &rq);
    double raw = now - s->last, adj = raw - (rq - s->last_rq), blocked = adj - (cpu - s->last_cpu);
    if (raw > s->max_raw_gap)
        s->max_raw_gap = raw;
    if (adj > s->max_gap)
        s->max_gap = adj;
    if (blocked > s->max_blocked)
        s->max_blocked = blocked;
    s->last = now;
    s->last_rq = rq;
    s->last_cpu = cpu;
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    pqa_stall *s = w->data;
    s->ticks++;
    note_gap(s);
}

void pqa_stall_start(pqa_stall *s, struct ev_loop *loop)
{
    s->loop = loop;
    s->max_gap = s->max_raw_gap = s->max_blocked = 0;
    s->ticks = 0;
    s->rq_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    ev_now_update(loop);
    ev_timer_init(&s->tick, on_tick, 0.001, 0.001);
    s->tick.data = s;
    ev_timer_start(loop, &s->tick);
    s->last = pqa_now();
    sched(s, &s->last_cpu, &s->last_rq);
}

void pqa_stall_stop(pqa_stall *s)
{
    if (!ev_is_active(&s->tick))
        return;
    note_gap(s);
    ev_timer_stop(s->loop, &s->tick);
    if (s->rq_fd >= 0)
        close(s->rq_fd);
    s->rq_fd = -1;
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
