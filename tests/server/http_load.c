/*
 * http_load.c -- an exact HTTP load client for pqawait-server's tests.
 *
 * wrk measures; this one checks.  It opens many keep-alive connections on
 * one libev loop, sends requests on each (one at a time, or a whole
 * pipeline at once), and checks every response: status, and for the
 * endpoints whose answer is known, the exact body.  It reports counts the
 * test script compares with the database.
 *
 *   http_load PORT MODE [key=value...]
 *
 * Modes:
 *   items     GET /items/ID (ID = 5001..10000, never taken) and /health;
 *             every body must be exactly what --init made
 *   take      POST /items/ID/take {"qty":Q}, ID in lo..hi, Q in 1..qmax;
 *             200s are written to ack=FILE as "ID QTY REMAINING" lines
 *   slow      GET /slow?ms=MS on every connection at once
 *   pipeline  depth=N requests in one write on one connection: /slow with
 *             falling sleeps alternating with /items/ID; answers must come
 *             back in request order
 * Keys: clients=N requests=N (per client) seconds=S (run until then
 * instead, reconnecting after a closed connection) lo= hi= qmax= ms= depth=
 * ack=FILE.  Output: one line "key=value ..." with ok, bad (wrong
 * answers), s200 s409 s503 sother (statuses), dropped (connections closed
 * with a request unanswered), refused (connects refused), elapsed, and
 * first503/last503 (seconds since start).  Exit status 0 unless a bad
 * answer was seen; the first few are described on stderr.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { M_ITEMS, M_TAKE, M_SLOW, M_PIPELINE };

static struct {
    int port, mode, clients, requests, lo, hi, qmax, ms, depth;
    double seconds;
    const char *ack;
} cfg = { .clients = 10, .requests = 10, .lo = 1, .hi = 5, .qmax = 3, .ms = 200, .depth = 20 };

static struct {
    long ok, bad, s200, s409, s503, sother, dropped, refused;
    double first503, last503;
} res = { .first503 = -1, .last503 = -1 };

static FILE *ackf;
static double t_start;
static struct ev_loop *loop;
static int live;
static unsigned seed = 12345;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static unsigned rnd(void)
{
    seed = seed * 1103515245u + 12345u;
    return (seed >> 8) & 0xffffff;
}

static void bad(const char *fmt, const char *a, const char *b)
{
    res.bad++;
    if (res.bad <= 5) {
        fprintf(stderr, "http_load: ");
        fprintf(stderr, fmt, a, b);
        fputc('\n', stderr);
    }
}

struct expect {
    int kind;   /* 0 item, 1 health, 2 take, 3 slow */
    int id, qty, ms;
};

struct conn {
    int fd, n;                 /* requests completed on it */
    ev_io io;
    char out[65536];
    size_t out_len, out_off;
    char in[131072];
    size_t in_len;
    struct expect exp[128];
    int nexp, head;            /* answers still expected: exp[head..nexp) */
};

static void conn_start(struct conn *c);

