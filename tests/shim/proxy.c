/*
 * proxy.c -- the delaying loopback proxy (see proxy.h).
 *
 * One thread, one poll() over: a wake-up pipe, the listening socket, and
 * both sockets of every forwarded connection.  Each direction of a
 * connection keeps a FIFO of chunks stamped with the time they may leave
 * (read time + D); the poll timeout is the earliest such time.  Reading
 * stops while a direction holds more than QUEUE_CAP bytes, so a fast sender
 * meets TCP back-pressure as it would on a slow link.  EOF is forwarded
 * (shutdown(SHUT_WR)) once the chunks read before it have left.
 *
 * In stall mode (pqa_proxy_stall) the pairs are left out of the poll set
 * altogether: nothing is read or written, as on a network that stopped.
 *
 * In hold mode (pqa_proxy_hold_new) a new connection is accepted but never
 * forwarded nor answered: its input is read and dropped until the peer
 * closes, and the time it stayed open is recorded.  The wake-up pipe makes
 * the thread notice a mode change at once.
 *
 * Gate (pqa_proxy_gate_sends): the client-to-server direction of every
 * live pair keeps reading but writes nothing, until a pair accepted after
 * the gate shut sees its server side close (a cancel request answered);
 * then every gate opens.  Arming goes through the cut's mutex and
 * condition variable, so the call returns once the thread has armed it.
 *
 * Fault modes.  Stall: see above (pairs out of the poll set, new
 * connections held).  Drop: every pair is closed with SO_LINGER 0 (an RST
 * each way).  Cut: each direction carries a framer (frames.c) that follows
 * the frame boundaries of what it forwards -- PostgreSQL messages, or TLS records once the server
 * has answered an SSLRequest with 'S' (the client's first 8 bytes tell) --
 * so a cut can be placed strictly inside a frame's body.  Counting at the
 * sending side means bytes queued when the cut is armed count as not yet
 * forwarded.  At the cut the rest of the queue is dropped, that direction
 * is read no more, and the pair is closed or frozen.  Requests from
 * the test's thread go through atomics (stall, drop) or, for a cut, a
 * mutex and condition variable, so pqa_proxy_cut can report how many live
 * connections it armed.
 */
#include "proxy.h"
#include "frames.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PAIRS 64
#define MAX_HELD 64
#define CHUNK_MAX 65536
#define QUEUE_CAP (4u << 20)

typedef struct chunk {
    struct chunk *next;
    double due;
    size_t len, off;
    char data[];
} chunk;

typedef struct dir {
    int from, to;
    chunk *head, *tail;
    size_t queued;
    int eof;        /* read side saw EOF */
    int shut;       /* EOF forwarded */
    pqa_framer fr;
    int armed;      /* a cut is pending: budget bytes to read first */
    unsigned long budget;
    int cut;        /* the cut is made: read nothing more; act once drained */
    pqa_cut_then then;
} dir;

typedef struct pair {
    int fd[2];      /* 0: client side, 1: server side */
    dir d[2];       /* d[0]: client -> server, d[1]: server -> client */
    int dead;
    int frozen;     /* cut with PQA_CUT_STALL: nothing more moves */
    int gated;      /* pqa_proxy_gate_sends: d[0] writes nothing yet */
    int opener;     /* accepted while the gate was shut: its end opens it */
    unsigned char first[8]; /* the client's first bytes (SSLRequest?) */
    int first_have;
} pair;

typedef struct held {
    int fd;         /* -1: free slot */
    double since;
} held;

