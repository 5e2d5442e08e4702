/*
 * tasks.c -- what a task costs to keep and to start.
 *
 * Two questions decide whether "one task per connection" is affordable:
 *
 *  1. Memory per idle task.  10,000 tasks each block in awaitlet_io on the
 *     read end of one pipe that is never written (libev allows any number of
 *     watchers on one fd), and the resident set is read from /proc/self/statm
 *     before and after.  Stacks are mapped lazily, so only the pages a task
 *     touched before suspending count.  Target: <= 100 MiB for the 10,000.
 *     The kernel mappings per task are reported too, since guarded stacks
 *     take two each against vm.max_map_count.
 *
 *  2. Time to create and finish a task with the stack pool warm: awaitlet_run
 *     of a function that just returns its argument, against the same call
 *     made through a malloc'd record and free (the least any "spawn" can do).
 *     Target: <= 1 us.  Then a task that yields to the loop once
 *     (awaitlet_sleep(0)) before finishing, against the callback equivalent:
 *     a malloc'd ev_idle that fires once.
 */
#include "bench.h"

#include <awaitlet.h>
#include <ev.h>
#include <fcntl.h>

static struct ev_loop *loop;

static void *trivial(void *arg)
{
    return arg;
}

/* ---- 1. idle tasks ---- */

static long statm_resident_pages(void)
{
    long size, resident;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2)
        bench_die("/proc/self/statm");
    fclose(f);
    return resident;
}

static long count_mappings(void)
{
    long lines = 0;
    int c;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        bench_die("/proc/self/maps");
    while ((c = getc(f)) != EOF)
        lines += c == '\n';
    fclose(f);
    return lines;
}

static void *idle_task(void *arg)
{
    int fd = *(int *)arg;
    /* Returns only when cancelled: nobody writes the pipe. */
    if (awaitlet_io(fd, EV_READ, -1) < 0 && errno == ECANCELED)
        return arg;
    return NULL;
}

static void bench_idle(long ntasks)
{
    awaitlet_task **t = calloc((size_t)ntasks, sizeof *t);
    int p[2];
    long rss0, rss1, maps0, maps1, page = sysconf(_SC_PAGESIZE);
    double t0, t1, t2;
    char what[64];

    if (!t)
        bench_die("calloc");
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
        bench_die("pipe2");
    /* Let the runtime do its one-time setup before the first reading. */
    if (awaitlet_run(loop, trivial, &p[0]) != &p[0])
        bench_die("awaitlet_run");
    rss0 = statm_resident_pages();
    maps0 = count_mappings();
    t0 = bench_now();
    for (long i = 0; i < ntasks; i++)
        if (!(t[i] = awaitlet_async_def(loop, idle_task, &p[0]))) {
            fprintf(stderr, "bench: task %ld of %ld: ", i, ntasks);
            bench_die("awaitlet_async_def");
        }
    t1 = bench_now();
    rss1 = statm_resident_pages();
    maps1 = count_mappings();

    for (long i = 0; i < ntasks; i++)
        if (awaitlet_cancel(t[i]) < 0)
            bench_die("awaitlet_cancel");
    for (long i = 0; i < ntasks; i++)
        if (awaitlet_join(t[i]) != &p[0])
            bench_die("awaitlet_join (idle task did not see ECANCELED)");
    t2 = bench_now();

    snprintf(what, sizeof what, "idle RSS total MiB (%ld tasks)", ntasks);
    bench_line("tasks", what, (double)((rss1 - rss0) * page) / (1024.0 * 1024.0),
               ntasks == 10000 ? "(target <= 100)" : "(target <= 100 at 10000 tasks)");
    bench_line("tasks", "idle RSS KiB/task", (double)((rss1 - rss0) * page) / 1024.0 / (double)ntasks,
               "(target <= 10.24)");
    bench_line("tasks", "idle kernel mappings/task", (double)(maps1 - maps0) / (double)ntasks,
               "(vm.max_map_count caps the total)");
    bench_line("tasks", "idle us/task start (fresh stacks)", (t1 - t0) * 1e6 / (double)ntasks, "");
    bench_line("tasks", "idle us/task cancel+join", (t2 - t1) * 1e6 / (double)ntasks, "");
    close(p[0]);
    close(p[1]);
    free(t);
}

