/*
 * info.c -- what a program can ask the shim about itself.
 *
 * pqawait_interposed exists because interposition fails silently: link
 * libpq ahead of libpqawait, load libpq with RTLD_LOCAL|RTLD_DEEPBIND, or
 * link statically, and libpq's calls never reach the shim -- everything
 * still works, it just blocks the loop.  A program (or a test) can check
 * once at start-up instead of finding out under load.  Two things must
 * hold: the program's own calls reach the shim (the process-wide
 * definitions of PQexec, poll and getaddrinfo are ours), and so do the
 * calls libpq makes itself -- read from each loaded libpq's relocations
 * (relocs.c).
 */
#include <dlfcn.h>
#include <link.h>

#include <awaitlet.h>

#include "real.h"
#include "scope.h"

#include <pqawait.h>

#ifndef PQAWAIT_VERSION_STRING
#define PQAWAIT_VERSION_STRING "unknown"
#endif

PQAWAIT_EXPORT const char *pqawait_version(void)
{
    return PQAWAIT_VERSION_STRING;
}

PQAWAIT_EXPORT int pqawait_in_scope(void)
{
    return pqawait__current() != NULL && !awaitlet_in_signal_handler();
}

struct find_obj {
    const void *base;
    int index, found;
};

static int find_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct find_obj *f = data;
    if ((const void *)info->dlpi_addr == f->base) {
        f->found = 1;
        return 1;
    }
    f->index++;
    return 0;
}

/* Position of the object loaded at `base` in the lookup order; -1: none. */
static int load_index(const void *base)
{
    struct find_obj f = { base, 0, 0 };
    dl_iterate_phdr(find_cb, &f);
    return f.found ? f.index : -1;
}

/* Whether libpq's references to `name` reach this object: the process-wide
 * definition is ours, or belongs to an object ahead of ours that forwards
 * with RTLD_NEXT (a sanitizer's interceptors, say). */
static int reaches_us(const char *name, const Dl_info *self, int strict)
{
    Dl_info info;
    void *p = dlsym(RTLD_DEFAULT, name);
    if (!p || !dladdr(p, &info))
        return 0;
    if (info.dli_fbase == self->dli_fbase)
        return 1;
    if (strict)
        return 0;
    struct link_map *lm;
    Dl_info tmp;
    int ours = -1, theirs = -1;
    if (dladdr1((void *)pqawait_interposed, &tmp, (void **)&lm, RTLD_DL_LINKMAP) && lm)
        ours = load_index((const void *)lm->l_addr);
    if (dladdr1(p, &tmp, (void **)&lm, RTLD_DL_LINKMAP) && lm)
        theirs = load_index((const void *)lm->l_addr);
    return ours >= 0 && theirs >= 0 && theirs < ours;
}

PQAWAIT_EXPORT int pqawait_interposed(void)
{
    Dl_info self;
    if (!dladdr((void *)pqawait_interposed, &self))
        return 0;
    return reaches_us("PQexec", &self, 1) && reaches_us("poll", &self, 0) &&
           reaches_us("getaddrinfo", &self, 0) && pqawait__libpq_bound();
}
