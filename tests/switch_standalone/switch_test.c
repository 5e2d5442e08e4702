/*
 * switch_test.c -- standalone check of awaitlet__ctx_init/awaitlet__switch.
 *
 * Why standalone: the switch is the one piece written per CPU, and the
 * aarch64 version can only be exercised here under qemu-user, where libev,
 * Check and the rest of the library are not available.  So this is plain C
 * against lib/switch.h and one switch implementation, nothing else.
 *
 * It checks: the entry argument arrives; the stack is ABI-aligned inside the
 * entry function (and printf of doubles, which uses aligned vector stores,
 * works); callee-saved integer and FP registers survive while the other side
 * loads different values into them; the floating-point control state (MXCSR
 * and the x87 control word on x86-64, FPCR on aarch64) starts as the
 * creator's was at awaitlet__ctx_init and is then per context; a ring of
 * contexts passes a token around;
 * backtrace() from inside a task terminates.  Then it times switch pairs.
 *
 * Usage: switch_test [bench_pairs]   (default 10000000; 0 skips the timing)
 * Exit status 0 on success, 1 on failure.
 */
#include "switch.h"

#include <execinfo.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#define CHECK_FPENV 1
#elif defined(__aarch64__)
#define CHECK_FPCR 1
#endif

#define STACK_SIZE (64 * 1024)

static int failures;

#define CHECK(c)                                                        \
    do {                                                                \
        if (!(c)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,      \
                    __LINE__, #c);                                      \
            failures++;                                                 \
        }                                                               \
    } while (0)

static awaitlet__ctx main_ctx, task_ctx;

/* Hide a value from the optimiser so alignment checks are not folded. */
static uintptr_t launder(uintptr_t v)
{
    __asm__ volatile("" : "+r"(v));
    return v;
}

/* regs_roundtrip(from, to, seed): load every callee-saved register the
 * switch must preserve with seed + k (a different k per register), switch,
 * and once resumed return the OR of (register ^ expected) over all of them:
 * 0 when everything survived.  Both sides use it with different seeds, so a
 * register the switch forgets to restore carries the other side's value.
 * It saves and restores those registers itself, so it is an ordinary
 * ABI-conforming function to its C callers. */
unsigned long regs_roundtrip(awaitlet__ctx *from, awaitlet__ctx *to, unsigned long seed);
#if defined(__x86_64__)
__asm__(
    "    .text\n"
    "    .p2align 4\n"
    "    .type regs_roundtrip, @function\n"
    "regs_roundtrip:\n"
    "    pushq %rbx\n"
    "    pushq %rbp\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    subq $8, %rsp\n"
    "    movq %rdx, (%rsp)\n"
    "    movq %rdx, %rbx\n"
    "    leaq 1(%rdx), %rbp\n"
    "    leaq 2(%rdx), %r12\n"
    "    leaq 3(%rdx), %r13\n"
    "    leaq 4(%rdx), %r14\n"
    "    leaq 5(%rdx), %r15\n"
    "    call awaitlet__switch\n"
    "    movq (%rsp), %rdx\n"
    "    xorl %eax, %eax\n"
    "    leaq 0(%rdx), %rcx\n"
    "    xorq %rbx, %rcx\n"
    "    orq %rcx, %rax\n"
    "    leaq 1(%rdx), %rcx\n"
    "    xorq %rbp, %rcx\n"
    "    orq %rcx, %rax\n"
    "    leaq 2(%rdx), %rcx\n"
    "    xorq %r12, %rcx\n"
    "    orq %rcx, %rax\n"
    "    leaq 3(%rdx), %rcx\n"
    "    xorq %r13, %rcx\n"
    "    orq %rcx, %rax\n"
    "    leaq 4(%rdx), %rcx\n"
    "    xorq %r14, %rcx\n"
    "    orq %rcx, %rax\n"
    "    leaq 5(%rdx), %rcx\n"
    "    xorq %r15, %rcx\n"
    "    orq %rcx, %rax\n"
    "    addq $8, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbp\n"
    "    popq %rbx\n"
    "    ret\n"
    "    .size regs_roundtrip, .-regs_roundtrip\n");