static void add_request(struct conn *c)
{
    struct expect *e = &c->exp[c->nexp++];
    char body[64];
    int n = 0;
    switch (cfg.mode) {
    case M_ITEMS:
        if (rnd() % 4 == 0) {
            *e = (struct expect){ .kind = 1 };
            n = snprintf(c->out + c->out_len, sizeof c->out - c->out_len,
                         "GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        } else {
            *e = (struct expect){ .kind = 0, .id = 5001 + (int)(rnd() % 5000) };
            n = snprintf(c->out + c->out_len, sizeof c->out - c->out_len,
                         "GET /items/%d HTTP/1.1\r\nHost: t\r\n\r\n", e->id);
        }
        break;
    case M_TAKE: {
        *e = (struct expect){ .kind = 2, .id = cfg.lo + (int)(rnd() % (unsigned)(cfg.hi - cfg.lo + 1)),
                              .qty = 1 + (int)(rnd() % (unsigned)cfg.qmax) };
        int bl = snprintf(body, sizeof body, "{\"qty\": %d}", e->qty);
        n = snprintf(c->out + c->out_len, sizeof c->out - c->out_len,
                     "POST /items/%d/take HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n\r\n%s", e->id, bl, body);
        break;
    }
    case M_SLOW:
        *e = (struct expect){ .kind = 3, .ms = cfg.ms };
        n = snprintf(c->out + c->out_len, sizeof c->out - c->out_len,
                     "GET /slow?ms=%d HTTP/1.1\r\nHost: t\r\n\r\n", e->ms);
        break;
    case M_PIPELINE: {
        int i = c->nexp - 1;
        if (i % 2 == 0) {
            *e = (struct expect){ .kind = 3, .ms = (cfg.depth - i) * 5 };
            n = snprintf(c->out + c->out_len, sizeof c->out - c->out_len,
                         "GET /slow?ms=%d HTTP/1.1\r\nHost: t\r\n\r\n", e->ms);
        } else {
            *e = (struct expect){ .kind = 0, .id = 5001 + i };
            n = snprintf(c->out + c->out_len, sizeof c->out - c->out_len,
                         "GET /items/%d HTTP/1.1\r\nHost: t\r\n\r\n", e->id);
        }
        break;
    }
    }
    c->out_len += (size_t)n;
}

static void check(struct conn *c, int status, const char *body)
{
    struct expect *e = &c->exp[c->head++];
    char want[128], st[16];
    snprintf(st, sizeof st, "%d", status);
    if (status == 503) {
        if (strncmp(body, "{\"error\":", 9) != 0 || body[strlen(body) - 1] != '}')
            bad("503 without a JSON error: %s%s", body, "");
        res.s503++;
        double t = now() - t_start;
        if (res.first503 < 0)
            res.first503 = t;
        res.last503 = t;
        return; /* judged by the script: how many, and when */
    }
    if (status == 200)
        res.s200++;
    else if (status == 409)
        res.s409++;
    else
        res.sother++;
    switch (e->kind) {
    case 0:
        snprintf(want, sizeof want, "{\"id\":%d,\"name\":\"item %d\",\"qty\":100}", e->id, e->id);
        break;
    case 1:
        snprintf(want, sizeof want, "{\"ok\":true}");
        break;
    case 3:
        snprintf(want, sizeof want, "{\"slept_ms\":%d}", e->ms);
        break;
    case 2: {
        if (status == 409) {
            if (strcmp(body, "{\"error\":\"insufficient\"}") != 0)
                bad("409 with body %s%s", body, "");
            else
                res.ok++;
            return;
        }
        int id = -1, left = -1;
        if (status != 200 || sscanf(body, "{\"id\":%d,\"qty\":%d}", &id, &left) != 2 ||
            id != e->id || left < 0) {
            bad("take: status %s body %s", st, body);
            return;
        }
        if (ackf)
            fprintf(ackf, "%d %d %d\n", id, e->qty, left);
        res.ok++;
        return;
    }
    }
    if (status != 200 || strcmp(body, want) != 0) {
        char got[160];
        snprintf(got, sizeof got, "%s %.140s", st, body);
        bad("got %s, wanted 200 %s", got, want);
        return;
    }
    res.ok++;
}

static void conn_done(struct conn *c, int dropped)
{
    int refused = dropped == 2;
    ev_io_stop(loop, &c->io);
    close(c->fd);
    if (dropped && !refused && c->head < c->nexp)
        res.dropped += c->nexp - c->head;
    if (!refused && cfg.seconds > 0 && now() - t_start < cfg.seconds) {
        conn_start(c); /* a new connection for the rest of the run */
        return;
    }
    free(c);
    if (--live == 0)
        ev_break(loop, EVBREAK_ALL);
}

static int more_wanted(struct conn *c)
{
    if (cfg.mode == M_PIPELINE || cfg.mode == M_SLOW)
        return 0;
    if (cfg.seconds > 0)
        return now() - t_start < cfg.seconds;
    return c->n < cfg.requests;
}

/* Parse complete responses at the front of c->in. */
static int parse(struct conn *c)
{
    for (;;) {
        c->in[c->in_len] = 0;
        char *hend = strstr(c->in, "\r\n\r\n");
        if (!hend)
            return 0;
        int status = 0;
        if (sscanf(c->in, "HTTP/1.1 %d", &status) != 1) {
            bad("no status line: %.40s%s", c->in, "");
            return -1;
        }
        char *cl = strcasestr(c->in, "\r\nContent-Length:");
        if (!cl || cl > hend) {
            bad("no Content-Length: %.60s%s", c->in, "");
            return -1;
        }
        size_t blen = strtoul(cl + 17, NULL, 10);
        size_t hlen = (size_t)(hend + 4 - c->in);
        if (c->in_len < hlen + blen)
            return 0;
        int closes = strcasestr(c->in, "\r\nConnection: close") &&
                     strcasestr(c->in, "\r\nConnection: close") < hend;
        char body[4096];
        size_t n = blen < sizeof body - 1 ? blen : sizeof body - 1;
        memcpy(body, hend + 4, n);
        body[n] = 0;
        if (c->head >= c->nexp) {
            bad("an answer nobody asked for: %s%s", body, "");
            return -1;
        }
        check(c, status, body);
        c->n++;
        memmove(c->in, c->in + hlen + blen, c->in_len - hlen - blen);
        c->in_len -= hlen + blen;
        if (closes)
            return -2;
        if (c->head == c->nexp) {
            if (!more_wanted(c))
                return 1;
            c->head = c->nexp = 0;
            c->out_len = c->out_off = 0;
            add_request(c);
            ev_io_stop(loop, &c->io);
            ev_io_set(&c->io, c->fd, EV_READ | EV_WRITE);
            ev_io_start(loop, &c->io);
        }
    }
}

static void io_cb(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l;
    struct conn *c = w->data;
    if ((revents & EV_WRITE) && c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            int refused = errno == ECONNREFUSED;
            res.refused += refused;
            conn_done(c, refused ? 2 : 1); /* refused: the server is gone, stop */
            return;
        }
        if (n > 0)
            c->out_off += (size_t)n;
        if (c->out_off == c->out_len) {
            ev_io_stop(loop, &c->io);
            ev_io_set(&c->io, c->fd, EV_READ);
            ev_io_start(loop, &c->io);
        }
    }
    if (revents & EV_READ) {
        ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - 1 - c->in_len, 0);
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            int refused = n < 0 && errno == ECONNREFUSED;
            res.refused += refused;
            conn_done(c, refused ? 2 : 1);
            return;
        }
        c->in_len += (size_t)n;
        int r = parse(c);
        if (r == 1)
            conn_done(c, 0);
        else if (r == -2)
            conn_done(c, 1); /* answers after a "Connection: close" never come */
        else if (r < 0)
            conn_done(c, 1);
    }
}

