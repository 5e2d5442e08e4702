/*
 * ev_libev.c -- for PQAWAIT_EV_CALLBACKS and PQAWAIT_ASYNC_MAIN
 * (ev_callbacks.c): finding libev behind the program.  Its real functions
 * (dlsym(RTLD_NEXT): the program reaches libev through its PLT and we
 * interpose ev_run & co.), its text segment (to tell libev's internal
 * watchers by their callback's address), and where its per-priority
 * pending arrays live in the opaque loop struct: libev gives no API to
 * walk the pending queue, so a probe on a scratch loop feeds known
 * watchers, finds them and checks every count; if it fails (another
 * libev), the mode says so on stderr and callbacks run plainly.
 */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

/* <elf.h> (through <link.h>) names ELF versions EV_NONE and EV_CURRENT;
 * libev has an EV_NONE of its own */
#undef EV_NONE
#undef EV_CURRENT
#include "ev_libev.h"
#include "preload.h"

struct pqawait__ev_fns pqawait__ev_next;
static pthread_once_t once = PTHREAD_ONCE_INIT;
int pqawait__ev_resolved;

uintptr_t pqawait__libev_lo, pqawait__libev_hi; /* libev's text */
/* PQAWAIT_EV_CALLBACKS or PQAWAIT_ASYNC_MAIN: the hooks do anything */
int pqawait__ev_hooks;
size_t pqawait__ev_off_pendings, pqawait__ev_off_pendingcnt; /* found by layout_probe */
int pqawait__ev_layout_ok;

static int text_of(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    uintptr_t a = *(uintptr_t *)data;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (a >= lo && a < hi) {
            pqawait__libev_lo = lo;
            pqawait__libev_hi = hi;
            return 1;
        }
    }
    return 0;
}

static void probe_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)loop, (void)revents;
    ++*(int *)w->data;
}

/* Find libev's pendings[NUMPRI] and pendingcnt[NUMPRI] in its opaque loop
 * struct (libev 4: pendings, pendingmax, pendingcnt follow each other),
 * and prove it.  Two watchers are fed at one priority and one at another,
 * so the counts read 0,1,0,2,0; the scan compares integers only, and
 * dereferences the arrays only where the counts, the capacities before
 * them (pendingmax) and the pointers before those (NULL exactly where the
 * count is 0) all fit.  Then the entries must be the watchers, in libev's
 * order with their events, and a real ev_invoke_pending must empty it. */