#elif defined(__aarch64__)
__asm__(
    "    .text\n"
    "    .p2align 4\n"
    "    .type regs_roundtrip, %function\n"
    "regs_roundtrip:\n"
    "    stp x29, x30, [sp, #-176]!\n"
    "    stp x19, x20, [sp, #16]\n"
    "    stp x21, x22, [sp, #32]\n"
    "    stp x23, x24, [sp, #48]\n"
    "    stp x25, x26, [sp, #64]\n"
    "    stp x27, x28, [sp, #80]\n"
    "    stp d8, d9, [sp, #96]\n"
    "    stp d10, d11, [sp, #112]\n"
    "    stp d12, d13, [sp, #128]\n"
    "    stp d14, d15, [sp, #144]\n"
    "    str x2, [sp, #160]\n"
    "    mov x19, x2\n"
    "    add x20, x2, #1\n"
    "    add x21, x2, #2\n"
    "    add x22, x2, #3\n"
    "    add x23, x2, #4\n"
    "    add x24, x2, #5\n"
    "    add x25, x2, #6\n"
    "    add x26, x2, #7\n"
    "    add x27, x2, #8\n"
    "    add x28, x2, #9\n"
    "    add x29, x2, #10\n"
    "    add x9, x2, #11\n"
    "    fmov d8, x9\n"
    "    add x9, x2, #12\n"
    "    fmov d9, x9\n"
    "    add x9, x2, #13\n"
    "    fmov d10, x9\n"
    "    add x9, x2, #14\n"
    "    fmov d11, x9\n"
    "    add x9, x2, #15\n"
    "    fmov d12, x9\n"
    "    add x9, x2, #16\n"
    "    fmov d13, x9\n"
    "    add x9, x2, #17\n"
    "    fmov d14, x9\n"
    "    add x9, x2, #18\n"
    "    fmov d15, x9\n"
    "    bl awaitlet__switch\n"
    "    ldr x2, [sp, #160]\n"
    "    mov x0, #0\n"
    "    add x10, x2, #0\n"
    "    eor x9, x19, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #1\n"
    "    eor x9, x20, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #2\n"
    "    eor x9, x21, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #3\n"
    "    eor x9, x22, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #4\n"
    "    eor x9, x23, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #5\n"
    "    eor x9, x24, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #6\n"
    "    eor x9, x25, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #7\n"
    "    eor x9, x26, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #8\n"
    "    eor x9, x27, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #9\n"
    "    eor x9, x28, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #10\n"
    "    eor x9, x29, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #11\n"
    "    fmov x9, d8\n"
    "    eor x9, x9, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #12\n"
    "    fmov x9, d9\n"
    "    eor x9, x9, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #13\n"
    "    fmov x9, d10\n"
    "    eor x9, x9, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #14\n"
    "    fmov x9, d11\n"
    "    eor x9, x9, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #15\n"
    "    fmov x9, d12\n"
    "    eor x9, x9, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #16\n"
    "    fmov x9, d13\n"
    "    eor x9, x9, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #17\n"
    "    fmov x9, d14\n"
    "    eor x9, x9, x10\n"
    "    orr x0, x0, x9\n"
    "    add x10, x2, #18\n"
    "    fmov x9, d15\n"
    "    eor x9, x9, x10\n"
    "    orr x0, x0, x9\n"
    "    ldp x19, x20, [sp, #16]\n"
    "    ldp x21, x22, [sp, #32]\n"
    "    ldp x23, x24, [sp, #48]\n"
    "    ldp x25, x26, [sp, #64]\n"
    "    ldp x27, x28, [sp, #80]\n"
    "    ldp d8, d9, [sp, #96]\n"
    "    ldp d10, d11, [sp, #112]\n"
    "    ldp d12, d13, [sp, #128]\n"
    "    ldp d14, d15, [sp, #144]\n"
    "    ldp x29, x30, [sp], #176\n"
    "    ret\n"
    "    .size regs_roundtrip, .-regs_roundtrip\n");
#else
#error "switch_test: no register check for this CPU"
#endif
__asm__(".globl regs_roundtrip");

#ifdef CHECK_FPENV
static unsigned get_mxcsr(void)
{
    unsigned v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v;
}
static void set_mxcsr(unsigned v) { __asm__ volatile("ldmxcsr %0" :: "m"(v)); }
static unsigned short get_fcw(void)
{
    unsigned short v;
    __asm__ volatile("fnstcw %0" : "=m"(v));
    return v;
}
static void set_fcw(unsigned short v) { __asm__ volatile("fldcw %0" :: "m"(v)); }
#endif
#ifdef CHECK_FPCR
static unsigned long get_fpcr(void)
{
    unsigned long v;
    __asm__ volatile("mrs %0, fpcr" : "=r"(v));
    return v;
}
static void set_fpcr(unsigned long v) { __asm__ volatile("msr fpcr, %0" :: "r"(v)); }
#define FPCR_RM (2ul << 22)  /* round toward minus infinity */
#define FPCR_RZ (3ul << 22)  /* round toward zero */
#define FPCR_FZ (1ul << 24)  /* flush to zero */
#endif

