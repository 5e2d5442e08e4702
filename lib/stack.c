/*
 * stack.c -- task stacks: guarded mappings, a per-thread pool, the release
 * of deep stacks' pages, and the registry the overflow handler reads.
 *
 * Why mmap and not malloc: a stack wants a PROT_NONE guard below it so that
 * an overflow faults instead of silently overwriting whatever lies below,
 * and anonymous pages are committed lazily, so an idle task with a 256 KiB
 * stack costs only the few KiB it has touched.
 *
 * Why a guard *region*, 1 MiB by default, and not a page: a function with a
 * large local array moves the stack pointer by the whole frame at once and
 * first touches memory at its bottom.  With one guard page, a 72 KiB frame
 * in a 64 KiB stack lands in the stack mapped below -- another task's --
 * and corrupts it silently.  Stacks are mapped next to each other, so the
 * guard must be at least as large as the largest frame to catch.  Guard
 * bytes are address space only (PROT_NONE, MAP_NORESERVE, never touched: no
 * memory, no commit charge, no page tables), and a stack plus its guard is
 * two kernel mappings whatever the guard's size.  1 MiB is the gap Linux
 * keeps below the main thread's stack since Stack Clash (stack_guard_gap);
 * frames beyond it are caught by -fstack-clash-protection (see awaitlet.h).
 * What it costs: VmSize (1 MiB per task: 32 GiB for 32k tasks) and
 * RLIMIT_AS headroom, which counts address space.
 *
 * Why a pool: mmap + mprotect + munmap cost microseconds, more than the rest
 * of a short task's life.  Ended tasks give their stack to a pool owned by
 * the thread (tasks never change threads, so no locking), and the next task
 * of the same size and guard takes it back.  A pthread key's destructor
 * unmaps the pool when the thread exits.
 *
 * Why a watermark (as Tarantool's fibers do): a pooled stack keeps every
 * page its last task touched, so a few deep tasks would pin their peak
 * memory in the pool for good.  When a stack goes back to the pool we look
 * at the page just below the watermark (64 KiB below the top): if anything
 * was written there, the task went deeper, and the pages below the
 * watermark are given back with MADV_DONTNEED (not MADV_FREE: DONTNEED
 * makes them read as zero again at once, which is what the check relies on,
 * and drops them from RSS at once).  Shallow tasks -- nearly all of them:
 * libpq needs 5-15 KiB -- cost no system call.  The check can miss a task
 * whose only frame below the watermark spans that whole page without
 * writing to it; its pages stay until the stack is reused deeper or
 * unmapped.
 *
 * Why a registry: the overflow handler must recognise a fault in any
 * stack's guard, not just the running task's (a wild pointer, or another
 * task's frame that jumped past its own guard).  Every descriptor is on a
 * push-only list that a signal handler can walk without locks; descriptors
 * are never freed, only recycled, so the walk never reads freed memory.
 */
#include "stack.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "awaitlet.h"

#ifdef AWAITLET_HAVE_VALGRIND
#include <valgrind/memcheck.h>
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
#define MAX_GUARD ((size_t)1 << 30)
#define DEFAULT_GUARD ((size_t)1 << 20)
/* A pooled stack keeps at most this much of its top resident. */
#define WATERMARK ((size_t)64 * 1024)

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

size_t awaitlet__default_stack_size = (size_t)256 * 1024;
int awaitlet__pool_max = 64;
static size_t default_guard = DEFAULT_GUARD;

static __thread awaitlet__stack *pool;  /* this thread's idle stacks */
static __thread int pool_len;

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;
static int key_ok;

/* The registry: every descriptor ever made (push-only, lock-free to read),
 * the unused ones among them (under reg_lock), and the address range all
 * mappings ever fell in (a cheap first test for the fault handler). */
static awaitlet__stack *all_stacks;
static awaitlet__stack *spare;
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t reg_min = UINTPTR_MAX, reg_max;

static size_t page_size(void)
{
    static size_t ps;
    size_t p = LOAD(&ps);

    if (p == 0) {
        long v = sysconf(_SC_PAGESIZE);
        p = v > 0 ? (size_t)v : 4096;
        STORE(&ps, p);
    }
    return p;
}

/* Round up to whole pages, saturating instead of wrapping: an absurd
 * request must fail in mmap, not turn into a tiny one. */
static size_t page_round(size_t size)
{
    size_t ps = page_size();

    if (size > SIZE_MAX - ps)
        return SIZE_MAX & ~(ps - 1);
    return (size + ps - 1) & ~(ps - 1);
}

size_t awaitlet__stack_round(size_t size)
{
    if (size == 0)
        size = LOAD(&awaitlet__default_stack_size);
    if (size < MIN_STACK)
        size = MIN_STACK;
    return page_round(size);
}

