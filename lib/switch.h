/*
 * switch.h -- the context switch under every task (internal).
 *
 * One primitive: save the running context into `from`, resume `to`.  The
 * assembly versions (switch_x86_64.S, switch_aarch64.S) save only what the
 * ABI makes callee-saved -- on x86-64 also MXCSR and the x87 control word,
 * on aarch64 d8-d15 and FPCR -- and make no system call; switch_ucontext.c is the
 * portable fallback (glibc's swapcontext costs a sigprocmask per switch).
 * Chosen by meson option `switch` (auto|asm|ucontext); AWAITLET_SWITCH_UCONTEXT
 * is defined for the fallback.
 */
#ifndef AWAITLET_SWITCH_H
#define AWAITLET_SWITCH_H

#include <stddef.h>

#ifdef AWAITLET_SWITCH_UCONTEXT
#include <ucontext.h>
typedef struct awaitlet__ctx {
    ucontext_t uc;
} awaitlet__ctx;
#else
typedef struct awaitlet__ctx {
    void *sp; /* saved stack pointer; everything else lives on that stack */
} awaitlet__ctx;
#endif

/* Prepare ctx so that the first switch to it calls entry(arg) on the stack
 * [stack_lo, stack_lo + size).  entry must never return (it ends by switching
 * away for good); the frame it starts in is marked as outermost for unwinders
 * (.cfi_undefined rip / x30) so backtraces end cleanly there.
 * The new context's floating-point control state (MXCSR and x87 control
 * word; FPCR) is the caller's at this call: a task created here inherits its
 * creator's rounding mode and flush-to-zero setting.  The ucontext version
 * gets the same from getcontext(). */
void awaitlet__ctx_init(awaitlet__ctx *ctx, void *stack_lo, size_t size,
                        void (*entry)(void *), void *arg);

/* Save the current context into from and resume to.  Returns when someone
 * switches back to from.  No system call (asm versions). */
void awaitlet__switch(awaitlet__ctx *from, awaitlet__ctx *to);

#endif
