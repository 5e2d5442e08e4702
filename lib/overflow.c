/*
 * overflow.c -- the stack-overflow handler: recognise a fault caused by a
 * task running off its stack, or by anything touching a guard region, and
 * say so before the process dies.
 *
 * Why: without it, running off a stack is an anonymous SIGSEGV, or no
 * signal at all when a large frame lands in mapped memory.  A per-thread
 * alternate signal stack (the faulting stack is unusable) and a
 * process-wide SIGSEGV/SIGBUS handler let us name the task and abort; any
 * fault that is not ours goes to whoever handled the signal before us, or
 * kills the process the default way.
 *
 * What counts as ours (awaitlet_overflow_report):
 *   - a fault in the running task's guard region;
 *   - any fault while the interrupted stack pointer is below the running
 *     task's stack, whatever the address: a frame larger than the guard
 *     moved the stack pointer past it in one step and then touched memory
 *     further down (if that memory was mapped, nothing faulted and it was
 *     overwritten; -fstack-clash-protection prevents that);
 *   - a fault in any other stack's guard region, by a task or by code
 *     outside tasks (a wild pointer, or a frame that jumped past its own
 *     guard into the one below).
 * An application that installs its own SIGSEGV handler after awaitlet
 * replaces this one; its handler can call awaitlet_overflow_report() to get
 * the message back.
 */
#include "stack.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "awaitlet.h"

#define ALTSTACK_SIZE ((size_t)64 * 1024)
#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)

static __thread void *altstack;         /* the sigaltstack we mapped, if any */
static __thread size_t altstack_size;
static __thread int overflow_ready;

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;
static int key_ok;

static pthread_once_t handler_once = PTHREAD_ONCE_INIT;
static int handler_err;                 /* errno from sigaction, 0 if fine */
static struct sigaction old_segv, old_bus;

/* ---- the message (async-signal-safe: no stdio, no malloc) --------------- */

struct msg {
    char buf[640], *p, *end;
};

static void put_str(struct msg *m, const char *s, size_t room)
{
    char *end = m->end - room > m->p ? m->end - room : m->p;
    while (*s != '\0' && m->p < end)
        *m->p++ = *s++;
}

static void put_num(struct msg *m, unsigned long long v)
{
    char tmp[24];
    int n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0 && m->p < m->end)
        *m->p++ = tmp[--n];
}

static void put_hex(struct msg *m, uintptr_t v)
{
    char tmp[2 + 2 * sizeof v];
    int n = 0;

    do {
        tmp[n++] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v != 0);
    put_str(m, "0x", 0);
    while (n > 0 && m->p < m->end)
        *m->p++ = tmp[--n];
}

/* `task #N "name"`; the name is cut so the rest of the message fits. */
static void put_task(struct msg *m, unsigned long id, const char *name)
{
    put_str(m, "task #", 0);
    put_num(m, id);
    if (name != NULL) {
        put_str(m, " \"", 0);
        put_str(m, name, 300);
        put_str(m, "\"", 0);
    }
}

static void msg_write(struct msg *m)
{
    size_t off = 0, len = (size_t)(m->p - m->buf);

    while (off < len) {
        ssize_t n = write(2, m->buf + off, len - off);
        if (n > 0)
            off += (size_t)n;
        else if (n < 0 && errno == EINTR)
            continue;
        else
            break;
    }
}

/* ---- what the fault was ---------------------------------------------------- */

/* The interrupted stack pointer, 0 if unknown. */
static uintptr_t context_sp(const void *uc)
{
    const ucontext_t *u = uc;

    if (u == NULL)
        return 0;
#if defined(__x86_64__)
    return (uintptr_t)u->uc_mcontext.gregs[REG_RSP];
#elif defined(__i386__)
    return (uintptr_t)u->uc_mcontext.gregs[REG_ESP];
#elif defined(__aarch64__)
    return (uintptr_t)u->uc_mcontext.sp;
#else
    return 0;
#endif
}

/* sp lies on the alternate signal stack: the fault happened in a signal
 * handler running there, not in the task's own frames. */
static int on_altstack(uintptr_t sp)
{
    stack_t ss;

    if (sigaltstack(NULL, &ss) != 0 || (ss.ss_flags & SS_DISABLE))
        return 0;
    return sp >= (uintptr_t)ss.ss_sp && sp - (uintptr_t)ss.ss_sp < ss.ss_size;
}

static void report_overflow(const awaitlet__stack *st, uintptr_t addr, uintptr_t sp,
                            int in_guard)
{
    struct msg m;

    m.p = m.buf;
    m.end = m.buf + sizeof m.buf;
    put_str(&m, "awaitlet: ", 0);
    put_task(&m, LOAD(&st->owner_id), LOAD(&st->owner_name));
    put_str(&m, " overflowed its stack (", 0);
    put_num(&m, LOAD(&st->size));
    put_str(&m, " bytes); aborting\n", 0);
    if (!in_guard) {
        put_str(&m, "awaitlet: a frame jumped past the ", 0);
        put_num(&m, LOAD(&st->guard));
        put_str(&m, "-byte guard region (fault at ", 0);
        put_hex(&m, addr);
        put_str(&m, ", stack pointer ", 0);
        put_hex(&m, sp);
        put_str(&m, "): memory below it may be damaged; build with "
                    "-fstack-clash-protection or raise guard_size\n", 0);
    }
    msg_write(&m);
}

