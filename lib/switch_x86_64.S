/*
 * switch_x86_64.S -- the task context switch for x86-64 (System V ABI).
 *
 * Why assembly: a switch between tasks only has to preserve what the ABI
 * makes callee-saved -- rbx, rbp, r12-r15, the stack pointer, and the control
 * bits of MXCSR and the x87 control word.  The caller of awaitlet__switch has
 * already saved everything else because, to it, this is an ordinary call.
 * Doing exactly that costs ~10 ns; glibc's swapcontext also saves the signal
 * mask with a system call per switch, which costs 100x more.
 *
 * A suspended context is a pointer to the top of this frame on its own stack:
 *
 *     sp + 0   MXCSR (4 bytes), x87 control word (2 bytes), 2 unused
 *     sp + 8   r15
 *     sp + 16  r14
 *     sp + 24  r13
 *     sp + 32  r12
 *     sp + 40  rbx
 *     sp + 48  rbp
 *     sp + 56  return address
 *
 * The gdb helper script relies on this layout to show suspended tasks: keep
 * it in sync if it ever changes.
 *
 * A fresh context (awaitlet__ctx_init) is the same frame, built by hand, whose
 * return address is awaitlet__trampoline, with the entry function in r13 and
 * its argument in r12, and the MXCSR and x87 control word of the caller of
 * awaitlet__ctx_init -- the task's creator -- so a task inherits its
 * creator's rounding mode, flush-to-zero/denormals-are-zero bits and
 * exception masks, as a thread inherits its creator's floating-point
 * environment.  MXCSR's sticky exception flags start clear.  No CET shadow-stack marking is emitted on purpose:
 * "returning" into a frame that was never called is exactly what a shadow
 * stack forbids.
 */

    .text

/* void awaitlet__switch(awaitlet__ctx *from, awaitlet__ctx *to)
 * rdi = from, rsi = to.  ctx->sp is the first (and only) field. */
    .globl  awaitlet__switch
    .hidden awaitlet__switch
    .type   awaitlet__switch, @function
    .p2align 4
awaitlet__switch:
    .cfi_startproc
    pushq   %rbp
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset rbp, 0
    pushq   %rbx
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset rbx, 0
    pushq   %r12
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r12, 0
    pushq   %r13
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r13, 0
    pushq   %r14
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r14, 0
    pushq   %r15
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r15, 0
    subq    $8, %rsp
    .cfi_adjust_cfa_offset 8
    stmxcsr (%rsp)
    fnstcw  4(%rsp)

    movq    %rsp, (%rdi)
    movq    (%rsi), %rsp
    /* From here on we run on the other stack, whose frame has the same shape,
     * so the unwind rules above stay true. */

    ldmxcsr (%rsp)
    fldcw   4(%rsp)
    addq    $8, %rsp
    .cfi_adjust_cfa_offset -8
    popq    %r15
    .cfi_adjust_cfa_offset -8
    .cfi_restore r15
    popq    %r14
    .cfi_adjust_cfa_offset -8
    .cfi_restore r14
    popq    %r13
    .cfi_adjust_cfa_offset -8
    .cfi_restore r13
    popq    %r12
    .cfi_adjust_cfa_offset -8
    .cfi_restore r12
    popq    %rbx
    .cfi_adjust_cfa_offset -8
    .cfi_restore rbx
    popq    %rbp
    .cfi_adjust_cfa_offset -8
    .cfi_restore rbp
    ret
    .cfi_endproc
    .size   awaitlet__switch, .-awaitlet__switch

/* void awaitlet__ctx_init(awaitlet__ctx *ctx, void *stack_lo, size_t size,
 *                         void (*entry)(void *), void *arg)
 * rdi = ctx, rsi = stack_lo, rdx = size, rcx = entry, r8 = arg.
 *
 * top = (stack_lo + size) & ~15.  The return address goes at top - 24 so
 * that after awaitlet__switch's `ret` rsp = top - 16 (16-aligned), and the
 * trampoline's `call` leaves rsp + 8 16-aligned at entry, as the ABI wants.
 * The 16 bytes above are zero: a naive frame walker finds a null link. */
    .globl  awaitlet__ctx_init
    .hidden awaitlet__ctx_init
    .type   awaitlet__ctx_init, @function
    .p2align 4
awaitlet__ctx_init:
    .cfi_startproc
    leaq    (%rsi,%rdx), %rax
    andq    $-16, %rax
    xorl    %edx, %edx
    movq    %rdx, -8(%rax)
    movq    %rdx, -16(%rax)
    leaq    awaitlet__trampoline(%rip), %r9
    movq    %r9, -24(%rax)          /* return address */
    movq    %rdx, -32(%rax)         /* rbp = 0: end of the frame-pointer chain */
    movq    %rdx, -40(%rax)         /* rbx */
    movq    %r8, -48(%rax)          /* r12 = arg */
    movq    %rcx, -56(%rax)         /* r13 = entry */
    movq    %rdx, -64(%rax)         /* r14 */
    movq    %rdx, -72(%rax)         /* r15 */
    stmxcsr -80(%rax)               /* MXCSR: the creator's... */
    andl    $-64, -80(%rax)         /* ...without its sticky exception flags */
    movl    %edx, -76(%rax)         /* the 2 unused bytes stay 0 */
    fnstcw  -76(%rax)               /* x87 control word: the creator's */
    subq    $80, %rax
    movq    %rax, (%rdi)
    ret
    .cfi_endproc
    .size   awaitlet__ctx_init, .-awaitlet__ctx_init

/* First code a task runs.  Marked as the outermost frame so debuggers and
 * unwinders (gdb, backtrace(), C++/_Unwind) stop here instead of walking
 * into whatever the stack's previous user left behind.  entry must not
 * return; if it does, trap at once rather than run off the stack. */
    .globl  awaitlet__trampoline
    .hidden awaitlet__trampoline
    .type   awaitlet__trampoline, @function
    .p2align 4
awaitlet__trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq    %r12, %rdi
    callq   *%r13
    ud2
    .cfi_endproc
    .size   awaitlet__trampoline, .-awaitlet__trampoline

    .section .note.GNU-stack,"",@progbits
