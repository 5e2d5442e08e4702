/*
 * preload.c -- the preload modes, read from the environment once.
 *
 *   PQAWAIT_ASYNC_MAIN=1    main() runs as a task (async_main.c)
 *   PQAWAIT_EV_CALLBACKS=1  every libev watcher callback of the program
 *                           runs as a task (ev_callbacks.c)
 *   PQAWAIT_STATS=1         one statistics line on stderr at exit (stats.c)
 *
 * Read once, before main, by a constructor: a program that changes its
 * environment later (setenv, or a child's exec with another environment)
 * changes nothing in this process.  A value other than exactly "0" or "1"
 * (empty included) is a mistake worth one line on stderr naming the
 * variable; it is treated as off, so a typo never switches a mode on.  The
 * line comes from processes linked against libpq or libev only: the
 * environment passes through every exec (a shell, Debian's Perl
 * pg_wrapper in front of psql), and one line is enough.
 * With none of them on, the preloaded library changes nothing: the hooks
 * below test one global each and go straight to the real functions.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pqawait.h>

#include "preload.h"

int pqawait__async_main;
int pqawait__ev_callbacks;
int pqawait__stats_on;

static int flag(const char *name)
{
    const char *v = getenv(name);
    if (!v || strcmp(v, "0") == 0)
        return 0;
    if (strcmp(v, "1") == 0)
        return 1;
    /* said once, by the process it is meant for: not by the shell or the
     * Perl pg_wrapper an exec chain passes the environment through */
    if (pqawait__process_needs("libpq.so") || pqawait__process_needs("libev.so"))
        fprintf(stderr, "pqawait: %s=\"%.40s\" is neither 0 nor 1; treated as 0 (off)\n", name, v);
    return 0;
}

void pqawait__preload_init(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    pqawait__async_main = flag("PQAWAIT_ASYNC_MAIN");
    pqawait__ev_callbacks = flag("PQAWAIT_EV_CALLBACKS");
    if (flag("PQAWAIT_STATS"))
        pqawait_stats_enable(1);
}

/* Before any program constructor could start a task (ours run first: the
 * executable depends on us, or we are preloaded). */
__attribute__((constructor)) static void preload_ctor(void)
{
    pqawait__preload_init();
}
