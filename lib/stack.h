/*
 * stack.h -- task stacks: mmap'd, guarded, pooled per thread (internal).
 *
 * A stack is one anonymous private mapping: a PROT_NONE guard region at its
 * low end (1 MiB by default, address space only: it is never touched, so it
 * costs no memory), then the usable stack.  Creating one costs a few
 * microseconds (mmap + mprotect, and munmap at the end), so stacks of ended
 * tasks go to a per-thread pool, keyed by size and guard size, and are
 * reused; a pooled stack that was used deeper than a watermark gives the
 * pages below it back to the kernel first.
 *
 * Every stack descriptor of the process is on one registry that the
 * overflow handler (overflow.c) can walk from a signal handler, so that a
 * fault in *any* task's guard region is recognised, not only in the
 * running task's.
 */
#ifndef AWAITLET_STACK_H
#define AWAITLET_STACK_H

#include <stddef.h>
#include <stdint.h>

/* Descriptor states.  FREE: the descriptor is unused (no mapping). */
enum { AWAITLET__STACK_FREE, AWAITLET__STACK_IN_USE, AWAITLET__STACK_POOLED };

typedef struct awaitlet__stack {
    char *lo;                    /* lowest usable byte (just above the guard) */
    size_t size;                 /* usable bytes (page multiple) */
    char *map;                   /* the mapping, guard included: map + guard == lo */
    size_t guard;                /* guard bytes (page multiple; 0: none) */
    unsigned vg_id;              /* valgrind stack id, 0 when not under valgrind */
    /* Read by the fault handler, possibly on another thread: written with
     * atomic stores. */
    int state;                   /* AWAITLET__STACK_* */
    unsigned long owner_id;      /* task running on it, 0 while pooled */
    const char *owner_name;
    struct awaitlet__stack *next;     /* pool link, or spare-descriptor link */
    struct awaitlet__stack *all_next; /* registry link, never changes once set */
} awaitlet__stack;

/* Page-rounded usable size for a request (0 -> default). */
size_t awaitlet__stack_round(size_t size);

/* A stack of exactly awaitlet__stack_round(size) usable bytes, with no
 * guard (guarded == 0) or a guard region of guard_size bytes rounded up to
 * pages (0: the process default), from this thread's pool or freshly
 * mapped.  NULL with errno EINVAL (guard_size over 1 GiB, or a guard_size
 * for an unguarded stack), ENOMEM (no memory for the descriptor) or EAGAIN
 * (mmap/mprotect refused: vm.max_map_count, RLIMIT_AS). */
awaitlet__stack *awaitlet__stack_get(size_t size, int guarded, size_t guard_size);

/* Name the task now running on st, for fault reports (0/NULL: none). */
void awaitlet__stack_owner(awaitlet__stack *st, unsigned long id, const char *name);

/* Return a stack no task runs on any more: pooled, or unmapped when the pool
 * is full.  Must not be called on st itself; putting a stack twice is a
 * programming error (assert). */
void awaitlet__stack_put(awaitlet__stack *st);

/* Unmap the calling thread's pooled stacks beyond the current pool limit,
 * now (awaitlet_set_stack_pool). */
void awaitlet__stack_pool_trim(void);

/* The stack whose guard region holds address a, or NULL.  Async-signal-safe
 * (lock-free walk of the registry; descriptors are never freed). */
const awaitlet__stack *awaitlet__stack_guard_at(uintptr_t a);

/* Process-wide settings (see awaitlet.h). */
extern size_t awaitlet__default_stack_size;
extern int awaitlet__pool_max;

/* Install the overflow handler for this thread (overflow.c; idempotent,
 * cheap after the first call).  0, or -1 with errno. */
int awaitlet__overflow_init(void);

/* The stack of the task running on this thread.  Defined in task.c; must be
 * async-signal-safe (reads thread-locals only).  Returns 0 outside a task. */
struct awaitlet__fault_info {
    const awaitlet__stack *stack;
};
int awaitlet__fault_info(struct awaitlet__fault_info *fi);

#endif
