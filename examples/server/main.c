/*
 * main.c -- pqawait-server: command line, start-up, signals, shutdown.
 *
 *   pqawait-server --listen 127.0.0.1:PORT --db CONNINFO [--pool N]
 *                  [--threads N] [--init] [--blocking]
 *
 * --init creates and seeds the schema (items 1..10000 with qty 100 each,
 * orders) and exits.  Otherwise the server listens (PORT 0: a free port),
 * prints "listening on HOST:PORT" once every worker is ready, and serves
 * until SIGTERM or SIGINT: then it stops accepting, finishes the requests
 * it has read, closes its pools and exits 0.
 *
 * The signals are blocked in every thread and taken by the main thread with
 * sigwaitinfo, so no handler ever runs on a task's stack and the workers
 * hear about it through their loops (ev_async).
 */
#include "server.h"
#include "handlers.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

struct server *server;

static void usage(void)
{
    fprintf(stderr,
            "usage: pqawait-server --listen HOST:PORT --db CONNINFO [--pool N] [--threads N]\n"
            "                      [--init] [--blocking]\n"
            "  --pool N      connections per worker's pool (default 10)\n"
            "  --threads N   workers, each a loop, a listener (SO_REUSEPORT) and a pool\n"
            "  --init        create and seed the schema, then exit\n"
            "  --blocking    no tasks: handlers run inline, one request at a time per worker\n");
    exit(2);
}

static int int_arg(const char *s, int lo, int hi)
{
    char *e;
    long v = strtol(s, &e, 10);
    if (!*s || *e || v < lo || v > hi)
        usage();
    return (int)v;
}

/* Thousands of client connections need more than the usual 1024. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    static struct server srv;
    server = &srv;
    struct server_config *c = &srv.cfg;
    const char *listen_at = NULL;
    int init = 0;
    c->pool = 10;
    c->threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--listen") && i + 1 < argc)
            listen_at = argv[++i];
        else if (!strcmp(a, "--db") && i + 1 < argc)
            c->db = argv[++i];
        else if (!strcmp(a, "--pool") && i + 1 < argc)
            c->pool = int_arg(argv[++i], 1, 1000);
        else if (!strcmp(a, "--threads") && i + 1 < argc)
            c->threads = int_arg(argv[++i], 1, 256);
        else if (!strcmp(a, "--init"))
            init = 1;
        else if (!strcmp(a, "--blocking"))
            c->blocking = 1;
        else
            usage();
    }
    if (!c->db)
        usage();
    if (init)
        return init_schema(c->db) == 0 ? 0 : 1;
    if (!listen_at)
        usage();
    const char *colon = strrchr(listen_at, ':');
    if (!colon || (size_t)(colon - listen_at) >= sizeof c->host)
        usage();
    memcpy(c->host, listen_at, (size_t)(colon - listen_at));
    c->port = int_arg(colon + 1, 0, 65535);
    raise_nofile();

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* inherited by every worker */
    signal(SIGPIPE, SIG_IGN); /* a peer that went away: send() says EPIPE */

    srv.nworkers = c->threads;
    srv.workers = calloc((size_t)c->threads, sizeof *srv.workers);
    if (!srv.workers)
        return 1;
    int port = c->port;
    for (int i = 0; i < c->threads; i++) {
        struct worker *w = &srv.workers[i];
        w->id = i;
        w->lfd = -1;
        w->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
        if (!w->loop || worker_listen(w, &port) < 0) {
            fprintf(stderr, "pqawait-server: listen on %s:%d: %s\n", c->host, port,
                    strerror(errno));
            return 1;
        }
        worker_init(w);
    }
    for (int i = 0; i < c->threads; i++)
        if (pthread_create(&srv.workers[i].thread, NULL, worker_main, &srv.workers[i]) != 0) {
            fprintf(stderr, "pqawait-server: cannot start a thread\n");
            return 1;
        }
    printf("listening on %s:%d (%s, %d thread%s, pool %d)\n", c->host, port,
           c->blocking ? "blocking" : "tasks", c->threads, c->threads == 1 ? "" : "s", c->pool);
    fflush(stdout);

    int sig;
    do {
        sig = sigwaitinfo(&sigs, NULL);
    } while (sig < 0 && errno == EINTR);
    fprintf(stderr, "pqawait-server: %s: finishing in-flight requests\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM");
    __atomic_store_n(&stats_stopping, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < c->threads; i++)
        worker_stop(&srv.workers[i]);
    int rc = 0;
    for (int i = 0; i < c->threads; i++) {
        void *r;
        pthread_join(srv.workers[i].thread, &r);
        rc |= r != NULL;
        ev_loop_destroy(srv.workers[i].loop); /* its thread closed it for awaitlet */
    }
    fprintf(stderr, "pqawait-server: stopped\n");
    free(srv.workers);
    return rc;
}
