/*
 * worker.c -- one thread's loop: accepting, reading and parsing requests,
 * running each as a task (or inline with --blocking), answering in order,
 * and shutting down gracefully.
 *
 * A client connection is read by a plain libev callback.  Every complete
 * request gets a slot at the tail of the connection's queue and, in tasks
 * mode, a task of its own that runs the handler with a pooled connection;
 * pipelined requests therefore run concurrently.  Answers go out strictly
 * in request order: a finished slot waits until every slot before it is
 * finished, then the front of the queue is written.  At most MAX_PIPELINE
 * requests of one connection are in flight; beyond that the connection is
 * not read until answers went out (back-pressure instead of memory).
 *
 * A rejected request (400, 413, ...) is answered after the ones before it
 * and the connection is closed: its bytes cannot be trusted to be in step.
 * A request with "Connection: close" (or HTTP/1.0 without keep-alive) is
 * the last one read: what the client sent after it never runs, because it
 * would never be answered (a take committed without its answer).
 *
 * Shutdown (worker_stop, from the main thread through an ev_async): stop
 * accepting and close the listening socket, stop reading every connection,
 * let the requests already read finish and be answered (all of them; the
 * last one's answer says Connection: close), close the connections as they
 * drain, then close the pool and leave the loop once
 * the pool's tasks have ended.
 *
 * Where a request task suspends: in pqawait_pool_acquire and inside the
 * handler's libpq calls -- nowhere in this file's bookkeeping, which runs
 * between those calls or in libev callbacks.
 */
#include "server.h"
#include "handlers.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "awaitlet.h"

#define MAX_PIPELINE 64
#define READ_CHUNK 16384
#define IDLE_TIMEOUT 60.0   /* a connection with nothing in flight */

struct req {
    struct client *cl;
    struct http_request rq;
    int status;             /* 0 until answered */
    int reject;             /* a parse error: answer, then close */
    struct sbuf body;
    const char *allow;
    unsigned long long t0;
    struct req *next;
};

struct client {
    struct worker *w;
    int fd;
    ev_io rio, wio;
    ev_timer idle;
    char *in;
    size_t in_len, in_cap;
    struct req *head, *tail;
    unsigned nreq;
    struct sbuf out;
    size_t out_off;
    int closing;            /* read no more; close once drained */
    int eof;                /* the peer sent all it will send */
    int dead;               /* fd closed; freed when nothing refers to it */
    int busy;               /* being parsed: a callback up the stack uses it */
    struct client *prev, *next;
};

static void client_flush(struct client *cl);

/* ---- clients ----------------------------------------------------------------------- */

static void client_free_if_done(struct client *cl)
{
    if (!cl->dead || cl->nreq || cl->busy)
        return;
    free(cl->in);
    sb_free(&cl->out);
    free(cl);
}

static void client_close(struct client *cl)
{
    struct worker *w = cl->w;
    if (cl->dead)
        return;
    ev_io_stop(w->loop, &cl->rio);
    ev_io_stop(w->loop, &cl->wio);
    ev_timer_stop(w->loop, &cl->idle);
    close(cl->fd);
    cl->dead = 1;
    if (cl->prev)
        cl->prev->next = cl->next;
    else
        w->clients = cl->next;
    if (cl->next)
        cl->next->prev = cl->prev;
    w->nclients--;
    client_free_if_done(cl); /* requests still running keep it until they end */
}

static void idle_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    struct client *cl = t->data;
    if (cl->nreq == 0)
        client_close(cl);
}

/* ---- answering ----------------------------------------------------------------------- */

static void req_done(struct req *r)
{
    struct client *cl = r->cl;
    struct worker *w = cl->w;
    stats_record(&w->st, r->status, (double)(stats_now_ns() - r->t0) / 1e9);
    w->inflight--;
    client_flush(cl);
}

static void write_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop, (void)revents;
    client_flush(io->data);
}

static void read_cb(struct ev_loop *loop, ev_io *io, int revents);

/* Move the answered front of the queue to the output, write what the socket
 * takes, and decide what the connection does next. */