/* ---- ping-pong ----------------------------------------------------------- */

#define MAGIC ((void *)(uintptr_t)0x0123456789abcdefull)
static volatile long pp_count;

static void pingpong_entry(void *arg)
{
    _Alignas(16) volatile char probe[16];
    void *frames[64];
    int n;

    CHECK(arg == MAGIC);
    probe[0] = 0;
    CHECK(launder((uintptr_t)probe) % 16 == 0);
    /* glibc's printf saves vector registers with aligned stores when it is
     * passed doubles: a misaligned stack crashes here. */
    {
        char buf[64];
        snprintf(buf, sizeof buf, "%.3f %.3f", 1.5, (double)probe[0] + 2.25);
        CHECK(strcmp(buf, "1.500 2.250") == 0);
    }
    /* The trampoline ends the unwind chain: this must return, and soon. */
    n = backtrace(frames, 64);
    CHECK(n > 0 && n < 16);
#ifdef CHECK_FPENV
    /* the creator's state at awaitlet__ctx_init, not a built-in default */
    CHECK((get_mxcsr() & ~0x3Fu) == (0x1F80 | 0x2000 | 0x8040));
    CHECK(get_fcw() == 0x0B7F);
    set_mxcsr(0x1F80 | 0x6000);   /* round toward zero, task side only */
    set_fcw(0x027F);              /* 53-bit precision, task side only */
#endif
#ifdef CHECK_FPCR
    CHECK(get_fpcr() == FPCR_RM);
    set_fpcr(FPCR_RZ | FPCR_FZ);  /* task side only */
#endif
    for (;;) {
        pp_count++;
        if (regs_roundtrip(&task_ctx, &main_ctx, 0xa5a5a5a5a5a50000ul) != 0)
            CHECK(!"task-side callee-saved register lost in a switch");
#ifdef CHECK_FPENV
        CHECK(get_mxcsr() == (0x1F80 | 0x6000));
        CHECK(get_fcw() == 0x027F);
#endif
#ifdef CHECK_FPCR
        CHECK(get_fpcr() == (FPCR_RZ | FPCR_FZ));
#endif
    }
}

static void test_pingpong(void *stack)
{
    /* Enough live values that the compiler keeps some in callee-saved
     * registers (integer and, on aarch64, d8-d15) across the plain switches
     * of odd iterations: a second, compiler-driven check next to
     * regs_roundtrip's explicit one. */
    uint64_t a = 1, b = 2, c = 3, d = 4, e = 5, f = 6;
    double x = 1.0, y = 2.0, z = 3.0, w = 4.0, u = 5.0, v = 6.0, q = 7.0, r = 8.0;
    long i, n = 200000;

#ifdef CHECK_FPENV
    /* round down, flush-to-zero and denormals-are-zero (-ffast-math's
     * bits), and the x87 rounding up, on the main side: the task inherits
     * all of it.  The sticky exception flag set here is not inherited. */
    set_mxcsr(0x1F80 | 0x2000 | 0x8040 | 0x0020);
    set_fcw(0x0B7F);
#endif
#ifdef CHECK_FPCR
    set_fpcr(FPCR_RM);            /* round down on the main side */
#endif
    awaitlet__ctx_init(&task_ctx, stack, STACK_SIZE, pingpong_entry, MAGIC);
#ifdef CHECK_FPENV
    set_mxcsr(0x1F80 | 0x2000);   /* the main side changes after the init */
    set_fcw(0x037F);
#endif
    for (i = 0; i < n; i++) {
        if (i & 1)
            awaitlet__switch(&main_ctx, &task_ctx);
        else if (regs_roundtrip(&main_ctx, &task_ctx, 0x3c3c3c3c3c3c0000ul) != 0) {
            CHECK(!"main-side callee-saved register lost in a switch");
            break;
        }
        a += 1; b += 2; c += 3; d += 4; e += 5; f += 6;
        x += 1; y += 2; z += 3; w += 4; u += 5; v += 6; q += 7; r += 8;
#ifdef CHECK_FPENV
        if ((get_mxcsr() & ~0x3Fu) != (0x1F80 | 0x2000) || get_fcw() != 0x037F) {
            CHECK(!"main-side MXCSR/x87 CW changed by a switch");
            break;
        }
#endif
#ifdef CHECK_FPCR
        if (get_fpcr() != FPCR_RM) {
            CHECK(!"main-side FPCR changed by a switch");
            break;
        }
#endif
    }
    CHECK(pp_count == n);
    CHECK(a == 1 + (uint64_t)n && b == 2 + 2 * (uint64_t)n &&
          c == 3 + 3 * (uint64_t)n && d == 4 + 4 * (uint64_t)n &&
          e == 5 + 5 * (uint64_t)n && f == 6 + 6 * (uint64_t)n);
    CHECK(x == 1.0 + n && y == 2.0 + 2.0 * n && z == 3.0 + 3.0 * n &&
          w == 4.0 + 4.0 * n && u == 5.0 + 5.0 * n && v == 6.0 + 6.0 * n &&
          q == 7.0 + 7.0 * n && r == 8.0 + 8.0 * n);
#ifdef CHECK_FPENV
    set_mxcsr(0x1F80);
#endif
#ifdef CHECK_FPCR
    set_fpcr(0);
#endif
}

