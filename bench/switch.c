/*
 * switch.c -- the bare context switch, against glibc's swapcontext.
 *
 * Everything a task does rests on awaitlet__switch (lib/switch.h), so its
 * cost is the floor under every suspension: each awaitlet_io is two switches.
 * This calls the internal primitive directly (linked from the static
 * library) and ping-pongs between the main context and one coroutine, side
 * by side with the same ping-pong through getcontext/makecontext/swapcontext,
 * which is what a portable runtime would use and which makes an
 * rt_sigprocmask system call per switch.  The target is <= 15 ns per switch.
 *
 * When the library is built with -Dswitch=ucontext the "awaitlet" variant is
 * that fallback, and the two should come out about equal.
 */
#include "bench.h"

#include "switch.h"

#include <sys/mman.h>
#include <ucontext.h>

#define STACK_SIZE (64 * 1024)

/* ---- awaitlet__switch ---- */

static awaitlet__ctx aw_main, aw_co;

static void aw_entry(void *arg)
{
    (void)arg;
    for (;;)
        awaitlet__switch(&aw_co, &aw_main);
}

/* n switches: n/2 there-and-back trips. */
static double run_awaitlet(long n)
{
    double t0 = bench_now();
    for (long i = 0; i < n / 2; i++)
        awaitlet__switch(&aw_main, &aw_co);
    return bench_now() - t0;
}

/* ---- swapcontext ---- */

static ucontext_t uc_main, uc_co;

static void uc_entry(void)
{
    for (;;)
        swapcontext(&uc_co, &uc_main);
}

static double run_swapcontext(long n)
{
    double t0 = bench_now();
    for (long i = 0; i < n / 2; i++)
        swapcontext(&uc_main, &uc_co);
    return bench_now() - t0;
}

static void *map_stack(void)
{
    void *p = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (p == MAP_FAILED)
        bench_die("mmap");
    return p;
}

int main(int argc, char **argv)
{
    struct bench_args args;
    struct bench_variant v[2] = {
        { .name = "awaitlet", .run = run_awaitlet },
        /* a system call per switch: far fewer, to keep rounds short */
        { .name = "swapcontext", .run = run_swapcontext },
    };
    void *aw_stack = map_stack(), *uc_stack = map_stack();

    bench_parse(argc, argv, &args, "awaitlet swapcontext");
    v[0].n = bench_scaled(&args, 4000000);
    v[1].n = bench_scaled(&args, 200000);

    /* Both coroutines start parked in their loop, so every measured switch
     * is a steady-state one. */
    awaitlet__ctx_init(&aw_co, aw_stack, STACK_SIZE, aw_entry, NULL);
    awaitlet__switch(&aw_main, &aw_co);
    if (getcontext(&uc_co) < 0)
        bench_die("getcontext");
    uc_co.uc_stack.ss_sp = uc_stack;
    uc_co.uc_stack.ss_size = STACK_SIZE;
    uc_co.uc_link = NULL;
    makecontext(&uc_co, uc_entry, 0);
    swapcontext(&uc_main, &uc_co);

    if (!bench_only(v, 2, &args)) {
        bench_interleave(v, 2, args.rounds);
        bench_report("switch", &v[0], "ns/switch", args.rounds, "(target <= 15)");
        bench_report("switch", &v[1], "ns/switch", args.rounds, NULL);
        bench_ratio("switch", &v[0], &v[1], "(lower is better)");
    }

    /* Both coroutines stay parked for good; their stacks go with the process. */
    return 0;
}
