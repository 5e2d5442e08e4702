/*
 * switch_ucontext.c -- portable context switch on getcontext/makecontext/
 * swapcontext, for CPUs without a hand-written switch (meson -Dswitch=ucontext).
 *
 * Why it is only a fallback: glibc's swapcontext saves and restores the
 * signal mask with a rt_sigprocmask system call on every switch, about 100
 * times the cost of the assembly versions.  It is correct everywhere glibc
 * runs, though, and handy to rule the assembly out when chasing a bug.
 *
 * Floating-point control state: getcontext() in awaitlet__ctx_init saves
 * the creator's (MXCSR and x87 environment, or FPCR/FPSR), and swapcontext
 * restores each context's own, so tasks inherit it and keep it per task,
 * like the assembly versions.
 *
 * makecontext passes only int arguments, so the 64-bit entry pointer and
 * argument each travel as two 32-bit halves and are reassembled in the
 * trampoline.
 */
#include "switch.h"

#include <stdint.h>
#include <stdlib.h>
#include <ucontext.h>

static void trampoline(unsigned e_hi, unsigned e_lo, unsigned a_hi, unsigned a_lo)
{
    uintptr_t e = ((uintptr_t)(((uint64_t)e_hi << 32) | e_lo));
    uintptr_t a = ((uintptr_t)(((uint64_t)a_hi << 32) | a_lo));
    void (*entry)(void *) = (void (*)(void *))e;

    entry((void *)a);
    /* entry must end by switching away for good; uc_link is NULL, so
     * returning would exit the thread: fail loudly instead. */
    abort();
}

void awaitlet__ctx_init(awaitlet__ctx *ctx, void *stack_lo, size_t size,
                        void (*entry)(void *), void *arg)
{
    uint64_t e = (uint64_t)(uintptr_t)entry;
    uint64_t a = (uint64_t)(uintptr_t)arg;

    /* getcontext cannot fail on glibc for a valid pointer; the interface has
     * no error path, so a failure would surface as a crash on first switch.
     * Abort right here instead, where it is obvious. */
    if (getcontext(&ctx->uc) != 0)
        abort();
    ctx->uc.uc_stack.ss_sp = stack_lo;
    ctx->uc.uc_stack.ss_size = size;
    ctx->uc.uc_stack.ss_flags = 0;
    ctx->uc.uc_link = NULL;
    makecontext(&ctx->uc, (void (*)(void))trampoline, 4,
                (unsigned)(e >> 32), (unsigned)(e & 0xffffffffu),
                (unsigned)(a >> 32), (unsigned)(a & 0xffffffffu));
}

void awaitlet__switch(awaitlet__ctx *from, awaitlet__ctx *to)
{
    /* swapcontext only fails for invalid pointers (EFAULT); same as above. */
    if (swapcontext(&from->uc, &to->uc) != 0)
        abort();
}
