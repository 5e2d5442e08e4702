/*
 * server.h -- what the parts of pqawait-server share.
 *
 * pqawait-server is an HTTP/1.1 JSON service whose request handlers are
 * plain blocking libpq code (handlers.c).  In its normal mode every request
 * runs as an awaitlet task on the worker's libev loop, with a connection
 * from the worker's pqawait pool, so thousands of requests are served
 * concurrently by one thread while each handler reads like a script.  With
 * --blocking the same handlers run inline in the libev callback, one
 * request at a time, on one connection per worker: the way a libev server
 * has to use libpq without pqawait.
 *
 * Threads: --threads N runs N workers, each a thread with its own loop,
 * listening socket (SO_REUSEPORT: the kernel spreads connections) and pool.
 * The main thread only waits for SIGTERM/SIGINT and then tells every worker
 * to shut down gracefully.
 */
#ifndef PQA_SERVER_H
#define PQA_SERVER_H

#include <ev.h>
#include <libpq-fe.h>
#include <pthread.h>

#include "http.h"
#include "pqawait.h"
#include "stats.h"

struct server_config {
    char host[64];
    int port;
    const char *db;
    int pool;
    int threads;
    int blocking;
};

struct client;

struct worker {
    int id;
    struct ev_loop *loop;
    pthread_t thread;
    int lfd;
    ev_io accept_w;
    ev_timer accept_retry;   /* out of descriptors: accept again later */
    ev_async stop_w;
    ev_timer stop_poll;      /* shutting down: waits for in-flight work */
    int stopping, pool_closed;
    pqawait_pool *pool;      /* tasks mode */
    PGconn *conn;            /* --blocking: the one connection */
    struct client *clients;
    unsigned nclients;
    unsigned inflight;       /* requests parsed and not yet answered */
    struct stats st;
};

struct server {
    struct server_config cfg;
    struct worker *workers;
    int nworkers;
};

extern struct server *server;

/* worker.c */
int worker_listen(struct worker *w, int *port);
void *worker_main(void *arg);
void worker_stop(struct worker *w); /* any thread */
void worker_init(struct worker *w); /* before its thread starts */

#endif
