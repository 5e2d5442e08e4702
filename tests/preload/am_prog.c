/*
 * am_prog.c -- an ordinary libpq (and libev) program, built WITHOUT
 * pqawait, for the PQAWAIT_ASYNC_MAIN tests (am_same.sh runs every mode
 * plainly and with the preload and requires identical stdout and exit
 * status).  Each mode exercises one thing a program relies on:
 *
 *   ret N          return N from main; an atexit handler prints
 *   exit N         exit(N) from a nested function; atexit handler prints
 *   abort          abort(): killed by SIGABRT
 *   atexit-query   an atexit handler runs a query
 *   thread         a thread started by main runs a query
 *   fork           fork: the child queries on a new connection and exits
 *                  7; fork+exec of /bin/echo
 *   signal         SIGUSR1 (sent by a helper thread) arrives while main
 *                  waits in PQexec; its handler calls PQcancel: 57014
 *   cancel         PQcancel called by main itself on a busy connection
 *   select         select() over two LISTENing connections' sockets
 *   libev          libev timers whose first callback blocks in PQexec: the
 *                  second must not run before the first ended
 *
 * On stderr (not compared) it says whether main ran inside a task, asking
 * the runtime through dlsym (absent without the preload).
 */
#include <dlfcn.h>
#include <errno.h>
#include <ev.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <unistd.h>

static PGconn *conn_or_die(void)
{
    PGconn *c = PQconnectdb("");
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
        exit(99);
    }
    return c;
}

static void query_print(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        printf("%s -> %s\n", sql, PQgetvalue(r, 0, 0));
    else
        printf("%s -> %s %s", sql, PQresultErrorField(r, PG_DIAG_SQLSTATE),
               PQresultErrorMessage(r));
    PQclear(r);
    fflush(stdout);
}

static void report_task(const char *who)
{
    int (*in)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "awaitlet_in_context");
    fprintf(stderr, "%s in task: %d\n", who, in ? in() : 0);
}

static void bye(void)
{
    printf("atexit handler ran\n");
}

static void bye_query(void)
{
    PGconn *c = conn_or_die();
    query_print(c, "select 'from atexit'");
    report_task("atexit");
    PQfinish(c);
}

static void nested_exit(int n)
{
    printf("exiting with %d\n", n);
    exit(n);
}

static void *thread_main(void *arg)
{
    (void)arg;
    report_task("thread");
    PGconn *c = conn_or_die();
    query_print(c, "select 'from a thread'");
    PQfinish(c);
    return NULL;
}

static PGcancel *volatile sig_cancel;
static volatile sig_atomic_t sig_sent;

static void on_usr1(int sig)
{
    (void)sig;
    char err[256];
    sig_sent = PQcancel(sig_cancel, err, sizeof err); /* async-signal-safe */
}

static void *kicker(void *arg)
{
    (void)arg;
    usleep(300 * 1000);
    kill(getpid(), SIGUSR1);
    return NULL;
}

static int mode_select(void)
{
    PGconn *a = conn_or_die(), *b = conn_or_die(), *n = conn_or_die();
    PQclear(PQexec(a, "LISTEN am_a"));
    PQclear(PQexec(b, "LISTEN am_b"));
    PQclear(PQexec(n, "select pg_sleep(0.2); NOTIFY am_b, 'hello b'"));
    int fa = PQsocket(a), fb = PQsocket(b);
    for (;;) {
        fd_set rs;
        FD_ZERO(&rs);
        FD_SET(fa, &rs);
        FD_SET(fb, &rs);
        struct timeval tv = {5, 0};
        int r = select((fa > fb ? fa : fb) + 1, &rs, NULL, NULL, &tv);
        if (r < 0 && errno == EINTR)
            continue;
        printf("select -> %d, a %d, b %d\n", r, FD_ISSET(fa, &rs) != 0, FD_ISSET(fb, &rs) != 0);
        if (r <= 0)
            return 1;
        PGconn *c = FD_ISSET(fb, &rs) ? b : a;
        PQconsumeInput(c);
        PGnotify *nt = PQnotifies(c);
        if (nt) {
            printf("notification on %s: %s\n", nt->relname, nt->extra);
            PQfreemem(nt);
            break;
        }
    }
    PQfinish(a);
    PQfinish(b);
    PQfinish(n);
    return 0;
}

