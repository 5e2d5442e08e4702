/*
 * ev_pq_server.c -- a small libev server whose callbacks run blocking
 * PQexec, built WITHOUT pqawait: the kind of legacy program
 * PQAWAIT_EV_CALLBACKS is for (ev_server.sh drives it).
 *
 * Protocol, one line per request on a TCP connection:
 *   Q <ms> <tag>\n   -> "<tag> <backend's answer>\n" after
 *                       SELECT pg_sleep(ms / 1000.0), '<tag>'
 * Each client connection has its own PGconn, opened (blocking) on its
 * first request.  A connection struct embeds its ev_io and is freed by its
 * own callback at EOF -- the usual shape, and exactly what must stay safe
 * when that callback is a task.  SIGTERM stops the loop.
 *
 *   ev_pq_server PORTFILE    listens on 127.0.0.1, an ephemeral port,
 *                            written to PORTFILE
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct client {
    ev_io io;
    PGconn *pg;
};

static void write_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void serve(struct client *c, char *line)
{
    int ms;
    char tag[64], sql[160], out[256];
    if (sscanf(line, "Q %d %63s", &ms, tag) != 2) {
        write_all(c->io.fd, "bad request\n", 12);
        return;
    }
    if (!c->pg)
        c->pg = PQconnectdb("");
    snprintf(sql, sizeof sql, "SELECT pg_sleep(%d / 1000.0), '%s'", ms, tag);
    PGresult *r = PQexec(c->pg, sql); /* blocks the whole loop -- unless it is a task */
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        snprintf(out, sizeof out, "%s %s\n", tag, PQgetvalue(r, 0, 1));
    else { /* one line, even when libpq has no message (a refused call: EBUSY) */
        snprintf(out, sizeof out, "%s error %s", tag, PQerrorMessage(c->pg));
        char *nl = strchr(out, '\n');
        if (nl)
            nl[1] = '\0';
        else
            strcat(out, "\n");
    }
    PQclear(r);
    write_all(c->io.fd, out, strlen(out));
}

/* Reads what is there into a buffer of its own and serves every line in
 * it (a request never spans reads here: the client writes whole lines).
 * A second, concurrent callback of the same watcher would read the next
 * request while the first is still waiting for its answer. */
static void client_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct client *c = (struct client *)w;
    char buf[4096];
    ssize_t n = read(w->fd, buf, sizeof buf - 1);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        ev_io_stop(loop, w);
        close(w->fd);
        if (c->pg)
            PQfinish(c->pg);
        free(c); /* the watcher with it, inside its own callback */
        return;
    }
    buf[n] = '\0';
    for (char *line = buf, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = '\0';
        serve(c, line);
    }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    int fd = accept(w->fd, NULL, NULL);
    if (fd < 0)
        return;
    struct client *c = calloc(1, sizeof *c);
    ev_io_init(&c->io, client_cb, fd, EV_READ);
    ev_io_start(loop, &c->io);
}

static void term_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)w, (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: ev_pq_server PORTFILE\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 128) < 0 ||
        getsockname(ls, (struct sockaddr *)&sa, &sl) < 0) {
        perror("listen");
        return 1;
    }
    FILE *f = fopen(argv[1], "w");
    fprintf(f, "%d\n", ntohs(sa.sin_port));
    fclose(f);
    struct ev_loop *loop = EV_DEFAULT;
    ev_io acc;
    ev_signal term;
    ev_io_init(&acc, accept_cb, ls, EV_READ);
    ev_io_start(loop, &acc);
    ev_signal_init(&term, term_cb, SIGTERM);
    ev_signal_start(loop, &term);
    ev_run(loop, 0);
    close(ls);
    return 0;
}