struct pqa_proxy {
    int lfd, port, target;
    int wake[2];
    double delay;
    pthread_t thread;
    atomic_int stop;
    atomic_int hold;
    atomic_int stalled;     /* pqa_proxy_stall: forwarded pairs frozen */
    atomic_int release;     /* hold turned off: close the held connections */
    atomic_ulong accepted;
    atomic_ullong bytes;
    pair *pairs[MAX_PAIRS];
    held held[MAX_HELD];
    pthread_mutex_t held_mu; /* guards the stats below */
    unsigned long held_accepted, held_closed, held_open, held_max_open;
    double held_longest;
    atomic_int drop;
    atomic_uint live;
    pthread_mutex_t cut_mu;  /* guards the cut request and the stats below */
    pthread_cond_t cut_cv;
    unsigned long cut_gen, cut_seen;
    pqa_cut_dir cut_dir;
    unsigned long cut_after;
    pqa_cut_then cut_then;
    int cut_armed;
    int cut_new;             /* arm every new connection too */
    pqa_cut_dir new_dir;
    unsigned long new_after;
    pqa_cut_then new_then;
    pqa_proxy_cut_info cut_info;
    unsigned long gate_gen, gate_seen; /* under cut_mu */
    int gate_shut;           /* proxy thread only */
    atomic_ulong gate_opened;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void free_pair(pair *pr)
{
    for (int i = 0; i < 2; i++) {
        close(pr->fd[i]);
        chunk *c = pr->d[i].head;
        while (c) {
            chunk *n = c->next;
            free(c);
            c = n;
        }
    }
    free(pr);
}

/* ---- frames (the cut mode) ---- */

/* How many of the n bytes about to be forwarded in direction d may go
 * before its armed cut (n if the cut lies beyond them); works on copies,
 * so nothing changes until frame_pass says what was really sent. */
static size_t frame_limit(const pair *pr, const dir *d, const unsigned char *b, size_t n)
{
    pqa_framer f = d->fr;
    if (!f.kind)
        pqa_framer_start(&f, pr->first, pr->first_have);
    return pqa_framer_limit(&f, d->budget, b, n);
}

/* n bytes were forwarded in direction d: move its framer (and an armed
 * cut's budget) past them; if that reaches the cut, make it. */
static void frame_pass(pqa_proxy *p, pair *pr, dir *d, const unsigned char *b, size_t n)
{
    if (!d->fr.kind)
        pqa_framer_start(&d->fr, pr->first, pr->first_have);
    size_t i = 0;
    while (i < n) {
        size_t k = pqa_framer_take(&d->fr, b + i, d->armed ? 1 : n - i);
        i += k;
        if (d->armed)
            d->budget = d->budget > k ? d->budget - k : 0;
    }
    if (!d->armed || d->budget || !pqa_framer_inside(&d->fr))
        return;
    d->armed = 0;
    d->cut = 1;
    pthread_mutex_lock(&p->cut_mu);
    p->cut_info.cuts++;
    p->cut_info.at = now_s();
    p->cut_info.stream = d->fr.kind;
    p->cut_info.frame_type = d->fr.kind == 'B' ? 0 : d->fr.hdr[0];
    p->cut_info.frame_len = d->fr.kind == 'B' ? 0 : 5 + d->fr.body_len;
    p->cut_info.frame_sent = d->fr.kind == 'B' ? 0 : 5 + d->fr.body_done;
    pthread_mutex_unlock(&p->cut_mu);
}

/* In the proxy's thread: arm every live pair for the cut requested. */
static void cut_arm(pqa_proxy *p)
{
    pthread_mutex_lock(&p->cut_mu);
    if (p->cut_gen != p->cut_seen) {
        int n = 0;
        for (int i = 0; i < MAX_PAIRS; i++) {
            pair *pr = p->pairs[i];
            if (!pr || pr->dead || pr->frozen)
                continue;
            dir *d = &pr->d[p->cut_dir == PQA_CUT_TO_CLIENT ? 1 : 0];
            if (d->cut || d->eof)
                continue;
            d->armed = 1;
            d->budget = p->cut_after;
            d->then = p->cut_then;
            n++;
        }
        p->cut_armed = n;
        p->cut_seen = p->cut_gen;
        pthread_cond_broadcast(&p->cut_cv);
    }
    pthread_mutex_unlock(&p->cut_mu);
}

/* The truncated chunk has left: close the pair or freeze it. */
static void cut_finish(pair *pr, dir *d)
{
    if (d->then == PQA_CUT_CLOSE)
        pr->dead = 1;
    else
        pr->frozen = 1;
}

/* In the proxy's thread: shut the gate on every live pair if asked. */
static void gate_arm(pqa_proxy *p)
{
    pthread_mutex_lock(&p->cut_mu);
    if (p->gate_gen != p->gate_seen) {
        for (int i = 0; i < MAX_PAIRS; i++)
            if (p->pairs[i] && !p->pairs[i]->dead)
                p->pairs[i]->gated = 1;
        p->gate_shut = 1;
        p->gate_seen = p->gate_gen;
        pthread_cond_broadcast(&p->cut_cv);
    }
    pthread_mutex_unlock(&p->cut_mu);
}

/* pr was accepted while the gate was shut: once the server has closed it
 * (the cancel request is answered), the held bytes may go. */
static void gate_check(pqa_proxy *p, const pair *pr)
{
    if (!p->gate_shut || !pr->opener || !pr->d[1].eof)
        return;
    for (int i = 0; i < MAX_PAIRS; i++)
        if (p->pairs[i])
            p->pairs[i]->gated = 0;
    p->gate_shut = 0;
    atomic_fetch_add(&p->gate_opened, 1);
}

static void reset_pair(pair *pr)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    for (int i = 0; i < 2; i++)
        setsockopt(pr->fd[i], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

static void hold_one(pqa_proxy *p, int cfd)
{
    for (int i = 0; i < MAX_HELD; i++) {
        if (p->held[i].fd < 0) {
            set_nonblock(cfd);
            p->held[i].fd = cfd;
            p->held[i].since = now_s();
            pthread_mutex_lock(&p->held_mu);
            p->held_accepted++;
            if (++p->held_open > p->held_max_open)
                p->held_max_open = p->held_open;
            pthread_mutex_unlock(&p->held_mu);
            return;
        }
    }
    close(cfd);
}

/* A held connection is readable: drop the input; at EOF or an error the
 * peer has given up -- record for how long it waited. */
static void held_input(pqa_proxy *p, held *h)
{
    char buf[512];
    ssize_t n = recv(h->fd, buf, sizeof buf, 0);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR)))
        return;
    double waited = now_s() - h->since;
    pthread_mutex_lock(&p->held_mu);
    p->held_closed++;
    p->held_open--;
    if (waited > p->held_longest)
        p->held_longest = waited;
    pthread_mutex_unlock(&p->held_mu);
    close(h->fd);
    h->fd = -1;
}