int awaitlet_set_default_guard_size(size_t bytes)
{
    if (bytes == 0 || bytes > MAX_GUARD) {
        errno = EINVAL;
        return -1;
    }
    STORE(&default_guard, page_round(bytes));
    return 0;
}

/* ---- the registry ---------------------------------------------------------- */

/* A descriptor for a new mapping: a spare one, or a new one pushed on the
 * registry.  Published (state IN_USE) by the caller once filled in. */
static awaitlet__stack *desc_get(void)
{
    awaitlet__stack *st;

    pthread_mutex_lock(&reg_lock);
    st = spare;
    if (st != NULL) {
        spare = st->next;
    } else if ((st = calloc(1, sizeof *st)) != NULL) {
        st->all_next = all_stacks;
        __atomic_store_n(&all_stacks, st, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&reg_lock);
    if (st != NULL)
        st->next = NULL;
    return st;
}

static void desc_put(awaitlet__stack *st)
{
    assert(LOAD(&st->state) == AWAITLET__STACK_FREE);
    pthread_mutex_lock(&reg_lock);
    st->next = spare;
    spare = st;
    pthread_mutex_unlock(&reg_lock);
}

static void reg_cover(uintptr_t lo, uintptr_t hi)
{
    pthread_mutex_lock(&reg_lock);
    if (lo < reg_min)
        STORE(&reg_min, lo);
    if (hi > reg_max)
        STORE(&reg_max, hi);
    pthread_mutex_unlock(&reg_lock);
}

const awaitlet__stack *awaitlet__stack_guard_at(uintptr_t a)
{
    const awaitlet__stack *st;

    if (a < LOAD(&reg_min) || a >= LOAD(&reg_max))
        return NULL;
    for (st = __atomic_load_n(&all_stacks, __ATOMIC_ACQUIRE); st != NULL; st = st->all_next) {
        uintptr_t map, guard;

        if (__atomic_load_n(&st->state, __ATOMIC_ACQUIRE) == AWAITLET__STACK_FREE)
            continue;
        map = (uintptr_t)LOAD(&st->map);
        guard = LOAD(&st->guard);
        if (a >= map && a - map < guard)
            return st;
    }
    return NULL;
}

/* ---- mapping and unmapping --------------------------------------------------- */

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
    assert(LOAD(&st->state) != AWAITLET__STACK_FREE);
#ifdef AWAITLET_HAVE_VALGRIND
    if (st->vg_id != 0)
        VALGRIND_STACK_DEREGISTER(st->vg_id);
#endif
#ifdef STACK_ASAN
    asan_clear(st->lo, st->size);
#endif
    /* Unpublish before the address range can be reused by anyone. */
    __atomic_store_n(&st->state, AWAITLET__STACK_FREE, __ATOMIC_RELEASE);
    munmap(st->map, st->guard + st->size);
    desc_put(st);
}

static void trim(int max);

