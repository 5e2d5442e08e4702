/*
 * gdb_target.c -- a program with suspended tasks for the gdb script's test.
 *
 * Three tasks wait in distinctively named functions; main then stops in
 * gdb_stop_here(), where tests/gdb/test-gdb.sh lists the tasks and checks
 * each backtrace reaches the function the task waits in and ends cleanly.
 */
#include <ev.h>
#include <unistd.h>

#include "awaitlet.h"

static int fds[2];

__attribute__((noinline)) void gdb_stop_here(void) { __asm__ volatile("" ::: "memory"); }

__attribute__((noinline)) static int waits_on_pipe(void)
{
    return awaitlet_io(fds[0], EV_READ, -1);
}

__attribute__((noinline)) static int sleeps_long(void)
{
    return awaitlet_sleep(60);
}

static void *reader_task(void *arg) { (void)arg; waits_on_pipe(); return NULL; }
static void *sleeper_task(void *arg) { (void)arg; sleeps_long(); return NULL; }

int main(void)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    if (pipe(fds) < 0)
        return 1;
    awaitlet_options o = { .name = "pipe-reader" };
    awaitlet_task *a = awaitlet_async_def_opts(loop, reader_task, NULL, &o);
    awaitlet_options o2 = { .name = "sleeper" };
    awaitlet_task *b = awaitlet_async_def_opts(loop, sleeper_task, NULL, &o2);
    gdb_stop_here();
    awaitlet_cancel(a);
    awaitlet_cancel(b);
    awaitlet_join(a);
    awaitlet_join(b);
    ev_loop_destroy(loop);
    return 0;
}