static int layout_probe(void)
{
    struct ev_loop *l = pqawait__ev_next.ev_loop_new(EVBACKEND_SELECT | EVFLAG_NOENV);
    if (!l)
        return 0;
    int calls = 0, ok = 0;
    ev_idle a, b, c;
    ev_idle_init(&a, probe_cb);
    ev_idle_init(&b, probe_cb);
    ev_idle_init(&c, probe_cb);
    a.data = b.data = c.data = &calls;
    ev_set_priority(&a, 1);
    ev_set_priority(&b, -1);
    ev_set_priority(&c, 1);
    pqawait__ev_next.ev_feed_event(l, &a, EV_CUSTOM);
    pqawait__ev_next.ev_feed_event(l, &b, EV_CUSTOM | EV_READ);
    pqawait__ev_next.ev_feed_event(l, &c, EV_CUSTOM | EV_WRITE);
    const int ia = 1 - EV_MINPRI, ib = -1 - EV_MINPRI;
    const size_t arrays = NUMPRI * (sizeof(void *) + sizeof(int)); /* pendings + pendingmax */
    for (size_t off = arrays; off + NUMPRI * sizeof(int) <= 512 && !ok; off += sizeof(int)) {
        const int *cnt = (const int *)((const char *)l + off);
        const int *max = cnt - NUMPRI;
        int good = (off - arrays) % sizeof(void *) == 0;
        for (int i = 0; i < NUMPRI && good; i++) {
            int want = i == ia ? 2 : i == ib ? 1 : 0;
            good = cnt[i] == want && (want ? max[i] >= want : max[i] == 0);
        }
        if (!good)
            continue;
        pending_entry *const *p = (pending_entry *const *)((const char *)l + off - arrays);
        for (int i = 0; i < NUMPRI && good; i++)
            good = (p[i] != NULL) == (cnt[i] != 0) && ((uintptr_t)p[i] % sizeof(void *)) == 0;
        if (!good)
            continue;
        if (p[ia][0].w == (ev_watcher *)&a && p[ia][0].events == EV_CUSTOM &&
            p[ia][1].w == (ev_watcher *)&c && p[ia][1].events == (EV_CUSTOM | EV_WRITE) &&
            p[ib][0].w == (ev_watcher *)&b && p[ib][0].events == (EV_CUSTOM | EV_READ) &&
            a.pending == 1 && c.pending == 2 && b.pending == 1) {
            pqawait__ev_off_pendings = off - arrays;
            pqawait__ev_off_pendingcnt = off;
            ok = 1;
        }
    }
    if (ok) {
        pqawait__ev_next.ev_invoke_pending(l);
        ok = calls == 3 && CNT(l)[ia] == 0 && CNT(l)[ib] == 0 && !a.pending && !c.pending;
    }
    ev_clear_pending(l, &a);
    ev_clear_pending(l, &b);
    ev_clear_pending(l, &c);
    pqawait__ev_next.ev_loop_destroy(l);
    return ok;
}

static void resolve(void)
{
#define NEXT(name) *(void **)&pqawait__ev_next.name = dlsym(RTLD_NEXT, #name);
    NEXT(ev_run) NEXT(ev_loop_new) NEXT(ev_default_loop) NEXT(ev_invoke_pending)
    NEXT(ev_set_invoke_pending_cb) NEXT(ev_invoke) NEXT(ev_loop_destroy) NEXT(ev_feed_event)
#undef NEXT
    if (!pqawait__ev_next.ev_run || !pqawait__ev_next.ev_loop_new || !pqawait__ev_next.ev_invoke_pending ||
        !pqawait__ev_next.ev_set_invoke_pending_cb || !pqawait__ev_next.ev_loop_destroy || !pqawait__ev_next.ev_feed_event) {
        __atomic_store_n(&pqawait__ev_resolved, 1, __ATOMIC_RELEASE);
        return;
    }
    uintptr_t a = (uintptr_t)pqawait__ev_next.ev_run;
    dl_iterate_phdr(text_of, &a);
    pqawait__ev_hooks = pqawait__ev_callbacks || pqawait__async_main;
    if (pqawait__ev_hooks) {
        pqawait__ev_layout_ok = layout_probe();
        if (!pqawait__ev_layout_ok && pqawait__ev_callbacks)
            fprintf(stderr, "pqawait: PQAWAIT_EV_CALLBACKS: this libev's pending queue is not "
                            "where libev 4 keeps it; callbacks run plainly\n");
    }
    __atomic_store_n(&pqawait__ev_resolved, 1, __ATOMIC_RELEASE);
}

void pqawait__ev_resolve_slow(void)
{
    pthread_once(&once, resolve);
}

/* Before main, on one thread (the modes are read by then: preload.c's
 * constructor comes first in this library's list): no pthread_once futex,
 * and the layout probe runs before the program can start threads. */
__attribute__((constructor)) static void ev_callbacks_ctor(void)
{
    pqawait__preload_init();
    if (!__atomic_load_n(&pqawait__ev_resolved, __ATOMIC_ACQUIRE))
        resolve();
}

struct ev_loop *pqawait__ev_default_loop(unsigned flags)
{
    pqawait__ev_init();
    return pqawait__ev_next.ev_default_loop ? pqawait__ev_next.ev_default_loop(flags) : NULL;
}