static void accept_one(pqa_proxy *p)
{
    int cfd = accept(p->lfd, NULL, NULL);
    if (cfd < 0)
        return;
    if (atomic_load(&p->hold)) {
        hold_one(p, cfd);
        return;
    }
    int slot = -1;
    for (int i = 0; i < MAX_PAIRS; i++)
        if (!p->pairs[i]) {
            slot = i;
            break;
        }
    int sfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->target)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* a blocking connect to loopback is immediate; this thread is not a loop */
    if (slot < 0 || sfd < 0 || connect(sfd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(cfd);
        if (sfd >= 0)
            close(sfd);
        return;
    }
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_nonblock(cfd);
    set_nonblock(sfd);
    pair *pr = calloc(1, sizeof *pr);
    if (!pr) {
        close(cfd);
        close(sfd);
        return;
    }
    pr->fd[0] = cfd;
    pr->fd[1] = sfd;
    pr->d[0].from = cfd;
    pr->d[0].to = sfd;
    pr->d[1].from = sfd;
    pr->d[1].to = cfd;
    pr->d[0].fr.kind = 'B'; /* the client's stream is cut by count only */
    pthread_mutex_lock(&p->cut_mu);
    if (p->cut_new) {
        dir *d = &pr->d[p->new_dir == PQA_CUT_TO_CLIENT ? 1 : 0];
        d->armed = 1;
        d->budget = p->new_after;
        d->then = p->new_then;
    }
    pthread_mutex_unlock(&p->cut_mu);
    pr->opener = p->gate_shut;
    p->pairs[slot] = pr;
    atomic_fetch_add(&p->accepted, 1);
}

