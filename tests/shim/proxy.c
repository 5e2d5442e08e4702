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

struct pqa_proxy {
    int lfd, port, target;
    int wake[2];
    double delay;
    pthread_t thread;
    atomic_int stop;
    atomic_ulong accepted;
    atomic_ullong bytes;
    pair *pairs[MAX_PAIRS];
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

static void accept_one(pqa_proxy *p)
{
    int cfd = accept(p->lfd, NULL, NULL);
    if (cfd < 0)
        return;
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
    struct pollfd fds[2 + 2 * MAX_PAIRS];
    pair *owner[2 + 2 * MAX_PAIRS];
    while (!atomic_load(&p->stop)) {
        double now = now_s(), next = -1;
        int n = 0;
        fds[n++] = (struct pollfd){.fd = p->wake[0], .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
        for (int i = 0; i < MAX_PAIRS; i++) {
            pair *pr = p->pairs[i];
            if (!pr)
                continue;
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
        int timeout = next < 0 ? -1 : (int)((next - now) * 1000.0 + 0.999);
        if (poll(fds, (nfds_t)n, timeout) < 0 && errno != EINTR)
            break;
        if (fds[1].revents & POLLIN)
            accept_one(p);
        for (int i = 2; i < n; i += 2) {
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

void pqa_proxy_stop(pqa_proxy *p)
{
    atomic_store(&p->stop, 1);
    (void)!write(p->wake[1], "x", 1);
    pthread_join(p->thread, NULL);
    for (int i = 0; i < MAX_PAIRS; i++)
        if (p->pairs[i])
            free_pair(p->pairs[i]);
    close(p->lfd);
    close(p->wake[0]);
    close(p->wake[1]);
    free(p);
}
