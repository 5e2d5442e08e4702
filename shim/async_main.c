/*
 * async_main.c -- PQAWAIT_ASYNC_MAIN=1: an unmodified program's main()
 * runs as a task on libev's default loop.
 *
 * The hook is __libc_start_main, which every dynamically linked program's
 * _start calls through its GOT: preloaded, ours comes first.  It hands
 * glibc a stand-in main that starts the real one as a task and runs the
 * default loop until the process ends.  So every libpq call main makes
 * takes the cooperative path: libpq's waits become the loop's epoll waits
 * (strace shows no poll() from libpq), its host-name lookups go to a
 * worker thread, and the program's own poll/select waits go to
 * awaitlet_poll (select.c).  With one task nothing else runs meanwhile;
 * what the mode buys is the cooperative path itself -- for a program that
 * also runs libev callbacks (PQAWAIT_EV_CALLBACKS), and for checking that
 * unmodified programs behave identically on it.
 *
 * Whom it acts for: only a process whose executable or one of its
 * libraries (other than this one) is linked against libpq (DT_NEEDED
 * libpq.so.*).  LD_PRELOAD and the environment pass through exec, and
 * Debian's /usr/bin/psql is a Perl script (pg_wrapper) that execs the real
 * binary: the Perl process, a shell, a pager are left alone.
 *
 * What stays exactly as without it:
 *   - the exit status: the task calls exit(main(...)) itself, so returning
 *     from main and calling exit() both run atexit handlers, stdio flushing
 *     and destructors the same way, on the task's stack (which is never
 *     unmapped: exit does not return);
 *   - abort(), signals and their handlers (handlers run marked, signals.c;
 *     psql's SIGINT handler calls PQcancel, which in a handler is libpq's
 *     own async-signal-safe call, cancel_wrap.c);
 *   - threads main starts run outside tasks: plain libpq;
 *   - fork(): the child goes on inside main's task on its copy of the loop
 *     (the runtime calls ev_loop_fork for it); exec in a child is plain;
 *   - the stack: main's task gets RLIMIT_STACK's soft limit (8 MiB by
 *     default; 64 MiB when unlimited; at most 1 GiB), with a guard region,
 *     so a program that recursed deeply still can.
 * If main cannot be started as a task (no memory for its stack), it runs
 * plainly, after one line on stderr.
 */
#include <dlfcn.h>
#include <errno.h>
#include <elf.h>
#include <link.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "preload.h"

typedef int main_fn(int, char **, char **);
typedef int start_fn(main_fn *, int, char **, void (*)(void), void (*)(void), void (*)(void),
                     void *);

awaitlet_task *pqawait__main_task;

static main_fn *real_main;
static int main_argc;
static char **main_argv, **main_envp;

/* ---- our own code ---- */

struct range {
    uintptr_t lo, hi;
};
static struct range ours[2]; /* libawaitlet's and libpqawait's text */

static int text_of(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct range *r = data;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (r->lo >= lo && r->lo < hi) {
            r->lo = lo;
            r->hi = hi;
            return 1;
        }
    }
    return 0;
}

static void find_ours(void)
{
    ours[0].lo = (uintptr_t)awaitlet_io;
    ours[1].lo = (uintptr_t)find_ours;
    for (int i = 0; i < 2; i++)
        if (!dl_iterate_phdr(text_of, &ours[i]))
            ours[i].lo = ours[i].hi = 0;
}

static pthread_once_t ours_once = PTHREAD_ONCE_INIT;
static int ours_found;

static void find_ours_once(void)
{
    find_ours();
    __atomic_store_n(&ours_found, 1, __ATOMIC_RELEASE);
}

/* Asked for every callback the dispatcher runs: one load once known. */
int pqawait__our_code(const void *addr)
{
    if (__builtin_expect(!__atomic_load_n(&ours_found, __ATOMIC_ACQUIRE), 0))
        pthread_once(&ours_once, find_ours_once);
    uintptr_t a = (uintptr_t)addr;
    return (a >= ours[0].lo && a < ours[0].hi) || (a >= ours[1].lo && a < ours[1].hi);
}