static void do_read(pqa_proxy *p, pair *pr, dir *d)
{
    chunk *c = malloc(sizeof *c + CHUNK_MAX);
    if (!c) {
        pr->dead = 1;
        return;
    }
    ssize_t n = recv(d->from, c->data, CHUNK_MAX, 0);
    if (n <= 0) {
        free(c);
        if (n == 0)
            d->eof = 1;
        else if (errno != EAGAIN && errno != EINTR)
            pr->dead = 1;
        return;
    }
    if (d == &pr->d[0] && pr->first_have < 8) {
        size_t k = (size_t)n < 8u - (size_t)pr->first_have ? (size_t)n : 8u - (size_t)pr->first_have;
        memcpy(pr->first + pr->first_have, c->data, k);
        pr->first_have += (int)k;
    }
    c->next = NULL;
    c->len = (size_t)n;
    c->off = 0;
    c->due = now_s() + p->delay;
    if (d->tail)
        d->tail->next = c;
    else
        d->head = c;
    d->tail = c;
    d->queued += (size_t)n;
}

static void do_write(pqa_proxy *p, pair *pr, dir *d)
{
    double now = now_s();
    if (d == &pr->d[0] && pr->gated)
        return; /* held until the gate opens */
    while (d->head && d->head->due <= now && !d->cut) {
        chunk *c = d->head;
        const unsigned char *b = (const unsigned char *)c->data + c->off;
        size_t len = c->len - c->off;
        if (d->armed)
            len = frame_limit(pr, d, b, len);
        ssize_t n = len ? send(d->to, b, len, MSG_NOSIGNAL) : 0;
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                pr->dead = 1;
            return;
        }
        atomic_fetch_add(&p->bytes, (unsigned long long)n);
        frame_pass(p, pr, d, b, (size_t)n);
        c->off += (size_t)n;
        d->queued -= (size_t)n;
        if (d->cut) {
            /* what was read beyond the cut never leaves */
            while (d->head) {
                chunk *x = d->head;
                d->head = x->next;
                free(x);
            }
            d->tail = NULL;
            d->queued = 0;
            return;
        }
        if (c->off < c->len)
            return;
        d->head = c->next;
        if (!d->head)
            d->tail = NULL;
        free(c);
    }
}

