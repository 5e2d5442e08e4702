/*
 * stack.c -- task stacks: guarded mappings, a per-thread pool, and the
 * stack-overflow handler.
 *
 * Why mmap and not malloc: a stack wants a PROT_NONE guard page below it so
 * that an overflow faults instead of silently overwriting the neighbouring
 * heap, and anonymous pages are committed lazily, so an idle task with a
 * 256 KiB stack costs only the few KiB it has touched.
 *
 * Why a pool: mmap + mprotect + munmap cost tens of microseconds, more than
 * the rest of a task's life for short tasks.  Ended tasks give their stack to
 * a pool owned by the thread (tasks never change threads, so no locking),
 * and the next task of the same size takes it back.  A pthread key's
 * destructor unmaps the pool when the thread exits.
 *
 * Why an overflow handler: without one, running off a stack is an anonymous
 * SIGSEGV.  With a per-thread alternate signal stack (the faulting stack is
 * unusable) and a process-wide SIGSEGV/SIGBUS handler we can name the task
 * before aborting; any fault that is not ours goes to whoever handled the
 * signal before us, or kills the process the default way.
 */
#include "stack.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef AWAITLET_HAVE_VALGRIND
#include <valgrind/valgrind.h>
#endif

/* ASan keeps shadow state for stack frames; a task that ended by switching
 * away never ran its epilogues, so its stack's shadow can still say
 * "poisoned".  Clear it before the memory is reused or unmapped (ASan's
 * swapcontext interceptor does the same for the same reason). */
#if defined(__SANITIZE_ADDRESS__)
#define STACK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STACK_ASAN 1
#endif
#endif
#ifdef STACK_ASAN
#include <sanitizer/asan_interface.h>
#endif

#define MIN_STACK ((size_t)16 * 1024)
#define ALTSTACK_SIZE ((size_t)64 * 1024)
/* Faults this far below the guard page still count as an overflow: a frame
 * with a big local array can step over one guard page in a single move. */
#define BELOW_GUARD ((uintptr_t)64 * 1024)

size_t awaitlet__default_stack_size = (size_t)256 * 1024;
int awaitlet__pool_max = 64;

static __thread awaitlet__stack *pool;  /* this thread's idle stacks */
static __thread int pool_len;
static __thread void *altstack;         /* the sigaltstack we mapped, if any */
static __thread size_t altstack_size;
static __thread int overflow_ready;

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;
static int key_ok;

static pthread_once_t handler_once = PTHREAD_ONCE_INIT;
static int handler_err;                 /* errno from sigaction, 0 if fine */
static struct sigaction old_segv, old_bus;

static size_t page_size(void)
{
    static size_t ps;
    size_t p = __atomic_load_n(&ps, __ATOMIC_RELAXED);

    if (p == 0) {
        long v = sysconf(_SC_PAGESIZE);
        p = v > 0 ? (size_t)v : 4096;
        __atomic_store_n(&ps, p, __ATOMIC_RELAXED);
    }
    return p;
}

size_t awaitlet__stack_round(size_t size)
{
    size_t ps = page_size();

    if (size == 0)
        size = __atomic_load_n(&awaitlet__default_stack_size, __ATOMIC_RELAXED);
    if (size < MIN_STACK)
        size = MIN_STACK;
    /* Saturate instead of wrapping: an absurd request must fail in mmap, not
     * turn into a tiny stack. */
    if (size > SIZE_MAX - ps)
        return SIZE_MAX & ~(ps - 1);
    return (size + ps - 1) & ~(ps - 1);
}

#ifdef STACK_ASAN
/* __asan_unpoison_memory_region memsets the shadow: 32 MiB of writes for a
 * 256 MiB stack, on every reuse.  Instead drop the whole shadow pages in the
 * middle with madvise (they read back as zero, "addressable") and let ASan
 * clear only the partial pages at both ends. */
static void asan_clear(void *lo, size_t size)
{
    size_t scale, off, ps = page_size();
    uintptr_t a = (uintptr_t)lo, b = a + size;
    uintptr_t sa, sb;

    __asan_get_shadow_mapping(&scale, &off);
    sa = ((a >> scale) + off + ps - 1) & ~(uintptr_t)(ps - 1);
    sb = ((b >> scale) + off) & ~(uintptr_t)(ps - 1);
    if (sb <= sa) {
        ASAN_UNPOISON_MEMORY_REGION(lo, size);
        return;
    }
    ASAN_UNPOISON_MEMORY_REGION(lo, ((sa - off) << scale) - a);
    ASAN_UNPOISON_MEMORY_REGION((void *)((sb - off) << scale), b - ((sb - off) << scale));
    if (madvise((void *)sa, sb - sa, MADV_DONTNEED) != 0)
        ASAN_UNPOISON_MEMORY_REGION((void *)((sa - off) << scale), (sb - sa) << scale);
}
#endif

static void unmap_stack(awaitlet__stack *st)
{
#ifdef AWAITLET_HAVE_VALGRIND
    if (st->vg_id != 0)
        VALGRIND_STACK_DEREGISTER(st->vg_id);
#endif
#ifdef STACK_ASAN
    asan_clear(st->lo, st->size);
#endif
    munmap(st->map, st->map_size);
    free(st);
}

/* Runs at thread exit (pthread key destructor): give back the pool and the
 * alternate signal stack.  TLS is still valid here. */