static void client_flush(struct client *cl)
{
    struct worker *w = cl->w;
    while (cl->head && cl->head->status) {
        struct req *r = cl->head;
        /* stopping: the requests read before are all answered, the last
         * of them says Connection: close */
        int keep = !r->reject && r->rq.keepalive && !(w->stopping && !r->next);
        char allow[32] = "";
        if (r->allow)
            snprintf(allow, sizeof allow, "Allow: %s\r\n", r->allow);
        if (!cl->dead)
            http_response(&cl->out, r->status, r->rq.minor, keep, r->allow ? allow : NULL,
                          r->body.p ? r->body.p : "", r->body.len);
        if (!keep)
            cl->closing = 1;
        cl->head = r->next;
        if (!cl->head)
            cl->tail = NULL;
        cl->nreq--;
        http_request_free(&r->rq);
        sb_free(&r->body);
        free(r);
        if (!keep) { /* nothing after it is answered */
            while (cl->head) {
                r = cl->head;
                if (!r->status)
                    break; /* still running: it ends on its own, unanswered */
                cl->head = r->next;
                cl->nreq--;
                http_request_free(&r->rq);
                sb_free(&r->body);
                free(r);
            }
            if (!cl->head)
                cl->tail = NULL;
            break;
        }
    }
    if (cl->dead) {
        client_free_if_done(cl);
        return;
    }
    while (cl->out_off < cl->out.len) {
        ssize_t n = send(cl->fd, cl->out.p + cl->out_off, cl->out.len - cl->out_off,
                         MSG_NOSIGNAL);
        if (n > 0) {
            cl->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ev_io_start(w->loop, &cl->wio);
            return;
        }
        client_close(cl); /* the peer went away */
        return;
    }
    ev_io_stop(w->loop, &cl->wio);
    cl->out.len = cl->out_off = 0;
    if (cl->closing && cl->nreq == 0) {
        client_close(cl);
        return;
    }
    if (!cl->closing && cl->nreq < MAX_PIPELINE && (cl->eof || !ev_is_active(&cl->rio))) {
        /* room in the pipeline again: requests that waited in the buffer,
         * then (unless the peer is done) more from the socket */
        if (!cl->eof)
            ev_io_start(w->loop, &cl->rio);
        read_cb(w->loop, &cl->rio, 0);
    }
}

/* ---- running a request ------------------------------------------------------------------ */

/* The handler with a connection: pooled (in a task), or the worker's own
 * (--blocking, inline).  Sets r->status. */
static void serve(struct req *r, int route, long id, int needs_db)
{
    struct worker *w = r->cl->w;
    PGconn *conn = NULL;
    if (needs_db) {
        if (w->pool) {
            conn = pqawait_pool_acquire(w->pool);
            if (!conn) {
                char why[160];
                snprintf(why, sizeof why, "%s%s%s", strerror(errno),
                         pqawait_pool_error(w->pool) ? ": " : "",
                         pqawait_pool_error(w->pool) ? pqawait_pool_error(w->pool) : "");
                no_connection(&r->body, why);
                r->status = 503;
                return;
            }
        } else {
            if (PQstatus(w->conn) != CONNECTION_OK)
                PQreset(w->conn);
            conn = w->conn;
        }
    }
    r->status = run_route(route, id, conn, &r->rq, &r->body);
    if (r->body.oom) {
        sb_free(&r->body);
        r->status = 500;
    }
    if (conn && w->pool)
        pqawait_pool_release(w->pool, conn);
}

struct task_arg {
    struct req *r;
    int route, needs_db;
    long id;
};

static void *request_task(void *arg)
{
    struct task_arg a = *(struct task_arg *)arg;
    free(arg);
    serve(a.r, a.route, a.id, a.needs_db);
    req_done(a.r);
    return NULL;
}

/* A complete request (or a rejection) at the tail of cl's queue. */
static void dispatch(struct client *cl, struct req *r)
{
    struct worker *w = cl->w;
    r->cl = cl;
    if (cl->tail)
        cl->tail->next = r;
    else
        cl->head = r;
    cl->tail = r;
    cl->nreq++;
    w->inflight++;
    if (r->reject) {
        req_done(r);
        return;
    }
    long id = 0;
    int needs_db;
    int route = route_request(&r->rq, &id, &needs_db, &r->allow, &r->body);
    if (route < 0) {
        r->status = -route;
        req_done(r);
        return;
    }
    if (server->cfg.blocking) {
        serve(r, route, id, needs_db); /* the loop waits for the database */
        req_done(r);
        return;
    }
    struct task_arg *a = malloc(sizeof *a);
    awaitlet_options o = { .detached = 1, .name = "request" };
    if (a) {
        *a = (struct task_arg){ r, route, needs_db, id };
        if (awaitlet_async_def_opts(w->loop, request_task, a, &o))
            return;
        free(a);
    }
    sb_puts(&r->body, "{\"error\":\"out of resources\"}");
    r->status = 503;
    req_done(r);
}

