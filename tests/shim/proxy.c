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
 */
#include "proxy.h"

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
} dir;

typedef struct pair {
    int fd[2];      /* 0: client side, 1: server side */
    dir d[2];       /* d[0]: client -> server, d[1]: server -> client */
    int dead;
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
    unsigned long held_accepted, held_closed;
    double held_longest;
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

static void hold_one(pqa_proxy *p, int cfd)
{
    for (int i = 0; i < MAX_HELD; i++) {
        if (p->held[i].fd < 0) {
            set_nonblock(cfd);
            p->held[i].fd = cfd;
            p->held[i].since = now_s();
            pthread_mutex_lock(&p->held_mu);
            p->held_accepted++;
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
    while (d->head && d->head->due <= now) {
        chunk *c = d->head;
        ssize_t n = send(d->to, c->data + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                pr->dead = 1;
            return;
        }
        atomic_fetch_add(&p->bytes, (unsigned long long)n);
        c->off += (size_t)n;
        d->queued -= (size_t)n;
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
        }
        fds[n++] = (struct pollfd){.fd = p->wake[0], .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
        int stalled = atomic_load(&p->stalled);
        for (int i = 0; i < MAX_PAIRS; i++) {
            pair *pr = p->pairs[i];
            if (!pr || stalled)
                continue; /* a stalled network moves nothing */
            short ev[2] = {0, 0};
            for (int k = 0; k < 2; k++) {
                dir *d = &pr->d[k];
                if (!d->eof && d->queued < QUEUE_CAP)
                    ev[k] |= POLLIN; /* d[k].from is fd[k] */
                if (d->head) {
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
                    if (!d->eof && d->queued < QUEUE_CAP)
                        do_read(p, pr, d);
            }
            for (int k = 0; k < 2; k++) {
                dir *d = &pr->d[k];
                do_write(p, pr, d);
                if (d->eof && !d->head && !d->shut) {
                    shutdown(d->to, SHUT_WR);
                    d->shut = 1;
                }
            }
            if (pr->d[0].shut && pr->d[1].shut)
                pr->dead = 1;
        }
        for (int i = 0; i < MAX_PAIRS; i++)
            if (p->pairs[i] && p->pairs[i]->dead) {
                free_pair(p->pairs[i]);
                p->pairs[i] = NULL;
            }
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
    p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
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
    pthread_mutex_unlock(&p->held_mu);
}

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
    close(p->lfd);
    close(p->wake[0]);
    close(p->wake[1]);
    free(p);
}
