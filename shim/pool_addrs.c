/*
 * pool_addrs.c -- a host name's addresses, for the pool's multi-host walk
 * (pool_hosts.c).
 *
 * libpq's blocking connect goes from a silent address of a host name to the
 * name's next address; the list it got from getaddrinfo is private to it.
 * So the walk asks the resolver again, the way libpq asks (any family,
 * stream sockets, no flags), and writes the addresses as libpq writes the
 * one it is on (PQhostaddr: inet_ntop's form).  A lookup may take as long
 * as the resolver likes, so it runs on a worker thread (an abandonable
 * offload): the connector task waits, its loop does not, and a task
 * interrupted meanwhile (its pool closed) gives the job up -- the worker
 * then frees what it found.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "pool.h"

/* The name in, its addresses out; on the heap, so that the worker can
 * outlive a task that gave the job up. */
struct lookup {
    char *name;
    char **addr;
    int n;
};

static void lookup_free(void *arg, void *result)
{
    (void)result;
    struct lookup *l = arg;
    if (!l)
        return;
    for (int i = 0; i < l->n; i++)
        free(l->addr[i]);
    free(l->addr);
    free(l->name);
    free(l);
}

/* On a worker thread, never a task: the real getaddrinfo. */
static void *lookup_run(void *arg)
{
    struct lookup *l = arg;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res, *a;
    if (getaddrinfo(l->name, NULL, &hints, &res) != 0)
        return NULL;
    int n = 0;
    for (a = res; a; a = a->ai_next)
        n++;
    l->addr = calloc((size_t)n + 1, sizeof *l->addr);
    for (a = res; a && l->addr; a = a->ai_next) {
        char s[INET6_ADDRSTRLEN];
        const void *src = NULL;
        if (a->ai_family == AF_INET)
            src = &((const struct sockaddr_in *)(const void *)a->ai_addr)->sin_addr;
        else if (a->ai_family == AF_INET6)
            src = &((const struct sockaddr_in6 *)(const void *)a->ai_addr)->sin6_addr;
        if (!src || !inet_ntop(a->ai_family, src, s, sizeof s))
            continue;
        if (!(l->addr[l->n] = strdup(s)))
            break;
        l->n++;
    }
    freeaddrinfo(res);
    return NULL;
}

int pqawait__addrs_lookup(const char *name, char ***addrs, int *n)
{
    *addrs = NULL;
    *n = 0;
    struct lookup *l = calloc(1, sizeof *l);
    awaitlet_job *job = l && (l->name = strdup(name)) ? awaitlet_offload_start(lookup_run, l) : NULL;
    if (!job) {
        lookup_free(l, NULL); /* no memory, no worker: no addresses */
        return 0;
    }
    for (;;) {
        int r = awaitlet_offload_wait(job, -1, NULL); /* suspends */
        if (r == 1)
            break;
        if (r < 0 && errno == EAGAIN) { /* a fork child with no worker: released */
            lookup_free(l, NULL);
            return 0;
        }
        if (r < 0) {
            int err = errno;
            (void)awaitlet_offload_abandon(job, lookup_free);
            errno = err;
            return -1;
        }
    }
    *addrs = l->addr;
    *n = l->n;
    l->addr = NULL;
    l->n = 0;
    lookup_free(l, NULL);
    return 0;
}
