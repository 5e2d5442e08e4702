/*
 * signals.c -- every signal handler of the process runs marked as one.
 *
 * A handler runs on whatever stack was interrupted -- a task's, maybe in
 * the middle of libpq or of the runtime's own bookkeeping -- so it must
 * never switch tasks, and whatever libpq or awaitlet call it makes must
 * behave as plain, blocking code.  awaitlet can only know it is in a
 * handler if the handler says so (awaitlet_signal_enter/leave); unmodified
 * programs don't.  So the shim interposes the calls that install handlers
 * -- sigaction (and __sigaction), signal, bsd_signal, ssignal, sigset,
 * sysv_signal, __sysv_signal (glibc's signal() & co. do not go through the
 * PLT to sigaction, so each is wrapped) -- and installs, in place of the
 * user's handler, a trampoline that brackets it with
 * awaitlet_signal_enter/leave.  Inside, awaitlet's switching calls fail with
 * EPERM, and the shim's hooks and wrappers are plain libpq.
 *
 * Exactly as before otherwise: the kernel gets the user's flags and mask
 * unchanged (SA_SIGINFO selects the trampoline's shape; SA_RESETHAND,
 * SA_NODEFER, SA_ONSTACK, SA_RESTART act as always); SIG_IGN and SIG_DFL
 * are installed as they are; every "old" handler reported (sigaction's
 * oldact, signal's return value) is the user's own, never a trampoline.
 * Sanitizers intercept sigaction too; they forward to us through
 * RTLD_NEXT, and we forward to the next definition the same way.  libev's
 * and the runtime's own handlers pass through the same wrapper: they make
 * no switching call, so the marking is harmless to them.
 *
 * For SIGSEGV and SIGBUS an SA_SIGINFO trampoline first asks the runtime
 * whether the fault is a task's stack overflow (awaitlet_overflow_report)
 * and, if so, aborts with its message: an application that installs its own
 * crash handler after the first task started keeps the message.
 *
 * A handler that leaves by siglongjmp/longjmp never returns to its
 * trampoline; the shim therefore also interposes those and, when one is
 * called from inside marked handlers, leaves all of them first (a jump out
 * of a handler nearly always lands outside every handler).
 *
 * The user's handlers live in two tables per signal (plain and SA_SIGINFO
 * shape), written before the real sigaction installs the matching
 * trampoline, so a signal arriving at any moment finds a handler of the
 * shape it was installed with.  Everything here is async-signal-safe: no
 * locks, no allocation.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <dlfcn.h>

#include <awaitlet.h>

#include "real.h"

/* glibc exports these; its headers declare them only for some feature
 * levels, or not at all */
extern int __sigaction(int sig, const struct sigaction *act, struct sigaction *old);
extern __sighandler_t bsd_signal(int sig, __sighandler_t handler);
extern __sighandler_t ssignal(int sig, __sighandler_t handler);
extern __sighandler_t sysv_signal(int sig, __sighandler_t handler);
extern __sighandler_t sigset(int sig, __sighandler_t disp);
extern void __longjmp_chk(struct __jmp_buf_tag env[1], int val) __attribute__((noreturn));

typedef int sigaction_fn(int, const struct sigaction *, struct sigaction *);
typedef __sighandler_t signal_fn(int, __sighandler_t);
typedef void jump_fn(struct __jmp_buf_tag[1], int);

static struct {
    sigaction_fn *sigaction, *__sigaction;
    signal_fn *signal, *bsd_signal, *ssignal, *sysv_signal, *__sysv_signal, *sigset;
    jump_fn *longjmp, *_longjmp, *siglongjmp, *__longjmp_chk;
} next;

/* ThreadSanitizer's start-up installs its own handlers through our
 * sigaction (its interceptor forwards to RTLD_NEXT, which is us) before
 * its runtime is ready, when an instrumented function crashes in
 * __tsan_func_entry: that path is left uninstrumented; so are the
 * trampolines, which may run on a thread TSan has not set up yet (a
 * SIGCHLD landing on a just-created thread crashed there).  It touches only
 * the tables below, with atomics, which TSan would not report anyway. */
#if defined(__SANITIZE_THREAD__)
#define NO_TSAN __attribute__((no_sanitize_thread))
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define NO_TSAN __attribute__((no_sanitize("thread")))
#endif
#endif
#ifndef NO_TSAN
#define NO_TSAN
#endif