static PGconn *ev_conn;

static void t1_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)w, (void)revents;
    printf("timer 1 begins\n");
    query_print(ev_conn, "select pg_sleep(0.3)::text");
    printf("timer 1 ends\n");
}

static void t2_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w, (void)revents;
    printf("timer 2 runs\n");
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    report_task("main");
    const char *m = argc > 1 ? argv[1] : "ret";
    int n = argc > 2 ? atoi(argv[2]) : 0;
    if (!strcmp(m, "ret")) {
        atexit(bye);
        PGconn *c = conn_or_die();
        query_print(c, "select 'ret'");
        PQfinish(c);
        return n;
    }
    if (!strcmp(m, "exit")) {
        atexit(bye);
        PGconn *c = conn_or_die();
        query_print(c, "select 'exit'");
        nested_exit(n);
    }
    if (!strcmp(m, "abort")) {
        PGconn *c = conn_or_die();
        query_print(c, "select 'abort'");
        abort();
    }
    if (!strcmp(m, "atexit-query")) {
        atexit(bye_query);
        return 3;
    }
    if (!strcmp(m, "thread")) {
        pthread_t th;
        pthread_create(&th, NULL, thread_main, NULL);
        pthread_join(th, NULL);
        PGconn *c = conn_or_die();
        query_print(c, "select 'main after thread'");
        PQfinish(c);
        return 0;
    }
    if (!strcmp(m, "fork")) {
        PGconn *c = conn_or_die();
        query_print(c, "select 'parent before fork'");
        pid_t p = fork();
        if (p == 0) {
            PGconn *k = conn_or_die();
            query_print(k, "select 'child'");
            PQfinish(k);
            _exit(7);
        }
        int st;
        waitpid(p, &st, 0);
        printf("child exited %d\n", WEXITSTATUS(st));
        p = fork();
        if (p == 0) {
            execl("/bin/echo", "echo", "exec'd child", (char *)NULL);
            _exit(127);
        }
        waitpid(p, &st, 0);
        printf("exec child exited %d\n", WEXITSTATUS(st));
        query_print(c, "select 'parent after fork'");
        PQfinish(c);
        return 0;
    }
    if (!strcmp(m, "signal")) {
        PGconn *c = conn_or_die();
        sig_cancel = PQgetCancel(c);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_usr1;
        sigaction(SIGUSR1, &sa, NULL);
        pthread_t th;
        pthread_create(&th, NULL, kicker, NULL);
        query_print(c, "select pg_sleep(10)::text");
        pthread_join(th, NULL);
        printf("handler sent the cancel: %d\n", (int)sig_sent);
        PQfreeCancel(sig_cancel);
        PQfinish(c);
        return 0;
    }
    if (!strcmp(m, "cancel")) {
        PGconn *c = conn_or_die();
        PQsendQuery(c, "select pg_sleep(10)");
        usleep(200 * 1000);
        PGcancel *k = PQgetCancel(c);
        char err[256];
        printf("PQcancel -> %d\n", PQcancel(k, err, sizeof err));
        PQfreeCancel(k);
        PGresult *r;
        while ((r = PQgetResult(c))) {
            printf("result %s\n", PQresultErrorField(r, PG_DIAG_SQLSTATE));
            PQclear(r);
        }
        PQfinish(c);
        return 0;
    }
    if (!strcmp(m, "select"))
        return mode_select();
    if (!strcmp(m, "libev")) {
        struct ev_loop *loop = EV_DEFAULT;
        ev_conn = conn_or_die();
        ev_timer t1, t2;
        ev_timer_init(&t1, t1_cb, 0.01, 0);
        ev_timer_init(&t2, t2_cb, 0.05, 0);
        ev_timer_start(loop, &t1);
        ev_timer_start(loop, &t2);
        ev_run(loop, 0);
        PQfinish(ev_conn);
        printf("loop done\n");
        return 0;
    }
    fprintf(stderr, "unknown mode %s\n", m);
    return 2;
}