static void *proxy_main(void *arg)
{
    pqa_proxy *p = arg;
    struct pollfd fds[2 + 2 * MAX_PAIRS + MAX_HELD];
    pair *owner[2 + 2 * MAX_PAIRS];
    held *hl[MAX_HELD];
    while (!atomic_load(&p->stop)) {
        double now = now_s(), next = -1;
        int n = 0;
        if (atomic_exchange(&p->release, 0)) {
            for (int i = 0; i < MAX_HELD; i++)
                if (p->held[i].fd >= 0) {
                    close(p->held[i].fd);
                    p->held[i].fd = -1;
                }
            pthread_mutex_lock(&p->held_mu);
            p->held_open = 0;
            pthread_mutex_unlock(&p->held_mu);
        }
        if (atomic_exchange(&p->drop, 0)) {
            for (int i = 0; i < MAX_PAIRS; i++)
                if (p->pairs[i]) {
                    reset_pair(p->pairs[i]);
                    free_pair(p->pairs[i]);
                    p->pairs[i] = NULL;
                }
        }
        cut_arm(p);
        gate_arm(p);
        int stalled = atomic_load(&p->stalled);
        fds[n++] = (struct pollfd){.fd = p->wake[0], .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
        for (int i = 0; i < MAX_PAIRS; i++) {
            pair *pr = p->pairs[i];
            /* a stalled network moves nothing; a silent (cut) pair is not
             * polled at all: a hang-up would make poll return at once,
             * forever */
            if (!pr || stalled || pr->frozen)
                continue;
            short ev[2] = {0, 0};
            for (int k = 0; k < 2; k++) {
                dir *d = &pr->d[k];
                if (!d->eof && !d->cut && d->queued < QUEUE_CAP)
                    ev[k] |= POLLIN; /* d[k].from is fd[k] */
                if (d->head && !(k == 0 && pr->gated)) {
                    if (d->head->due <= now)
                        ev[1 - k] |= POLLOUT; /* d[k].to is fd[1-k] */
                    else if (next < 0 || d->head->due < next)
                        next = d->head->due;
                }
            }
            for (int k = 0; k < 2; k++) {
                owner[n] = pr;
                fds[n++] = (struct pollfd){.fd = pr->fd[k], .events = ev[k]};
            }
        }
        int npairs = n, nheld = 0;
        for (int i = 0; i < MAX_HELD; i++)
            if (p->held[i].fd >= 0) {
                hl[nheld++] = &p->held[i];
                fds[n++] = (struct pollfd){.fd = p->held[i].fd, .events = POLLIN};
            }
        int timeout = next < 0 ? -1 : (int)((next - now) * 1000.0 + 0.999);
        if (poll(fds, (nfds_t)n, timeout) < 0 && errno != EINTR)
            break;
        if (fds[0].revents & POLLIN) {
            char drain[64];
            while (read(p->wake[0], drain, sizeof drain) > 0)
                ;
        }
        for (int i = 0; i < nheld; i++)
            if (fds[npairs + i].revents)
                held_input(p, hl[i]);
        if (fds[1].revents & POLLIN)
            accept_one(p);
        for (int i = 2; i < npairs; i += 2) {
            pair *pr = owner[i];
            for (int k = 0; k < 2; k++) {
                dir *d = &pr->d[k];
                if (fds[i + k].revents & (POLLIN | POLLHUP | POLLERR))
                    if (!d->eof && !d->cut && d->queued < QUEUE_CAP)
                        do_read(p, pr, d);
            }
            gate_check(p, pr);
            for (int k = 0; k < 2; k++) {
                dir *d = &pr->d[k];
                do_write(p, pr, d);
                if (d->cut && !d->head && !pr->dead && !pr->frozen)
                    cut_finish(pr, d);
                if (d->eof && !d->head && !d->shut) {
                    shutdown(d->to, SHUT_WR);
                    d->shut = 1;
                }
            }
            if (pr->d[0].shut && pr->d[1].shut)
                pr->dead = 1;
        }
        unsigned live = 0;
        for (int i = 0; i < MAX_PAIRS; i++) {
            if (p->pairs[i] && p->pairs[i]->dead) {
                free_pair(p->pairs[i]);
                p->pairs[i] = NULL;
            }
            live += p->pairs[i] != NULL;
        }
        atomic_store(&p->live, live);
    }
    return NULL;
}

pqa_proxy *pqa_proxy_start(int target_port, int delay_ms)
{
    pqa_proxy *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->target = target_port;
    p->delay = delay_ms / 1000.0;
    for (int i = 0; i < MAX_HELD; i++)
        p->held[i].fd = -1;
    pthread_mutex_init(&p->held_mu, NULL);
    pthread_mutex_init(&p->cut_mu, NULL);
    pthread_cond_init(&p->cut_cv, NULL);
    p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    int one = 1; /* a test may take the port over once the proxy stopped (test_interrupt.c) */
    if (p->lfd >= 0)
        (void)setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (p->lfd < 0 || bind(p->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(p->lfd, 64) != 0 || getsockname(p->lfd, (struct sockaddr *)&sa, &len) != 0 ||
        pipe2(p->wake, O_CLOEXEC | O_NONBLOCK) != 0)
        goto fail;
    set_nonblock(p->lfd);
    p->port = ntohs(sa.sin_port);
    if ((errno = pthread_create(&p->thread, NULL, proxy_main, p)) != 0)
        goto fail;
    return p;
fail:;
    int e = errno;
    if (p->lfd >= 0)
        close(p->lfd);
    free(p);
    errno = e;
    return NULL;
}

int pqa_proxy_port(const pqa_proxy *p) { return p->port; }
unsigned long pqa_proxy_accepted(const pqa_proxy *p) { return atomic_load(&p->accepted); }
unsigned long long pqa_proxy_bytes(const pqa_proxy *p) { return atomic_load(&p->bytes); }

void pqa_proxy_hold_new(pqa_proxy *p, int on)
{
    atomic_store(&p->hold, on != 0);
    if (!on)
        atomic_store(&p->release, 1);
    (void)!write(p->wake[1], "h", 1);
}

void pqa_proxy_stall(pqa_proxy *p, int on)
{
    atomic_store(&p->stalled, on != 0);
    pqa_proxy_hold_new(p, on);
}

void pqa_proxy_held_stats(pqa_proxy *p, pqa_proxy_held *out)
{
    pthread_mutex_lock(&p->held_mu);
    out->accepted = p->held_accepted;
    out->closed = p->held_closed;
    out->longest = p->held_longest;
    out->max_open = p->held_max_open;
    pthread_mutex_unlock(&p->held_mu);
}

void pqa_proxy_drop(pqa_proxy *p)
{
    atomic_store(&p->drop, 1);
    (void)!write(p->wake[1], "d", 1);
}

int pqa_proxy_cut(pqa_proxy *p, pqa_cut_dir dir, unsigned long after, pqa_cut_then then)
{
    pthread_mutex_lock(&p->cut_mu);
    unsigned long gen = ++p->cut_gen;
    p->cut_dir = dir;
    p->cut_after = after;
    p->cut_then = then;
    (void)!write(p->wake[1], "c", 1);
    while (p->cut_seen != gen) /* the thread arms the live pairs */
        pthread_cond_wait(&p->cut_cv, &p->cut_mu);
    int n = p->cut_armed;
    pthread_mutex_unlock(&p->cut_mu);
    return n;
}

void pqa_proxy_cut_new(pqa_proxy *p, pqa_cut_dir dir, unsigned long after, pqa_cut_then then)
{
    pthread_mutex_lock(&p->cut_mu);
    p->cut_new = 1;
    p->new_dir = dir;
    p->new_after = after;
    p->new_then = then;
    pthread_mutex_unlock(&p->cut_mu);
}

void pqa_proxy_cut_new_stop(pqa_proxy *p)
{
    pthread_mutex_lock(&p->cut_mu);
    p->cut_new = 0;
    pthread_mutex_unlock(&p->cut_mu);
}

void pqa_proxy_cut_stats(pqa_proxy *p, pqa_proxy_cut_info *out)
{
    pthread_mutex_lock(&p->cut_mu);
    *out = p->cut_info;
    pthread_mutex_unlock(&p->cut_mu);
}

void pqa_proxy_gate_sends(pqa_proxy *p)
{
    pthread_mutex_lock(&p->cut_mu);
    unsigned long gen = ++p->gate_gen;
    (void)!write(p->wake[1], "g", 1);
    while (p->gate_seen != gen)
        pthread_cond_wait(&p->cut_cv, &p->cut_mu);
    pthread_mutex_unlock(&p->cut_mu);
}

unsigned long pqa_proxy_gate_opened(pqa_proxy *p) { return atomic_load(&p->gate_opened); }

unsigned pqa_proxy_live(pqa_proxy *p) { return atomic_load(&p->live); }

void pqa_proxy_stop(pqa_proxy *p)
{
    atomic_store(&p->stop, 1);
    (void)!write(p->wake[1], "x", 1);
    pthread_join(p->thread, NULL);
    for (int i = 0; i < MAX_PAIRS; i++)
        if (p->pairs[i])
            free_pair(p->pairs[i]);
    for (int i = 0; i < MAX_HELD; i++)
        if (p->held[i].fd >= 0)
            close(p->held[i].fd);
    pthread_mutex_destroy(&p->held_mu);
    pthread_mutex_destroy(&p->cut_mu);
    pthread_cond_destroy(&p->cut_cv);
    close(p->lfd);
    close(p->wake[0]);
    close(p->wake[1]);
    free(p);
}
