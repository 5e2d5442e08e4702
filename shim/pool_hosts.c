/*
 * pool_hosts.c -- multi-host conninfo: a host that times out is skipped as
 * libpq's blocking connect skips it.
 *
 * PQconnectdb gives every host (every address of it) connect_timeout
 * seconds -- at least 2, libpq's rule -- and then tries the next one.  That
 * timer lives in libpq's private blocking loop: PQconnectPoll, which the
 * pool's connectors drive (so that a fork or a pool close can reach the
 * attempt's socket), leaves timeouts to its caller and has no call to skip
 * a host, and cutting the socket fails the whole attempt.  So the pool
 * parses the conninfo once, and a connector that times out on host i
 * starts a new attempt with the same options and the host list from i + 1
 * on (host, hostaddr and port sliced alike): libpq then walks the rest as
 * it would have, target_session_attrs included.
 *
 * Nothing here suspends or touches the pool's state; the connector (in
 * pool_tasks.c) decides when to move on.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

struct pqawait__hosts {
    int nkw;                  /* options set in the conninfo */
    char **kw, **val;         /* nkw + 1 entries, NULL-terminated */
    int ihost, iaddr, iport;  /* their index in kw, or -1 */
    int n;                    /* hosts; 1 when nothing can be sliced */
    char **host, **addr, **port; /* n each (NULL where not given) */
    int nport;                /* 1: one port for every host */
    double per_host;          /* libpq's connect_timeout per host, 0: none */
};

static int count_list(const char *s)
{
    int n = 1;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

/* The n elements of the comma list s, each its own string. */
static char **split(const char *s, int n)
{
    char **out = calloc((size_t)n, sizeof *out);
    if (!out)
        return NULL;
    for (int i = 0; i < n; i++) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (!(out[i] = strndup(s, len))) {
            while (i--)
                free(out[i]);
            free(out);
            return NULL;
        }
        s = end ? end + 1 : s + len;
    }
    return out;
}

static void free_list(char **l, int n)
{
    if (!l)
        return;
    for (int i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

void pqawait__hosts_free(pqawait__hosts *h)
{
    if (!h)
        return;
    for (int i = 0; i < h->nkw; i++) {
        free(h->kw[i]);
        free(h->val[i]);
    }
    free(h->kw);
    free(h->val);
    free_list(h->host, h->n);
    free_list(h->addr, h->n);
    free_list(h->port, h->nport);
    free(h);
}

pqawait__hosts *pqawait__hosts_parse(const PQconninfoOption *opts)
{
    pqawait__hosts *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->ihost = h->iaddr = h->iport = -1;
    int total = 0;
    for (const PQconninfoOption *o = opts; o->keyword; o++)
        total += o->val != NULL;
    h->kw = calloc((size_t)total + 1, sizeof *h->kw);
    h->val = calloc((size_t)total + 1, sizeof *h->val);
    if (!h->kw || !h->val)
        goto oom;
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        int i = h->nkw;
        if (!(h->kw[i] = strdup(o->keyword)) || !(h->val[i] = strdup(o->val)))
            goto oom;
        h->nkw++;
        if (!strcmp(o->keyword, "host"))
            h->ihost = i;
        else if (!strcmp(o->keyword, "hostaddr"))
            h->iaddr = i;
        else if (!strcmp(o->keyword, "port"))
            h->iport = i;
        else if (!strcmp(o->keyword, "connect_timeout"))
            h->per_host = atoi(o->val); /* as libpq reads it */
    }
    if (h->per_host < 0)
        h->per_host = 0;
    else if (h->per_host > 0 && h->per_host < 2)
        h->per_host = 2; /* libpq: "a timeout of 1 s is too short" */
    /* the host count as libpq takes it: host if given, else hostaddr */
    int nh = h->ihost >= 0 && *h->val[h->ihost] ? count_list(h->val[h->ihost]) : 0;
    int na = h->iaddr >= 0 && *h->val[h->iaddr] ? count_list(h->val[h->iaddr]) : 0;
    int np = h->iport >= 0 && *h->val[h->iport] ? count_list(h->val[h->iport]) : 0;
    int n = nh ? nh : na;
    h->n = 1;
    /* lists libpq itself would reject are left to it, unsliced */
    if (n < 2 || (na && na != n) || (np > 1 && np != n))
        return h;
    if ((nh && !(h->host = split(h->val[h->ihost], n))) ||
        (na && !(h->addr = split(h->val[h->iaddr], n))) ||
        (np && !(h->port = split(h->val[h->iport], np))))
        goto oom;
    h->n = n;
    h->nport = np;
    return h;
oom:
    pqawait__hosts_free(h);
    errno = ENOMEM;
    return NULL;
}

int pqawait__hosts_count(const pqawait__hosts *h)
{
    return h->n;
}

double pqawait__hosts_timeout(const pqawait__hosts *h)
{
    return h->per_host;
}

/* "a,b,c" from l[first..n-1]; NULL when out of memory. */
static char *join(char **l, int first, int n)
{
    size_t len = 1;
    for (int i = first; i < n; i++)
        len += strlen(l[i]) + 1;
    char *s = malloc(len), *w = s;
    if (!s)
        return NULL;
    for (int i = first; i < n; i++) {
        size_t k = strlen(l[i]);
        memcpy(w, l[i], k);
        w += k;
        *w++ = i + 1 < n ? ',' : 0;
    }
    if (w == s)
        *w = 0;
    return s;
}

PGconn *pqawait__hosts_start(const pqawait__hosts *h, int first)
{
    if (first <= 0 || first >= h->n)
        return PQconnectStartParams((const char *const *)h->kw, (const char *const *)h->val, 0);
    const char **val = malloc(((size_t)h->nkw + 1) * sizeof *val);
    char *hs = h->host ? join(h->host, first, h->n) : NULL;
    char *as = h->addr ? join(h->addr, first, h->n) : NULL;
    char *ps = h->nport > 1 ? join(h->port, first, h->n) : NULL;
    PGconn *c = NULL;
    if (val && (hs || !h->host) && (as || !h->addr) && (ps || h->nport <= 1)) {
        for (int i = 0; i <= h->nkw; i++)
            val[i] = h->val[i];
        if (hs)
            val[h->ihost] = hs;
        if (as)
            val[h->iaddr] = as;
        if (ps)
            val[h->iport] = ps;
        c = PQconnectStartParams((const char *const *)h->kw, val, 0);
    }
    free(val);
    free(hs);
    free(as);
    free(ps);
    return c;
}

int pqawait__hosts_which(const pqawait__hosts *h, PGconn *c, int from)
{
    if (h->n < 2)
        return 0;
    const char *host = PQhost(c), *port = PQport(c);
    if (!host)
        return from;
    for (int i = from; i < h->n; i++) {
        /* PQhost names the host, else the address */
        const char *mine = h->host && *h->host[i] ? h->host[i] : h->addr ? h->addr[i] : "";
        const char *myport = h->nport > 1 ? h->port[i] : NULL;
        if (*mine && strcmp(mine, host))
            continue;
        if (myport && *myport && port && strcmp(myport, port))
            continue;
        return i;
    }
    return from;
}