static awaitlet__stack *map_stack(size_t size, size_t guard)
{
    awaitlet__stack *st;
    char *map;

    if (size > SIZE_MAX - guard) {
        errno = EAGAIN;
        return NULL;
    }
    /* The whole range PROT_NONE first, then the stack part read-write: the
     * guard is never writable, so even with strict overcommit
     * (vm.overcommit_memory=2, which ignores MAP_NORESERVE) it is not
     * charged.  Either order leaves two kernel mappings.  MAP_STACK keeps
     * transparent huge pages off the stack (Linux >= 6.7). */
    for (;;) {
        map = mmap(NULL, guard + size, guard != 0 ? PROT_NONE : PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
        if (map != MAP_FAILED &&
            (guard == 0 || mprotect(map + guard, size, PROT_READ | PROT_WRITE) == 0))
            break;
        if (map != MAP_FAILED)
            munmap(map, guard + size);
        /* Out of address space (RLIMIT_AS) or mappings (vm.max_map_count):
         * idle pooled stacks of other sizes must not be what refuses a new
         * task.  Give them back and try once more. */
        if (pool_len == 0) {
            errno = EAGAIN;
            return NULL;
        }
        trim(0);
    }
    st = desc_get();
    if (st == NULL) {
        munmap(map, guard + size);
        errno = ENOMEM;
        return NULL;
    }
    reg_cover((uintptr_t)map, (uintptr_t)map + guard + size);
    STORE(&st->map, map);
    STORE(&st->guard, guard);
    STORE(&st->lo, map + guard);
    STORE(&st->size, size);
    STORE(&st->owner_id, 0UL);
    STORE(&st->owner_name, (const char *)NULL);
    st->vg_id = 0;
#ifdef AWAITLET_HAVE_VALGRIND
    /* valgrind.h: "start is the lowest addressable stack byte, end is the
     * highest addressable stack byte" -- inclusive, hence the - 1. */
    st->vg_id = VALGRIND_STACK_REGISTER(st->lo, st->lo + size - 1);
#endif
    __atomic_store_n(&st->state, AWAITLET__STACK_IN_USE, __ATOMIC_RELEASE);
    return st;
}

/* ---- the pool ------------------------------------------------------------------ */

/* Runs at thread exit (pthread key destructor): give back the pool.  TLS is
 * still valid here. */
static void thread_exit(void *unused)
{
    (void)unused;
    while (pool != NULL) {
        awaitlet__stack *st = pool;
        pool = st->next;
        unmap_stack(st);
    }
    pool_len = 0;
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

awaitlet__stack *awaitlet__stack_get(size_t size, int guarded, size_t guard_size)
{
    size_t want = awaitlet__stack_round(size);
    size_t guard = 0;
    awaitlet__stack **pp, *st;

    if (guard_size > MAX_GUARD || (!guarded && guard_size != 0)) {
        errno = EINVAL;
        return NULL;
    }
    if (guarded)
        guard = guard_size != 0 ? page_round(guard_size) : LOAD(&default_guard);
    for (pp = &pool; (st = *pp) != NULL; pp = &st->next) {
        if (st->size == want && st->guard == guard) {
            assert(LOAD(&st->state) == AWAITLET__STACK_POOLED);
            *pp = st->next;
            pool_len--;
            st->next = NULL;
            __atomic_store_n(&st->state, AWAITLET__STACK_IN_USE, __ATOMIC_RELEASE);
            return st;
        }
    }
    return map_stack(want, guard);
}

void awaitlet__stack_owner(awaitlet__stack *st, unsigned long id, const char *name)
{
    assert(LOAD(&st->state) == AWAITLET__STACK_IN_USE);
    STORE(&st->owner_name, name);
    STORE(&st->owner_id, id);
}

/* 1 if the page [p, p + page) holds a nonzero byte. */
static int page_written(const char *p)
{
    const uint64_t *w = (const uint64_t *)(const void *)p;
    size_t i, n = page_size() / sizeof *w;

    for (i = 0; i < n; i += 8) {
        if ((w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] |
             w[i + 7]) != 0)
            return 1;
    }
    return 0;
}

/* Give back the pages below the watermark if the task that just ended used
 * them (see the top of the file).  The probe page is the one right below the
 * watermark; it is dropped too, so it reads as zero until a deep task
 * writes it again. */
static void release_deep(awaitlet__stack *st)
{
    size_t ps = page_size();
    char *mark;

    if (st->size < WATERMARK + ps)
        return;
    mark = st->lo + st->size - WATERMARK;
#ifdef AWAITLET_HAVE_VALGRIND
    /* Memcheck marks a stack below its last stack pointer inaccessible; we
     * only read the bytes to see whether anything was written. */
    (void)VALGRIND_MAKE_MEM_DEFINED(mark - ps, ps);
#endif
    if (!page_written(mark - ps))
        return;
    /* A hint: if it fails, the pages merely stay. */
    (void)madvise(st->lo, (size_t)(mark - st->lo), MADV_DONTNEED);
}

static int running_on(const awaitlet__stack *st)
{
    char here;
    uintptr_t a = (uintptr_t)&here;
    return a >= (uintptr_t)st->lo && a - (uintptr_t)st->lo < st->size;
}

/* Unmap pooled stacks beyond the limit. */
static void trim(int max)
{
    while (pool_len > 0 && pool_len > max) {
        awaitlet__stack *old = pool;
        pool = old->next;
        pool_len--;
        unmap_stack(old);
    }
}

void awaitlet__stack_put(awaitlet__stack *st)
{
    int max = LOAD(&awaitlet__pool_max);

    if (st == NULL)
        return;
    /* Putting a stack twice, or one from the pool, is a bookkeeping bug. */
    assert(LOAD(&st->state) == AWAITLET__STACK_IN_USE);
    /* A task cannot give back the stack it is running on. */
    assert(!running_on(st));
    STORE(&st->owner_id, 0UL);
    STORE(&st->owner_name, (const char *)NULL);
    /* awaitlet_set_stack_pool may have been lowered on another thread. */
    trim(max);
    if (pool_len >= max || want_exit_cleanup() != 0) {
        unmap_stack(st);
        return;
    }
#ifdef STACK_ASAN
    asan_clear(st->lo, st->size);
#endif
    release_deep(st);
    __atomic_store_n(&st->state, AWAITLET__STACK_POOLED, __ATOMIC_RELEASE);
    st->next = pool;
    pool = st;
    pool_len++;
}

void awaitlet__stack_pool_trim(void)
{
    trim(LOAD(&awaitlet__pool_max));
}