static void reject(struct client *cl, int status)
{
    struct req *r = calloc(1, sizeof *r);
    if (!r) {
        client_close(cl);
        return;
    }
    r->t0 = stats_now_ns();
    r->reject = 1;
    r->rq.minor = 1;
    r->status = status;
    sb_puts(&r->body, "{\"error\":");
    sb_json_str(&r->body, http_reason(status));
    sb_puts(&r->body, "}");
    cl->closing = 1;
    ev_io_stop(cl->w->loop, &cl->rio);
    dispatch(cl, r);
}

/* ---- reading -------------------------------------------------------------------------- */

static void parse_all(struct client *cl)
{
    size_t off = 0;
    cl->busy++;
    while (!cl->closing && !cl->dead && cl->nreq < MAX_PIPELINE && off < cl->in_len) {
        struct req *r = calloc(1, sizeof *r);
        if (!r) {
            reject(cl, 503);
            break;
        }
        long n = http_parse(cl->in + off, cl->in_len - off, &r->rq);
        if (n == 0) {
            free(r);
            break;
        }
        if (n < 0) {
            free(r);
            reject(cl, (int)-n);
            break;
        }
        off += (size_t)n;
        r->t0 = stats_now_ns();
        if (!r->rq.keepalive) {
            /* the client's last request: nothing after it may run, since
             * it would never be answered */
            cl->closing = 1;
            ev_io_stop(cl->w->loop, &cl->rio);
        }
        dispatch(cl, r); /* may run the request to its end (and flush) */
    }
    cl->busy--;
    if (cl->dead) {
        client_free_if_done(cl);
        return;
    }
    memmove(cl->in, cl->in + off, cl->in_len - off);
    cl->in_len -= off;
    if (cl->nreq >= MAX_PIPELINE)
        ev_io_stop(cl->w->loop, &cl->rio); /* flush restarts it */
    else if (cl->eof && cl->nreq == 0)
        client_close(cl); /* all answered; what is left is an unfinished request */
}

static void read_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct client *cl = io->data;
    if (revents) {
        if (cl->in_cap - cl->in_len < READ_CHUNK) {
            size_t cap = cl->in_cap ? cl->in_cap * 2 : READ_CHUNK * 2;
            if (cap > 4 * (HTTP_MAX_HEADER + HTTP_MAX_BODY) + READ_CHUNK) {
                if (cl->in_cap - cl->in_len == 0) {
                    ev_io_stop(loop, io); /* full of unparsed pipelined requests */
                    return;
                }
            } else {
                char *p = realloc(cl->in, cap);
                if (!p) {
                    client_close(cl);
                    return;
                }
                cl->in = p;
                cl->in_cap = cap;
            }
        }
        ssize_t n = read(cl->fd, cl->in + cl->in_len, cl->in_cap - cl->in_len);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n < 0) {
            client_close(cl);
            return;
        }
        if (n == 0) { /* EOF: answer what was asked, then close */
            ev_io_stop(loop, io);
            cl->eof = 1;
            parse_all(cl);
            return;
        }
        cl->in_len += (size_t)n;
        ev_timer_again(loop, &cl->idle);
    }
    parse_all(cl);
}

/* ---- accepting ------------------------------------------------------------------------ */

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    struct worker *w = io->data;
    for (int i = 0; i < 64; i++) {
        int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                ev_io_stop(loop, io); /* out of descriptors: breathe, then retry */
                ev_timer_start(loop, &w->accept_retry);
            }
            return;
        }
        struct client *cl = calloc(1, sizeof *cl);
        if (!cl) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        cl->w = w;
        cl->fd = fd;
        ev_io_init(&cl->rio, read_cb, fd, EV_READ);
        ev_io_init(&cl->wio, write_cb, fd, EV_WRITE);
        ev_init(&cl->idle, idle_cb);
        cl->idle.repeat = IDLE_TIMEOUT;
        cl->rio.data = cl->wio.data = cl->idle.data = cl;
        cl->next = w->clients;
        if (w->clients)
            w->clients->prev = cl;
        w->clients = cl;
        w->nclients++;
        ev_io_start(loop, &cl->rio);
        ev_timer_again(loop, &cl->idle);
    }
}

