/*
 * stack.h -- task stacks: mmap'd, guarded, pooled per thread (internal).
 *
 * A stack is an anonymous private mapping with a PROT_NONE guard page at its
 * low end (unless unguarded), registered with valgrind while it exists.
 * Creating one costs tens of microseconds (mmap + mprotect), so stacks of
 * ended tasks go to a per-thread pool, keyed by size, and are reused.
 * The overflow handler (a per-thread sigaltstack plus a process-wide
 * SIGSEGV/SIGBUS handler that chains to the previous one) turns a fault in
 * the running task's guard page into a message naming the task, then abort().
 */
#ifndef AWAITLET_STACK_H
#define AWAITLET_STACK_H

#include <stddef.h>

typedef struct awaitlet__stack {
    void *lo;                    /* lowest usable byte (just above the guard) */
    size_t size;                 /* usable bytes (page multiple) */
    void *map;                   /* the whole mapping, guard included */
    size_t map_size;
    int guarded;
    unsigned vg_id;              /* valgrind stack id, 0 when not under valgrind */
    struct awaitlet__stack *next;/* pool link */
} awaitlet__stack;

/* Page-rounded usable size for a request (0 -> default). */
size_t awaitlet__stack_round(size_t size);

/* A stack of exactly awaitlet__stack_round(size) usable bytes, from this
 * thread's pool or freshly mapped.  NULL with errno ENOMEM (no memory for the
 * descriptor) or EAGAIN (mmap/mprotect refused: vm.max_map_count, RLIMIT_AS). */
awaitlet__stack *awaitlet__stack_get(size_t size, int guarded);

/* Return a stack no task runs on any more: pooled, or unmapped when the pool
 * is full. */
void awaitlet__stack_put(awaitlet__stack *st);

/* Process-wide settings (see awaitlet.h). */
extern size_t awaitlet__default_stack_size;
extern int awaitlet__pool_max;

/* Install the overflow handler for this thread (idempotent, cheap after the
 * first call).  0, or -1 with errno. */
int awaitlet__overflow_init(void);

/* What the overflow handler needs to know about the running task.  Defined in
 * task.c; must be async-signal-safe (reads thread-locals only).  Returns 0
 * outside a task. */
struct awaitlet__fault_info {
    const char *guard_lo, *guard_hi; /* the guard page range; empty if none */
    size_t stack_size;
    const char *name;                /* may be NULL */
    unsigned long id;                /* task serial number */
};
int awaitlet__fault_info(struct awaitlet__fault_info *fi);

#endif