/* 0 unresolved, 1 being resolved, 2 resolved.  Not pthread_once: TSan
 * intercepts that too, and its interceptor crashes before TSan is ready. */
static int resolved;

NO_TSAN static void resolve(void)
{
#define NEXT(name) *(void **)&next.name = dlsym(RTLD_NEXT, #name);
    NEXT(sigaction) NEXT(__sigaction) NEXT(signal) NEXT(bsd_signal) NEXT(ssignal)
    NEXT(sysv_signal) NEXT(__sysv_signal) NEXT(sigset)
    NEXT(longjmp) NEXT(_longjmp) NEXT(siglongjmp) NEXT(__longjmp_chk)
#undef NEXT
}

/* Done by the constructor below; earlier only when something calls
 * sigaction before it (a sanitizer's start-up, another library's
 * constructor).  Two threads that early: the second spins for the few
 * dlsym calls of the first. */
NO_TSAN static void init(void)
{
    if (__builtin_expect(__atomic_load_n(&resolved, __ATOMIC_ACQUIRE) == 2, 1))
        return;
    int expect = 0;
    if (__atomic_compare_exchange_n(&resolved, &expect, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        resolve();
        __atomic_store_n(&resolved, 2, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&resolved, __ATOMIC_ACQUIRE) != 2) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

/* Resolved before main (constructors run on one thread), so that a first
 * call from a signal handler finds everything resolved. */
__attribute__((constructor)) static void signals_ctor(void)
{
    init();
}

/* ---- the trampolines ---- */

#define NSIGS 65 /* _NSIG on Linux: signals 1..64 */

static void (*user_plain[NSIGS])(int);
static void (*user_info[NSIGS])(int, siginfo_t *, void *);

/* Marked handlers this thread is inside, for the jumps below. */
static PQAWAIT__TLS int depth;

NO_TSAN static void tramp_plain(int sig)
{
    void (*h)(int) = __atomic_load_n(&user_plain[sig], __ATOMIC_ACQUIRE);
    awaitlet_signal_enter();
    depth++;
    if (h)
        h(sig);
    depth--;
    awaitlet_signal_leave();
}

NO_TSAN static void tramp_info(int sig, siginfo_t *si, void *uc)
{
    void (*h)(int, siginfo_t *, void *) = __atomic_load_n(&user_info[sig], __ATOMIC_ACQUIRE);
    /* An application's crash handler installed after awaitlet's own would
     * otherwise swallow the task stack-overflow message: report it first. */
    if ((sig == SIGSEGV || sig == SIGBUS) && awaitlet_overflow_report(si, uc))
        abort();
    awaitlet_signal_enter();
    depth++;
    if (h)
        h(sig, si, uc);
    depth--;
    awaitlet_signal_leave();
}

NO_TSAN static int is_handler(__sighandler_t h)
{
    return h != SIG_DFL && h != SIG_IGN && h != SIG_ERR
#ifdef SIG_HOLD
           && h != SIG_HOLD
#endif
        ;
}

/* Replace a trampoline in a reported disposition by the user's handler it
 * stood for (the tables' previous contents). */
NO_TSAN static __sighandler_t user_of(__sighandler_t h, void (*plain)(int),
                              void (*info)(int, siginfo_t *, void *))
{
    if (h == tramp_plain)
        return plain;
    if (h == (__sighandler_t)(void (*)(void))tramp_info)
        return (__sighandler_t)(void (*)(void))info;
    return h;
}

NO_TSAN static int do_sigaction(sigaction_fn *real, int sig, const struct sigaction *act,
                        struct sigaction *old)
{
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    if (sig <= 0 || sig >= NSIGS)
        return real(sig, act, old); /* the kernel's EINVAL */
    void (*prev_plain)(int) = __atomic_load_n(&user_plain[sig], __ATOMIC_ACQUIRE);
    void (*prev_info)(int, siginfo_t *, void *) = __atomic_load_n(&user_info[sig], __ATOMIC_ACQUIRE);
    struct sigaction mine;
    const struct sigaction *use = act;
    if (act && is_handler(act->sa_handler)) { /* the union: either shape */
        mine = *act;
        if (act->sa_flags & SA_SIGINFO) {
            __atomic_store_n(&user_info[sig], act->sa_sigaction, __ATOMIC_RELEASE);
            mine.sa_sigaction = tramp_info;
        } else {
            __atomic_store_n(&user_plain[sig], act->sa_handler, __ATOMIC_RELEASE);
            mine.sa_handler = tramp_plain;
        }
        use = &mine;
    }
    int rc = real(sig, use, old);
    if (rc != 0 && use == &mine) { /* refused (SIGKILL...): tables as they were */
        __atomic_store_n(&user_plain[sig], prev_plain, __ATOMIC_RELEASE);
        __atomic_store_n(&user_info[sig], prev_info, __ATOMIC_RELEASE);
    }
    if (rc == 0 && old)
        old->sa_handler = user_of(old->sa_handler, prev_plain, prev_info);
    return rc;
}

NO_TSAN PQAWAIT_EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    init();
    return do_sigaction(next.sigaction, sig, act, old);
}

NO_TSAN PQAWAIT_EXPORT int __sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    init();
    return do_sigaction(next.__sigaction ? next.__sigaction : next.sigaction, sig, act, old);
}