/* ---- a ring of contexts ---------------------------------------------------- */

#define RING 8
static awaitlet__ctx ring_ctx[RING];
static long ring_hops;
static const long ring_rounds = 1000;

static void ring_entry(void *arg)
{
    int me = (int)(intptr_t)arg;
    long round;

    for (round = 0; round < ring_rounds; round++) {
        CHECK(ring_hops % RING == me);
        ring_hops++;
        if (me == RING - 1 && round == ring_rounds - 1)
            break;
        awaitlet__switch(&ring_ctx[me], &ring_ctx[(me + 1) % RING]);
    }
    if (me == RING - 1)
        awaitlet__switch(&ring_ctx[me], &main_ctx);
    /* The others parked in their last switch are never resumed; nothing
     * returns from an entry function. */
    abort();
}

static void test_ring(char *stacks)
{
    int i;

    for (i = 0; i < RING; i++)
        awaitlet__ctx_init(&ring_ctx[i], stacks + (size_t)i * STACK_SIZE,
                           STACK_SIZE, ring_entry, (void *)(intptr_t)i);
    awaitlet__switch(&main_ctx, &ring_ctx[0]);
    CHECK(ring_hops == RING * ring_rounds);
}

/* ---- odd stack tops are aligned down ---------------------------------------- */

static void align_entry(void *arg)
{
    _Alignas(16) volatile char probe[16];

    probe[0] = 1;
    *(int *)arg = launder((uintptr_t)probe) % 16 == 0;
    awaitlet__switch(&task_ctx, &main_ctx);
    abort();
}

static void test_odd_top(char *stack)
{
    size_t k;

    for (k = 1; k < 16; k += 3) {
        int ok = -1;
        awaitlet__ctx_init(&task_ctx, stack, STACK_SIZE - k, align_entry, &ok);
        awaitlet__switch(&main_ctx, &task_ctx);
        CHECK(ok == 1);
    }
}

/* ---- timing -------------------------------------------------------------- */

static void bench_entry(void *arg)
{
    (void)arg;
    for (;;)
        awaitlet__switch(&task_ctx, &main_ctx);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void bench(void *stack, long pairs)
{
    double t0, t1;
    long i;

    awaitlet__ctx_init(&task_ctx, stack, STACK_SIZE, bench_entry, NULL);
    awaitlet__switch(&main_ctx, &task_ctx);        /* warm up */
    t0 = now_ns();
    for (i = 0; i < pairs; i++)
        awaitlet__switch(&main_ctx, &task_ctx);
    t1 = now_ns();
    printf("switch: %ld pairs, %.2f ns/switch (%.2f ns per round trip)\n",
           pairs, (t1 - t0) / (2.0 * (double)pairs), (t1 - t0) / (double)pairs);
}

int main(int argc, char **argv)
{
    long pairs = argc > 1 ? atol(argv[1]) : 10000000;
    char *stacks = aligned_alloc(4096, (size_t)RING * STACK_SIZE);

    if (stacks == NULL)
        return 1;
    test_pingpong(stacks);
    test_ring(stacks);
    test_odd_top(stacks);
    if (pairs > 0)
        bench(stacks, pairs);
    free(stacks);
    if (failures != 0) {
        fprintf(stderr, "switch_test: %d failure(s)\n", failures);
        return 1;
    }
    printf("switch_test: ok\n");
    return 0;
}