static void thread_exit(void *unused)
{
    (void)unused;
    while (pool != NULL) {
        awaitlet__stack *st = pool;
        pool = st->next;
        unmap_stack(st);
    }
    pool_len = 0;
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

/* Make sure thread_exit runs for this thread.  Setting the value again
 * from inside a destructor round is what makes a late stack_put (from
 * another key's destructor) still get cleaned up. */
static int want_exit_cleanup(void)
{
    pthread_once(&key_once, key_init);
    if (!key_ok)
        return -1;
    if (pthread_getspecific(exit_key) == NULL &&
        pthread_setspecific(exit_key, (void *)1) != 0)
        return -1;
    return 0;
}

awaitlet__stack *awaitlet__stack_get(size_t size, int guarded)
{
    size_t want = awaitlet__stack_round(size);
    size_t guard = guarded ? page_size() : 0;
    awaitlet__stack **pp, *st;
    void *map;

    guarded = guarded != 0;
    for (pp = &pool; (st = *pp) != NULL; pp = &st->next) {
        if (st->size == want && st->guarded == guarded) {
            *pp = st->next;
            pool_len--;
            st->next = NULL;
            return st;
        }
    }

    st = malloc(sizeof *st);
    if (st == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (want > SIZE_MAX - guard) {
        free(st);
        errno = EAGAIN;
        return NULL;
    }
    /* RW first, then the guard: either order leaves two kernel mappings, but
     * this way a failing mprotect (out of map entries) leaves one to undo. */
    map = mmap(NULL, want + guard, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        free(st);
        errno = EAGAIN;
        return NULL;
    }
    if (guard != 0 && mprotect(map, guard, PROT_NONE) != 0) {
        munmap(map, want + guard);
        free(st);
        errno = EAGAIN;
        return NULL;
    }
    st->map = map;
    st->map_size = want + guard;
    st->lo = (char *)map + guard;
    st->size = want;
    st->guarded = guarded;
    st->vg_id = 0;
    st->next = NULL;
#ifdef AWAITLET_HAVE_VALGRIND
    st->vg_id = VALGRIND_STACK_REGISTER((char *)st->lo, (char *)st->lo + want);
#endif
    return st;
}

void awaitlet__stack_put(awaitlet__stack *st)
{
    int max = __atomic_load_n(&awaitlet__pool_max, __ATOMIC_RELAXED);

    if (st == NULL)
        return;
    /* awaitlet_set_stack_pool may have lowered the limit: shrink lazily. */
    while (pool_len > 0 && pool_len > max) {
        awaitlet__stack *old = pool;
        pool = old->next;
        pool_len--;
        unmap_stack(old);
    }
    if (pool_len >= max || want_exit_cleanup() != 0) {
        unmap_stack(st);
        return;
    }
#ifdef STACK_ASAN
    asan_clear(st->lo, st->size);
#endif
    st->next = pool;
    pool = st;
    pool_len++;
}

/* ---- stack overflow ---------------------------------------------------- */

static char *put_str(char *p, char *end, const char *s)
{
    while (*s != '\0' && p < end)
        *p++ = *s++;
    return p;
}

static char *put_num(char *p, char *end, unsigned long long v)
{
    char tmp[24];
    int n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0 && p < end)
        *p++ = tmp[--n];
    return p;
}

/* Async-signal-safe: no stdio, no malloc, just write(2). */
static void report_overflow(const struct awaitlet__fault_info *fi)
{
    char buf[512], *p = buf, *end = buf + sizeof buf;
    size_t off = 0;

    p = put_str(p, end, "awaitlet: task #");
    p = put_num(p, end, fi->id);
    if (fi->name != NULL) {
        p = put_str(p, end, " \"");
        /* Keep room for the rest of the message whatever the name's length. */
        p = put_str(p, end - 96, fi->name);
        p = put_str(p, end, "\"");
    }
    p = put_str(p, end, " overflowed its stack (");
    p = put_num(p, end, fi->stack_size);
    p = put_str(p, end, " bytes); aborting\n");
    while (off < (size_t)(p - buf)) {
        ssize_t n = write(2, buf + off, (size_t)(p - buf) - off);
        if (n > 0)
            off += (size_t)n;
        else if (n < 0 && errno == EINTR)
            continue;
        else
            break;
    }
}

static int is_overflow(const struct awaitlet__fault_info *fi, const void *addr)
{
    uintptr_t a = (uintptr_t)addr;
    uintptr_t lo = (uintptr_t)fi->guard_lo, hi = (uintptr_t)fi->guard_hi;

    if (hi <= lo)
        return 0;               /* unguarded stack: nothing to recognise */
    lo = lo > BELOW_GUARD ? lo - BELOW_GUARD : 0;
    return a >= lo && a < hi;
}

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    struct sigaction *old = sig == SIGSEGV ? &old_segv : &old_bus;
    struct awaitlet__fault_info fi;
    int saved_errno = errno;

    memset(&fi, 0, sizeof fi);
    /* si_code > 0: raised by the kernel for this access, not kill()ed. */
    if (si != NULL && si->si_code > 0 && awaitlet__fault_info(&fi) != 0 &&
        is_overflow(&fi, si->si_addr)) {
        report_overflow(&fi);
        abort();
    }
    errno = saved_errno;

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
    if (want_exit_cleanup() != 0) {
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