/* ---- 2. create + finish ---- */

/* Through a volatile pointer, so the baseline's call is a real call. */
static awaitlet_fn volatile trivial_ptr = trivial;

struct call_rec {
    awaitlet_fn fn;
    void *arg, *result;
};

static double run_call(long n)
{
    double t0 = bench_now();
    for (long i = 1; i <= n; i++) {
        struct call_rec *r = malloc(sizeof *r);
        if (!r)
            bench_die("malloc");
        /* Keep the compiler from pairing malloc with free and dropping both. */
        __asm__ volatile("" : : "r"(r) : "memory");
        r->fn = trivial_ptr;
        r->arg = (void *)i;
        r->result = r->fn(r->arg);
        if (r->result != (void *)i)
            bench_die("call");
        free(r);
    }
    return bench_now() - t0;
}

static double run_task(long n)
{
    double t0 = bench_now();
    for (long i = 1; i <= n; i++)
        if (awaitlet_run(loop, trivial, (void *)i) != (void *)i)
            bench_die("awaitlet_run");
    return bench_now() - t0;
}

static void *yield_once(void *arg)
{
    return awaitlet_sleep(0) < 0 ? NULL : arg;
}

static double run_yield(long n)
{
    double t0 = bench_now();
    for (long i = 1; i <= n; i++)
        if (awaitlet_run(loop, yield_once, (void *)i) != (void *)i)
            bench_die("awaitlet_run (sleep(0))");
    return bench_now() - t0;
}

struct idle_rec {
    ev_idle w; /* first, so the callback can cast back */
    int done;
};

static void idle_cb(struct ev_loop *l, ev_idle *w, int revents)
{
    (void)revents;
    ev_idle_stop(l, w);
    ((struct idle_rec *)w)->done = 1;
}

static double run_idle(long n)
{
    double t0 = bench_now();
    for (long i = 1; i <= n; i++) {
        struct idle_rec *r = malloc(sizeof *r);
        if (!r)
            bench_die("malloc");
        r->done = 0;
        ev_idle_init(&r->w, idle_cb);
        ev_idle_start(loop, &r->w);
        while (!r->done)
            ev_run(loop, EVRUN_ONCE);
        free(r);
    }
    return bench_now() - t0;
}

int main(int argc, char **argv)
{
    struct bench_args args;
    struct bench_variant v[4] = {
        { .name = "task", .run = run_task },
        { .name = "call", .run = run_call },
        { .name = "yield-task", .run = run_yield },
        { .name = "idle-callback", .run = run_idle },
    };

    bench_parse(argc, argv, &args, "task call yield-task idle-callback");
    v[0].n = v[1].n = bench_scaled(&args, 1000000);
    v[2].n = v[3].n = bench_scaled(&args, 100000);

    if (!(loop = ev_loop_new(EVFLAG_AUTO)))
        bench_die("ev_loop_new");

    if (!bench_only(v, 4, &args)) {
        bench_idle(bench_scaled(&args, 10000));
        bench_interleave(v, 4, args.rounds);
        bench_report("tasks", &v[0], "ns/create+finish", args.rounds, "(target <= 1000)");
        bench_report("tasks", &v[1], "ns/malloc+call+free", args.rounds, NULL);
        bench_ratio("tasks", &v[0], &v[1], "");
        bench_report("tasks", &v[2], "ns/create+sleep(0)+finish", args.rounds, NULL);
        bench_report("tasks", &v[3], "ns/malloc+idle-once+free", args.rounds, NULL);
        bench_ratio("tasks", &v[2], &v[3], "");
    }

    if (awaitlet_loop_tasks(loop) != 0)
        fprintf(stderr, "bench: %u tasks left on the loop\n", awaitlet_loop_tasks(loop));
    ev_loop_destroy(loop);
    return 0;
}
