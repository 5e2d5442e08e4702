/*
 * switch_aarch64.S -- the task context switch for aarch64 (AAPCS64).
 *
 * Why assembly: see switch_x86_64.S.  AAPCS64 makes x19-x28, the frame
 * pointer x29, the link register x30 (our return address), sp and the low
 * 64 bits of v8-v15 (d8-d15) callee-saved; nothing else needs to survive a
 * call.  FPCR (rounding mode, flush-to-zero, default NaN) is switched too,
 * as x86-64 switches MXCSR: it is per task, so a task that changes its
 * rounding mode does not change its resumer's, and a new task starts with
 * its creator's (awaitlet__ctx_init reads it).  Writing FPCR can be slow on
 * some cores, so the switch writes it only when the two sides differ.
 * FPSR (the sticky exception flags) is not switched.
 *
 * A suspended context is a pointer to a 176-byte frame on its own stack:
 *
 *     sp + 0    x19, x20
 *     sp + 16   x21, x22
 *     sp + 32   x23, x24
 *     sp + 48   x25, x26
 *     sp + 64   x27, x28
 *     sp + 80   x29, x30 (frame pointer, return address)
 *     sp + 96   d8,  d9
 *     sp + 112  d10, d11
 *     sp + 128  d12, d13
 *     sp + 144  d14, d15
 *     sp + 160  FPCR, 8 unused bytes
 *
 * The gdb helper script relies on this layout: keep it in sync.
 *
 * A fresh context (awaitlet__ctx_init) is the same frame built by hand with
 * x30 = awaitlet__trampoline, x19 = arg, x20 = entry, FPCR = the creator's,
 * sp 16-aligned once the frame is popped.
 */

    .text

/* void awaitlet__switch(awaitlet__ctx *from, awaitlet__ctx *to)
 * x0 = from, x1 = to.  ctx->sp is the first (and only) field. */
    .globl  awaitlet__switch
    .hidden awaitlet__switch
    .type   awaitlet__switch, %function
    .p2align 4
awaitlet__switch:
    .cfi_startproc
    sub     sp, sp, #176
    .cfi_def_cfa_offset 176
    stp     x19, x20, [sp, #0]
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    stp     d8,  d9,  [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    .cfi_offset x19, -176
    .cfi_offset x20, -168
    .cfi_offset x21, -160
    .cfi_offset x22, -152
    .cfi_offset x23, -144
    .cfi_offset x24, -136
    .cfi_offset x25, -128
    .cfi_offset x26, -120
    .cfi_offset x27, -112
    .cfi_offset x28, -104
    .cfi_offset x29, -96
    .cfi_offset x30, -88
    .cfi_offset d8,  -80
    .cfi_offset d9,  -72
    .cfi_offset d10, -64
    .cfi_offset d11, -56
    .cfi_offset d12, -48
    .cfi_offset d13, -40
    .cfi_offset d14, -32
    .cfi_offset d15, -24
    mrs     x10, fpcr
    str     x10, [sp, #160]

    mov     x9, sp
    str     x9, [x0]
    ldr     x9, [x1]
    mov     sp, x9
    /* Now on the other stack, whose frame has the same shape, so the unwind
     * rules above stay true.  x10 still holds the FPCR we ran with. */

    ldr     x11, [sp, #160]
    cmp     x10, x11
    b.eq    1f
    msr     fpcr, x11
1:
    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    ldp     d8,  d9,  [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    add     sp, sp, #176
    .cfi_def_cfa_offset 0
    .cfi_restore x19
    .cfi_restore x20
    .cfi_restore x21
    .cfi_restore x22
    .cfi_restore x23
    .cfi_restore x24
    .cfi_restore x25
    .cfi_restore x26
    .cfi_restore x27
    .cfi_restore x28
    .cfi_restore x29
    .cfi_restore x30
    .cfi_restore d8
    .cfi_restore d9
    .cfi_restore d10
    .cfi_restore d11
    .cfi_restore d12
    .cfi_restore d13
    .cfi_restore d14
    .cfi_restore d15
    ret
    .cfi_endproc
    .size   awaitlet__switch, .-awaitlet__switch

/* void awaitlet__ctx_init(awaitlet__ctx *ctx, void *stack_lo, size_t size,
 *                         void (*entry)(void *), void *arg)
 * x0 = ctx, x1 = stack_lo, x2 = size, x3 = entry, x4 = arg.
 * The frame sits right under top = (stack_lo + size) & ~15, so sp == top,
 * 16-aligned as AAPCS64 requires, when the trampoline starts.  FPCR is the
 * caller's (the task's creator's). */
    .globl  awaitlet__ctx_init
    .hidden awaitlet__ctx_init
    .type   awaitlet__ctx_init, %function
    .p2align 4
awaitlet__ctx_init:
    .cfi_startproc
    add     x9, x1, x2
    and     x9, x9, #~15
    sub     x9, x9, #176
    stp     x4, x3, [x9, #0]        /* x19 = arg, x20 = entry */
    stp     xzr, xzr, [x9, #16]
    stp     xzr, xzr, [x9, #32]
    stp     xzr, xzr, [x9, #48]
    stp     xzr, xzr, [x9, #64]
    adr     x10, awaitlet__trampoline
    stp     xzr, x10, [x9, #80]     /* x29 = 0 ends the frame chain; x30 */
    stp     xzr, xzr, [x9, #96]
    stp     xzr, xzr, [x9, #112]
    stp     xzr, xzr, [x9, #128]
    stp     xzr, xzr, [x9, #144]
    mrs     x10, fpcr
    stp     x10, xzr, [x9, #160]    /* FPCR: the creator's */
    str     x9, [x0]
    ret
    .cfi_endproc
    .size   awaitlet__ctx_init, .-awaitlet__ctx_init

/* First code a task runs; the outermost frame for unwinders (x30 undefined).
 * entry must not return; if it does, trap at once. */
    .globl  awaitlet__trampoline
    .hidden awaitlet__trampoline
    .type   awaitlet__trampoline, %function
    .p2align 4
awaitlet__trampoline:
    .cfi_startproc
    .cfi_undefined x30
    mov     x0, x19
    blr     x20
    brk     #0
    .cfi_endproc
    .size   awaitlet__trampoline, .-awaitlet__trampoline

    .section .note.GNU-stack,"",%progbits