static void accept_retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct worker *w = t->data;
    if (!w->stopping)
        ev_io_start(loop, &w->accept_w);
}

int worker_listen(struct worker *w, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (server->nworkers > 1)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)*port) };
    if (inet_pton(AF_INET, server->cfg.host, &a.sin_addr) != 1) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    w->lfd = fd;
    return 0;
}

/* ---- stopping -------------------------------------------------------------------------- */

static void stop_poll_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct worker *w = t->data;
    if (w->nclients || w->inflight)
        return;
    if (w->pool && !w->pool_closed) {
        __atomic_store_n(&w->pool_closed, 1, __ATOMIC_RELAXED);
        pqawait_pool_close(w->pool);
    }
    if (awaitlet_loop_tasks(loop) == 0) {
        ev_timer_stop(loop, t);
        ev_break(loop, EVBREAK_ALL);
    }
}

static void stop_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    struct worker *w = a->data;
    if (w->stopping)
        return;
    w->stopping = 1;
    ev_io_stop(loop, &w->accept_w);
    ev_timer_stop(loop, &w->accept_retry);
    close(w->lfd);
    w->lfd = -1;
    /* no more requests; the ones read so far are answered, then each
     * connection closes (answers say Connection: close) */
    for (struct client *cl = w->clients, *next; cl; cl = next) {
        next = cl->next;
        cl->closing = 1;
        ev_io_stop(loop, &cl->rio);
        if (cl->nreq == 0 && cl->out_off >= cl->out.len)
            client_close(cl);
    }
    ev_timer_init(&w->stop_poll, stop_poll_cb, 0., 0.01);
    w->stop_poll.data = w;
    ev_timer_again(loop, &w->stop_poll);
}

void worker_stop(struct worker *w)
{
    ev_async_send(w->loop, &w->stop_w);
}

/* ---- the thread ------------------------------------------------------------------------- */

void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct ev_loop *loop = w->loop;
    if (!server->cfg.blocking) {
        pqawait_pool_options o;
        pqawait_pool_options_init(&o);
        o.min_size = o.max_size = server->cfg.pool;
        o.timeout = 10;
        o.name = "pqawait-server pool";
        w->pool = pqawait_pool_new(loop, server->cfg.db, &o);
        if (!w->pool) {
            fprintf(stderr, "pqawait-server: worker %d: pool: %s\n", w->id, strerror(errno));
            return (void *)1;
        }
    }
    ev_io_init(&w->accept_w, accept_cb, w->lfd, EV_READ);
    ev_init(&w->accept_retry, accept_retry_cb);
    w->accept_retry.repeat = 0.1;
    w->accept_w.data = w->accept_retry.data = w;
    if (server->cfg.blocking) {
        w->conn = PQconnectdb(server->cfg.db); /* outside any task: plain, blocking libpq */
        if (PQstatus(w->conn) != CONNECTION_OK)
            fprintf(stderr, "pqawait-server: worker %d: %s", w->id, PQerrorMessage(w->conn));
    }
    ev_io_start(loop, &w->accept_w);
    stats_watch_loop(&w->st, loop);
    ev_run(loop, 0);
    stats_unwatch_loop(&w->st, loop);
    ev_async_stop(loop, &w->stop_w);
    if (w->conn)
        PQfinish(w->conn);
    w->conn = NULL;
    /* the loop is this thread's for awaitlet: let go of it here, so that
     * the main thread may destroy it */
    if (awaitlet_loop_close(loop) < 0) {
        fprintf(stderr, "pqawait-server: worker %d: %u tasks left at exit\n", w->id,
                awaitlet_loop_tasks(loop));
        return (void *)1;
    }
    return NULL;
}

/* The parts of worker_main that must exist before the thread runs. */
void worker_init(struct worker *w)
{
    ev_async_init(&w->stop_w, stop_cb);
    w->stop_w.data = w;
    ev_async_start(w->loop, &w->stop_w);
}