static void conn_start(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)cfg.port) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        res.refused++;
        close(c->fd);
        free(c);
        if (--live == 0)
            ev_break(loop, EVBREAK_ALL);
        return;
    }
    c->in_len = c->out_len = c->out_off = 0;
    c->head = c->nexp = 0;
    int batch = cfg.mode == M_PIPELINE ? cfg.depth : 1;
    for (int i = 0; i < batch; i++)
        add_request(c);
    ev_io_init(&c->io, io_cb, c->fd, EV_READ | EV_WRITE);
    c->io.data = c;
    ev_io_start(loop, &c->io);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: http_load PORT items|take|slow|pipeline [key=value...]\n");
        return 2;
    }
    cfg.port = atoi(argv[1]);
    const char *m = argv[2];
    cfg.mode = !strcmp(m, "items") ? M_ITEMS : !strcmp(m, "take") ? M_TAKE
             : !strcmp(m, "slow") ? M_SLOW : !strcmp(m, "pipeline") ? M_PIPELINE : -1;
    if (cfg.mode < 0)
        return 2;
    for (int i = 3; i < argc; i++) {
        char k[32];
        const char *eq = strchr(argv[i], '=');
        if (!eq || eq - argv[i] >= (long)sizeof k)
            return 2;
        memcpy(k, argv[i], (size_t)(eq - argv[i]));
        k[eq - argv[i]] = 0;
        const char *v = eq + 1;
        if (!strcmp(k, "clients")) cfg.clients = atoi(v);
        else if (!strcmp(k, "requests")) cfg.requests = atoi(v);
        else if (!strcmp(k, "seconds")) cfg.seconds = atof(v);
        else if (!strcmp(k, "lo")) cfg.lo = atoi(v);
        else if (!strcmp(k, "hi")) cfg.hi = atoi(v);
        else if (!strcmp(k, "qmax")) cfg.qmax = atoi(v);
        else if (!strcmp(k, "ms")) cfg.ms = atoi(v);
        else if (!strcmp(k, "depth")) cfg.depth = atoi(v) > 120 ? 120 : atoi(v);
        else if (!strcmp(k, "ack")) cfg.ack = v;
        else if (!strcmp(k, "seed")) seed = (unsigned)atoi(v);
        else return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (cfg.ack && !(ackf = fopen(cfg.ack, "w"))) {
        perror(cfg.ack);
        return 2;
    }
    loop = ev_default_loop(0);
    t_start = now();
    int nc = cfg.mode == M_PIPELINE ? 1 : cfg.clients;
    live = nc;
    for (int i = 0; i < nc; i++) {
        struct conn *c = calloc(1, sizeof *c);
        if (!c)
            return 2;
        conn_start(c);
    }
    if (live > 0)
        ev_run(loop, 0);
    if (ackf)
        fclose(ackf);
    printf("ok=%ld bad=%ld s200=%ld s409=%ld s503=%ld sother=%ld dropped=%ld refused=%ld "
           "elapsed=%.3f first503=%.3f last503=%.3f\n",
           res.ok, res.bad, res.s200, res.s409, res.s503, res.sother, res.dropped, res.refused,
           now() - t_start, res.first503, res.last503);
    return res.bad ? 1 : 0;
}