/* signal() and friends: the real one (it knows siginterrupt's state and
 * its own flag semantics) installs the plain trampoline. */
static __sighandler_t do_signal(signal_fn *real, int sig, __sighandler_t h)
{
    if (!real) {
        errno = ENOSYS;
        return SIG_ERR;
    }
    if (sig <= 0 || sig >= NSIGS)
        return real(sig, h); /* the kernel's EINVAL */
    if (!is_handler(h)) /* SIG_DFL, SIG_IGN, SIG_HOLD: as they are */
        return user_of(real(sig, h), __atomic_load_n(&user_plain[sig], __ATOMIC_ACQUIRE),
                       __atomic_load_n(&user_info[sig], __ATOMIC_ACQUIRE));
    void (*prev_plain)(int) = __atomic_exchange_n(&user_plain[sig], h, __ATOMIC_ACQ_REL);
    void (*prev_info)(int, siginfo_t *, void *) = __atomic_load_n(&user_info[sig], __ATOMIC_ACQUIRE);
    __sighandler_t old = real(sig, tramp_plain);
    if (old == SIG_ERR) {
        __atomic_store_n(&user_plain[sig], prev_plain, __ATOMIC_RELEASE);
        return SIG_ERR;
    }
    return user_of(old, prev_plain, prev_info);
}

PQAWAIT_EXPORT __sighandler_t signal(int sig, __sighandler_t h)
{
    init();
    return do_signal(next.signal, sig, h);
}

PQAWAIT_EXPORT __sighandler_t bsd_signal(int sig, __sighandler_t h)
{
    init();
    return do_signal(next.bsd_signal ? next.bsd_signal : next.signal, sig, h);
}

PQAWAIT_EXPORT __sighandler_t ssignal(int sig, __sighandler_t h)
{
    init();
    return do_signal(next.ssignal ? next.ssignal : next.signal, sig, h);
}

PQAWAIT_EXPORT __sighandler_t sysv_signal(int sig, __sighandler_t h)
{
    init();
    return do_signal(next.sysv_signal ? next.sysv_signal : next.__sysv_signal, sig, h);
}

PQAWAIT_EXPORT __sighandler_t __sysv_signal(int sig, __sighandler_t h)
{
    init();
    return do_signal(next.__sysv_signal ? next.__sysv_signal : next.sysv_signal, sig, h);
}

PQAWAIT_EXPORT __sighandler_t sigset(int sig, __sighandler_t h)
{
    init();
    return do_signal(next.sigset, sig, h); /* SIG_HOLD is not a handler: passed as is */
}

/* ---- leaving handlers by a jump ---- */

static void leave_handlers(void)
{
    while (depth > 0) {
        depth--;
        awaitlet_signal_leave();
    }
}

#define JUMP(name)                                                        \
    PQAWAIT_EXPORT void name(struct __jmp_buf_tag env[1], int val)        \
    {                                                                     \
        init();                                                           \
        if (depth)                                                        \
            leave_handlers();                                             \
        if (!next.name)                                                   \
            abort(); /* no jump to make: nothing sane is left */          \
        next.name(env, val);                                              \
        abort();                                                          \
    }

JUMP(longjmp)
JUMP(_longjmp)
JUMP(siglongjmp)
JUMP(__longjmp_chk)
