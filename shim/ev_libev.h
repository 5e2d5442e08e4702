/*
 * ev_libev.h -- libev as found behind the program, for ev_callbacks.c:
 * its real functions, its text, and where its pending queue lives in the
 * opaque loop struct (ev_libev.c finds them).
 */
#ifndef PQAWAIT_EV_LIBEV_H
#define PQAWAIT_EV_LIBEV_H

#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#define NUMPRI (EV_MAXPRI - EV_MINPRI + 1)

/* libev's own pending entry (ANPENDING). */
typedef struct {
    ev_watcher *w;
    int events;
} pending_entry;

/* libev's functions past our interposers (dlsym(RTLD_NEXT)). */
struct pqawait__ev_fns {
    int (*ev_run)(struct ev_loop *, int);
    struct ev_loop *(*ev_loop_new)(unsigned);
    struct ev_loop *(*ev_default_loop)(unsigned);
    void (*ev_invoke_pending)(struct ev_loop *);
    void (*ev_set_invoke_pending_cb)(struct ev_loop *, ev_loop_callback);
    void (*ev_invoke)(struct ev_loop *, void *, int);
    void (*ev_loop_destroy)(struct ev_loop *);
    void (*ev_feed_event)(struct ev_loop *, void *, int);
};
extern struct pqawait__ev_fns pqawait__ev_next;

extern uintptr_t pqawait__libev_lo, pqawait__libev_hi; /* libev's text */
/* PQAWAIT_EV_CALLBACKS or PQAWAIT_ASYNC_MAIN: the hooks do anything */
extern int pqawait__ev_hooks;
extern size_t pqawait__ev_off_pendings, pqawait__ev_off_pendingcnt; /* found by the layout probe */
extern int pqawait__ev_layout_ok;

#define PEND(loop) ((pending_entry **)((char *)(loop) + pqawait__ev_off_pendings))
#define CNT(loop) ((int *)((char *)(loop) + pqawait__ev_off_pendingcnt))

/* Resolve and probe once (the constructor normally did): one load after. */
extern int pqawait__ev_resolved;
void pqawait__ev_resolve_slow(void);
static inline void pqawait__ev_init(void)
{
    if (__builtin_expect(!__atomic_load_n(&pqawait__ev_resolved, __ATOMIC_ACQUIRE), 0))
        pqawait__ev_resolve_slow();
}

#endif