static void report_guard_hit(const awaitlet__stack *cur, const awaitlet__stack *st,
                             uintptr_t addr)
{
    struct msg m;
    unsigned long owner = LOAD(&st->owner_id);

    m.p = m.buf;
    m.end = m.buf + sizeof m.buf;
    put_str(&m, "awaitlet: ", 0);
    if (cur != NULL)
        put_task(&m, LOAD(&cur->owner_id), LOAD(&cur->owner_name));
    else
        put_str(&m, "code outside any task", 0);
    put_str(&m, " hit the guard region of ", 0);
    if (owner != 0) {
        put_task(&m, owner, LOAD(&st->owner_name));
        put_str(&m, " (a ", 0);
        put_num(&m, LOAD(&st->size));
        put_str(&m, "-byte stack)", 0);
    } else {
        put_str(&m, "an idle pooled stack (", 0);
        put_num(&m, LOAD(&st->size));
        put_str(&m, " bytes)", 0);
    }
    put_str(&m, " at ", 0);
    put_hex(&m, addr);
    put_str(&m, ": a wild pointer, or a frame that jumped past its own guard; aborting\n", 0);
    msg_write(&m);
}

int awaitlet_overflow_report(const void *info, const void *ucontext)
{
    const siginfo_t *si = info;
    struct awaitlet__fault_info fi;
    const awaitlet__stack *cur = NULL, *hit;
    uintptr_t addr, sp;
    int saved_errno = errno;

    /* si_code > 0: raised by the kernel for an access, not kill()ed. */
    if (si == NULL || (si->si_signo != SIGSEGV && si->si_signo != SIGBUS) || si->si_code <= 0)
        return 0;
    addr = (uintptr_t)si->si_addr;
    sp = context_sp(ucontext);
    memset(&fi, 0, sizeof fi);
    if (awaitlet__fault_info(&fi) != 0)
        cur = fi.stack;
    if (cur != NULL) {
        uintptr_t lo = (uintptr_t)LOAD(&cur->lo), map = (uintptr_t)LOAD(&cur->map);
        if (addr >= map && addr < lo && lo > map) {
            report_overflow(cur, addr, sp, 1);
            errno = saved_errno;
            return 1;
        }
        if (sp != 0 && sp < lo && !on_altstack(sp)) {
            report_overflow(cur, addr, sp, 0);
            errno = saved_errno;
            return 1;
        }
    }
    hit = awaitlet__stack_guard_at(addr);
    if (hit != NULL) {
        report_guard_hit(cur, hit, addr);
        errno = saved_errno;
        return 1;
    }
    errno = saved_errno;
    return 0;
}

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    struct sigaction *old = sig == SIGSEGV ? &old_segv : &old_bus;
    int saved_errno = errno;

    if (awaitlet_overflow_report(si, uc))
        abort();

    /* Not ours: behave as if we had never been installed. */
    if (old->sa_flags & SA_SIGINFO) {
        old->sa_sigaction(sig, si, uc);
    } else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
        old->sa_handler(sig);
    } else {
        /* Returning re-executes the faulting instruction, which now gets the
         * default action (a core dump).  SIG_IGN is treated the same: the
         * kernel does not let a synchronous fault be ignored anyway. */
        struct sigaction dfl;

        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(sig, &dfl, NULL);
    }
    errno = saved_errno;
}

static void handler_init(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &old_segv) != 0 ||
        sigaction(SIGBUS, &sa, &old_bus) != 0)
        handler_err = errno ? errno : EINVAL;
}

/* ---- the alternate signal stack, one per thread that runs tasks ------------ */

/* Runs at thread exit (pthread key destructor). */
static void thread_exit(void *unused)
{
    (void)unused;
    if (altstack != NULL) {
        stack_t cur, off;

        /* Only disable it if it is still ours: someone may have replaced it. */
        if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == altstack) {
            memset(&off, 0, sizeof off);
            off.ss_flags = SS_DISABLE;
            sigaltstack(&off, NULL);
            munmap(altstack, altstack_size);
        }
        /* else: leaking 64 KiB beats unmapping a live signal stack. */
        altstack = NULL;
    }
    overflow_ready = 0;
}

static void key_init(void)
{
    key_ok = pthread_key_create(&exit_key, thread_exit) == 0;
}

int awaitlet__overflow_init(void)
{
    stack_t cur, ss;
    size_t size = ALTSTACK_SIZE;
    long min;
    void *mem;

    if (overflow_ready)
        return 0;
    pthread_once(&handler_once, handler_init);
    if (handler_err != 0) {
        errno = handler_err;
        return -1;
    }
    if (sigaltstack(NULL, &cur) != 0)
        return -1;
    if (!(cur.ss_flags & SS_DISABLE)) {
        overflow_ready = 1;     /* someone (the app, ASan) already has one */
        return 0;
    }
    /* SIGSTKSZ is a sysconf() call on recent glibc (AVX-512 state is big). */
    min = (long)SIGSTKSZ;
    if (min > 0 && (size_t)min * 4 > size)
        size = (size_t)min * 4;
    pthread_once(&key_once, key_init);
    if (!key_ok || pthread_setspecific(exit_key, (void *)1) != 0) {
        errno = EAGAIN;
        return -1;
    }
    mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (mem == MAP_FAILED) {
        errno = EAGAIN;
        return -1;
    }
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = mem;
    ss.ss_size = size;
    ss.ss_flags = 0;
    if (sigaltstack(&ss, NULL) != 0) {
        int e = errno;
        munmap(mem, size);
        errno = e;
        return -1;
    }
    altstack = mem;
    altstack_size = size;
    overflow_ready = 1;
    return 0;
}