/* ---- is this process a libpq program? ---- */

static uintptr_t dyn_ptr(uintptr_t base, ElfW(Addr) p)
{
    return p < base ? base + p : p; /* glibc relocates most of them in place */
}

static int needs(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    const char *want = data;
    uintptr_t base = info->dlpi_addr;
    if (info->dlpi_name && (strstr(info->dlpi_name, "libpqawait") || strstr(info->dlpi_name, "libawaitlet")))
        return 0; /* the shim and the runtime need libpq and libev, of course */
    for (int i = 0; i < info->dlpi_phnum; i++) {
        if (info->dlpi_phdr[i].p_type != PT_DYNAMIC)
            continue;
        const ElfW(Dyn) *dyn = (const ElfW(Dyn) *)(base + info->dlpi_phdr[i].p_vaddr);
        const char *strtab = NULL;
        for (const ElfW(Dyn) *d = dyn; d->d_tag != DT_NULL; d++)
            if (d->d_tag == DT_STRTAB)
                strtab = (const char *)dyn_ptr(base, d->d_un.d_ptr);
        if (!strtab)
            return 0;
        for (const ElfW(Dyn) *d = dyn; d->d_tag != DT_NULL; d++)
            if (d->d_tag == DT_NEEDED && strncmp(strtab + d->d_un.d_val, want, strlen(want)) == 0)
                return 1;
    }
    return 0;
}

int pqawait__process_needs(const char *soname_prefix)
{
    return dl_iterate_phdr(needs, (void *)soname_prefix) != 0;
}

/* ---- main as a task ---- */

static size_t main_stack(void)
{
    struct rlimit rl;
    size_t sz = 8u << 20;
    if (getrlimit(RLIMIT_STACK, &rl) == 0) {
        if (rl.rlim_cur == RLIM_INFINITY)
            sz = 64u << 20;
        else if (rl.rlim_cur > (16u << 10))
            sz = rl.rlim_cur > (1u << 30) ? (1u << 30) : (size_t)rl.rlim_cur;
    }
    return sz;
}

static void *main_task(void *unused)
{
    (void)unused;
    exit(real_main(main_argc, main_argv, main_envp)); /* atexit handlers run here, as for exit() */
}

static int async_main(int argc, char **argv, char **envp)
{
    main_argc = argc;
    main_argv = argv;
    main_envp = envp;
    struct ev_loop *loop = pqawait__ev_default_loop(0);
    awaitlet_options o = {.stack_size = main_stack(), .name = "main"};
    awaitlet_task *t = loop ? awaitlet_async_def_opts(loop, main_task, NULL, &o) : NULL;
    if (!t) {
        fprintf(stderr, "pqawait: PQAWAIT_ASYNC_MAIN: main cannot run as a task (%s); it runs plainly\n",
                loop ? strerror(errno) : "no libev default loop");
        return real_main(argc, argv, envp);
    }
    pqawait__main_task = t;
    pqawait__stats_loop(loop);
    /* Runs the loop until main's task ends, which it never does: it calls
     * exit().  A join that fails means nothing can ever wake main. */
    void *r;
    if (awaitlet_join_ex(t, &r) < 0)
        fprintf(stderr, "pqawait: PQAWAIT_ASYNC_MAIN: main's task can never resume (%s)\n",
                strerror(errno));
    abort();
}

PQAWAIT_EXPORT int __libc_start_main(main_fn *main, int argc, char **argv, void (*init)(void),
                                     void (*fini)(void), void (*rtld_fini)(void), void *stack_end)
{
    start_fn *real = (start_fn *)dlsym(RTLD_NEXT, "__libc_start_main");
    if (!real)
        abort(); /* no libc to start: nothing sane is left */
    pqawait__preload_init();
    if (pqawait__async_main && pqawait__process_needs("libpq.so")) {
        real_main = main;
        main = async_main;
    }
    return real(main, argc, argv, init, fini, rtld_fini, stack_end);
}
