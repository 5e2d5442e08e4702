/*
 * real.c -- finding the functions the shim stands in for.
 *
 * dlsym(RTLD_NEXT) gives the next definition in the lookup order after the
 * object containing this code: libpq's PQexec, libc's poll.  That works the
 * same whether the shim is LD_PRELOADed, linked as a shared library ahead
 * of libpq, or linked statically into the executable.
 *
 * Resolution runs from a constructor, and again (as a no-op) from every
 * entry point, because our poll or getaddrinfo can be reached from another
 * library's constructor before ours ran.  pthread_once makes the lazy path
 * safe when the first calls come from several threads at once.  dlsym may
 * allocate, which is why the shim never interposes malloc.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>

#include "real.h"
#include "scope.h"

#include <pqawait.h>

struct pqawait__real_fns pqawait__real;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int resolved; /* set (release) once resolve() has run */

static void resolve(void)
{
#define PQAWAIT__RESOLVE(name) pqawait__real.name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name);
    PQAWAIT__REAL_FUNCS(PQAWAIT__RESOLVE)
#undef PQAWAIT__RESOLVE
    pqawait__scope_init();
    pqawait__hooks_init();
    __atomic_store_n(&resolved, 1, __ATOMIC_RELEASE);
}

/* Called on every wrapped call: after the constructor ran, one load. */
void pqawait__init(void)
{
    if (__builtin_expect(!__atomic_load_n(&resolved, __ATOMIC_ACQUIRE), 0))
        pthread_once(&once, resolve);
}

/* Linked from the static library, the shim's object files are pulled in
 * only to resolve the program's own references -- never libpq's, so poll
 * and getaddrinfo, or wrappers of calls libpq makes internally, would be
 * left out.  This table makes any use of the shim bring in all of it. */
__attribute__((used)) static const void *const anchor[] = {
    (const void *)poll, (const void *)getaddrinfo, (const void *)PQconnectdb,
    (const void *)PQexec, (const void *)PQputCopyData, (const void *)PQfn,
    (const void *)pqawait_cancel, (const void *)pqawait_version, (const void *)connect,
    (const void *)sigaction, (const void *)signal, (const void *)siglongjmp,
    (const void *)PQsetNoticeProcessor, (const void *)PQerrorMessage,
    (const void *)pqawait_set_interrupt_bounds,
};

__attribute__((constructor)) static void pqawait_ctor(void)
{
    pqawait__init();
}
