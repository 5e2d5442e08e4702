/*
 * fakesrv.c -- black-hole and rejecting fake servers (see fakesrv.h).
 *
 * The rejecter speaks just enough of the protocol: it reads the length-
 * prefixed startup packet (answering 'N' to an SSLRequest or
 * GSSENCRequest, as a server without them does), then sends one
 * ErrorResponse and closes.
 */
#include "fakesrv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct pqa_fakesrv {
    int lfd, port, reject;
    int wake[2];
    pthread_t thread;
};

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    return fd;
}

static int read_full(int fd, void *buf, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t k = recv(fd, (char *)buf + got, n - got, 0);
        if (k <= 0)
            return -1;
        got += (size_t)k;
    }
    return 0;
}

static void reject_one(int fd)
{
    for (;;) {
        uint32_t len, code;
        if (read_full(fd, &len, 4) != 0)
            return;
        len = ntohl(len);
        if (len < 8 || len > 10000)
            return;
        char *body = malloc(len - 4);
        if (!body || read_full(fd, body, len - 4) != 0) {
            free(body);
            return;
        }
        memcpy(&code, body, 4);
        free(body);
        code = ntohl(code);
        if (code == 80877103 || code == 80877104) { /* SSLRequest, GSSENCRequest */
            if (send(fd, "N", 1, MSG_NOSIGNAL) != 1)
                return;
            continue;
        }
        static const char fields[] = "SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0";
        char msg[128];
        uint32_t mlen = htonl((uint32_t)(4 + sizeof fields));
        msg[0] = 'E';
        memcpy(msg + 1, &mlen, 4);
        memcpy(msg + 5, fields, sizeof fields);
        (void)!send(fd, msg, 5 + sizeof fields, MSG_NOSIGNAL);
        return;
    }
}

static void *rejecter_main(void *arg)
{
    pqa_fakesrv *f = arg;
    for (;;) {
        struct pollfd fds[2] = {{.fd = f->wake[0], .events = POLLIN}, {.fd = f->lfd, .events = POLLIN}};
        if (poll(fds, 2, -1) < 0 && errno != EINTR)
            return NULL;
        if (fds[0].revents)
            return NULL;
        if (fds[1].revents & POLLIN) {
            int c = accept(f->lfd, NULL, NULL);
            if (c >= 0) {
                reject_one(c);
                close(c);
            }
        }
    }
}

static pqa_fakesrv *start(int reject)
{
    pqa_fakesrv *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->reject = reject;
    f->wake[0] = f->wake[1] = -1;
    f->lfd = listen_any(&f->port);
    if (f->lfd < 0)
        goto fail;
    if (reject) {
        if (pipe(f->wake) != 0)
            goto fail;
        if (pthread_create(&f->thread, NULL, rejecter_main, f) != 0)
            goto fail;
    }
    return f;
fail:
    if (f->lfd >= 0)
        close(f->lfd);
    free(f);
    return NULL;
}

pqa_fakesrv *pqa_fakesrv_blackhole(void) { return start(0); }
pqa_fakesrv *pqa_fakesrv_rejecter(void) { return start(1); }
int pqa_fakesrv_port(const pqa_fakesrv *f) { return f->port; }

void pqa_fakesrv_stop(pqa_fakesrv *f)
{
    if (f->reject) {
        (void)!write(f->wake[1], "x", 1);
        pthread_join(f->thread, NULL);
        close(f->wake[0]);
        close(f->wake[1]);
    }
    close(f->lfd);
    free(f);
}

int pqa_closed_port(void)
{
    int port;
    int fd = listen_any(&port);
    if (fd < 0)
        return 1;
    close(fd);
    return port;
}
