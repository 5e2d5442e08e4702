/*
 * pool_hosts.c -- multi-host conninfo: the pool walks the host list as
 * libpq's blocking PQconnectdb walks it, though it cannot use that walk.
 *
 * PQconnectdb gives every host (every address of it) connect_timeout
 * seconds -- at least 2, libpq's rule -- then writes "timeout expired" and
 * tries the next one; with target_session_attrs=prefer-standby, a first
 * pass that finds no standby is followed by a second pass over the whole
 * list that takes any server.  That timer lives in libpq's private
 * blocking loop: PQconnectPoll, which the pool's connectors drive (so that
 * a fork or a pool close can reach the attempt's socket), leaves timeouts
 * to its caller and has no call to skip a host.  So a connector runs a
 * *walk*: a series of attempts, each a PQconnectStartParams over a slice of
 * the host list, that together do what the one blocking call would do:
 *
 *  - the host list is the one libpq sees: the walk asks libpq for the
 *    effective options (the conninfo with its service file section and
 *    PG* environment applied) with a probe -- PQconnectStartParams with one
 *    invalid option (channel_binding), which libpq rejects after filling in
 *    every option and before any lookup or socket; PQconninfo of it gives
 *    host, hostaddr, port, connect_timeout and target_session_attrs, and
 *    nothing of the service file format is parsed here;
 *  - a host that stays silent for connect_timeout (else the pool's) ends
 *    the attempt; the next one starts at the host after it, with the same
 *    options (host, hostaddr and port sliced alike), so libpq walks the
 *    rest as it would have;
 *  - prefer-standby is run by the walk itself: pass 1 with
 *    target_session_attrs=standby over the list, pass 2 with any over the
 *    whole list again.  Pass 2 follows only when pass 1 ran out of hosts --
 *    not after an error that ends libpq's walk (a failed authentication,
 *    say) -- and to tell the two apart a pass-1 attempt ends its list with
 *    a sentinel host whose port is 0: libpq skips it at once ("invalid port
 *    number", no lookup, no socket), and only reaches it when every real
 *    host was tried;
 *  - the failure message is libpq's: every attempt's message in order (the
 *    sentinel's line taken out), a silent host's followed by libpq's
 *    "timeout expired".
 *
 * One difference is left: a host name with several addresses whose first
 * address is silent; libpq then tries its next address, the walk skips the
 * whole host (it does not see libpq's address list).
 *
 * Nothing here suspends or touches the pool's state; the connector (in
 * pool_tasks.c) decides when an attempt has ended.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

/* A host libpq skips at once, reached only after every real host. */
#define SENTINEL_HOST "pqawait-end-of-pass"
#define SENTINEL_PORT "0"

/* The pool's conninfo, as given (PQconninfoParse's options that are set). */
struct pqawait__hosts {
    int nkw;
    char **kw, **val; /* nkw + 1 entries, NULL-terminated */
};

struct pqawait__walk {
    const pqawait__hosts *h;
    int n;                   /* hosts; 0: the list cannot be sliced */
    int cap;                 /* entries allocated in the lists below */
    char **host, **addr;     /* n each, or NULL when not given */
    char **port;             /* n (one port for all: repeated) */
    int nport;               /* ports given: 0, 1 or n */
    int prefer;              /* prefer-standby: the walk runs both passes */
    int pass;                /* prefer: 1 or 2; else 0 */
    int first, at;           /* the attempt's first host, the one it is on */
    double per_host;         /* libpq's connect_timeout per host, 0: none */
    char *err;               /* libpq's message so far ("" if none) */
    size_t len;
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
    free(h);
}

pqawait__hosts *pqawait__hosts_parse(const PQconninfoOption *opts)
{
    pqawait__hosts *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
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
    }
    return h;
oom:
    pqawait__hosts_free(h);
    errno = ENOMEM;
    return NULL;
}

/* PQconnectStartParams with the pool's options, `nover` of them replaced
 * (or added) by okw/oval; an oval NULL leaves that option as it is. */
static PGconn *start_with(const pqawait__hosts *h, const char *const *okw, const char *const *oval,
                          int nover)
{
    size_t cap = (size_t)h->nkw + (size_t)nover + 1;
    const char **kw = malloc(cap * sizeof *kw), **val = malloc(cap * sizeof *val);
    PGconn *c = NULL;
    if (kw && val) {
        int k = 0;
        for (int i = 0; i < h->nkw; i++) {
            int replaced = 0;
            for (int j = 0; j < nover; j++)
                replaced |= oval[j] && !strcmp(h->kw[i], okw[j]);
            if (!replaced) {
                kw[k] = h->kw[i];
                val[k++] = h->val[i];
            }
        }
        for (int j = 0; j < nover; j++) {
            if (oval[j]) {
                kw[k] = okw[j];
                val[k++] = oval[j];
            }
        }
        kw[k] = val[k] = NULL;
        c = PQconnectStartParams(kw, val, 0);
    }
    free(kw);
    free(val);
    return c;
}

static const char *opt(const PQconninfoOption *o, const char *kw)
{
    for (; o && o->keyword; o++)
        if (!strcmp(o->keyword, kw))
            return o->val;
    return NULL;
}

/* Split the effective lists into w (w->n stays 0 for lists that cannot be
 * sliced: one libpq itself rejects is left to it).  -1 out of memory. */
static int split_hosts(pqawait__walk *w, const char *host, const char *addr, const char *port)
{
    int nh = host && *host ? count_list(host) : 0;
    int na = addr && *addr ? count_list(addr) : 0;
    int np = port && *port ? count_list(port) : 0;
    int n = nh ? nh : na;
    if (n < 1 || (na && na != n) || (np > 1 && np != n))
        return 0; /* no explicit host (libpq's default), or a list libpq rejects */
    w->cap = n;
    if ((nh && !(w->host = split(host, n))) || (na && !(w->addr = split(addr, n))) ||
        !(w->port = calloc((size_t)n, sizeof *w->port)))
        return -1;
    char **given = np ? split(port, np) : NULL;
    if (np && !given)
        return -1;
    for (int i = 0; i < n; i++) {
        if (!(w->port[i] = strdup(np ? given[np > 1 ? i : 0] : ""))) {
            free_list(given, np);
            return -1;
        }
    }
    free_list(given, np);
    w->n = n;
    w->nport = np;
    return 0;
}

void pqawait__walk_free(pqawait__walk *w)
{
    if (!w)
        return;
    free_list(w->host, w->cap);
    free_list(w->addr, w->cap);
    free_list(w->port, w->cap);
    free(w->err);
    free(w);
}

pqawait__walk *pqawait__walk_new(const pqawait__hosts *h)
{
    pqawait__walk *w = calloc(1, sizeof *w);
    if (!w || !(w->err = strdup("")))
        goto oom;
    w->h = h;
    /* the probe: libpq fills in every option, then refuses this one
     * before any host name lookup or socket */
    static const char *const probe_kw[] = { "channel_binding" };
    static const char *const probe_val[] = { "pqawait-probe" };
    PGconn *probe = start_with(h, probe_kw, probe_val, 1);
    if (!probe)
        goto oom;
    PQconninfoOption *eff = PQconninfo(probe);
    if (!eff) {
        PQfinish(probe);
        goto oom;
    }
    /* fields libpq could not fill (a conninfo it rejects) come back NULL:
     * the list is then left to libpq, which reports the error itself */
    const char *t = opt(eff, "connect_timeout"), *tsa = opt(eff, "target_session_attrs");
    w->per_host = t ? atoi(t) : 0; /* as libpq reads it */
    if (w->per_host < 0)
        w->per_host = 0;
    else if (w->per_host > 0 && w->per_host < 2)
        w->per_host = 2; /* libpq: "a timeout of 1 s is too short" */
    int r = split_hosts(w, opt(eff, "host"), opt(eff, "hostaddr"), opt(eff, "port"));
    w->prefer = r == 0 && w->n > 0 && tsa && !strcmp(tsa, "prefer-standby");
    w->pass = w->prefer ? 1 : 0;
    PQconninfoFree(eff);
    /* BAD, so it never connected and PQfinish sends nothing (a libpq that
     * took the value would have started: the options are right all the
     * same, and PQfinish ends that attempt) */
    PQfinish(probe);
    if (r < 0)
        goto oom;
    return w;
oom:
    pqawait__walk_free(w);
    errno = ENOMEM;
    return NULL;
}

double pqawait__walk_timeout(const pqawait__walk *w)
{
    return w->per_host;
}

/* "a,b,c" from l[first..n-1], and `last` after them if not NULL; NULL when
 * out of memory. */
static char *join(char **l, int first, int n, const char *last)
{
    size_t len = 1 + (last ? strlen(last) + 1 : 0);
    for (int i = first; i < n; i++)
        len += strlen(l[i]) + 1;
    char *s = malloc(len), *p = s;
    if (!s)
        return NULL;
    for (int i = first; i < n; i++) {
        size_t k = strlen(l[i]);
        memcpy(p, l[i], k);
        p += k;
        *p++ = ',';
    }
    if (last) {
        size_t k = strlen(last);
        memcpy(p, last, k);
        p += k;
    } else if (p > s) {
        p--; /* the last comma */
    }
    *p = 0;
    return s;
}

/* k commas, then last: k empty list elements and `last`. */
static char *commas(int k, const char *last)
{
    size_t len = strlen(last);
    char *s = malloc((size_t)k + len + 1);
    if (s) {
        memset(s, ',', (size_t)k);
        memcpy(s + k, last, len + 1);
    }
    return s;
}

PGconn *pqawait__walk_start(pqawait__walk *w)
{
    w->at = w->first;
    if (w->n == 0 || (w->first == 0 && w->pass == 0))
        return start_with(w->h, NULL, NULL, 0); /* libpq walks it all by itself */
    int s = w->pass == 1; /* a pass-1 list ends with the sentinel */
    char *hs = NULL, *as = NULL, *ps = NULL;
    int ok = 1;
    if (w->host)
        ok &= (hs = join(w->host, w->first, w->n, s ? SENTINEL_HOST : NULL)) != NULL;
    else if (s) /* a hostaddr-only list: empty host entries ("" means none) */
        ok &= (hs = commas(w->n - w->first, SENTINEL_HOST)) != NULL;
    if (w->addr)
        ok &= (as = join(w->addr, w->first, w->n, s ? "" : NULL)) != NULL;
    if (w->nport > 1 || s) /* one port for all: it still applies to the rest */
        ok &= (ps = join(w->port, w->first, w->n, s ? SENTINEL_PORT : NULL)) != NULL;
    PGconn *c = NULL;
    if (ok) {
        static const char *const kw[] = { "host", "hostaddr", "port", "target_session_attrs" };
        const char *val[] = { hs, as, ps, w->pass == 1 ? "standby" : w->pass == 2 ? "any" : NULL };
        c = start_with(w->h, kw, val, 4);
    }
    free(hs);
    free(as);
    free(ps);
    return c;
}

static int at_sentinel(PGconn *c)
{
    const char *host = PQhost(c), *port = PQport(c);
    return host && port && !strcmp(host, SENTINEL_HOST) && !strcmp(port, SENTINEL_PORT);
}

int pqawait__walk_track(pqawait__walk *w, PGconn *c)
{
    if (w->n == 0 || at_sentinel(c))
        return 0;
    const char *host = PQhost(c), *port = PQport(c);
    if (!host)
        return 0;
    for (int i = w->at; i < w->n; i++) {
        /* PQhost names the host, else the address */
        const char *mine = w->host && *w->host[i] ? w->host[i] : w->addr ? w->addr[i] : "";
        if (*mine && strcmp(mine, host))
            continue;
        if (w->nport > 1 && *w->port[i] && port && strcmp(w->port[i], port))
            continue;
        int moved = i != w->at;
        w->at = i;
        return moved;
    }
    return 0;
}

/* Append s (n bytes) to the walk's message; on out of memory the message
 * just stays shorter. */
static void add_err(pqawait__walk *w, const char *s, size_t n)
{
    char *e = realloc(w->err, w->len + n + 1);
    if (!e)
        return;
    memcpy(e + w->len, s, n);
    w->len += n;
    e[w->len] = 0;
    w->err = e;
}

int pqawait__walk_next(pqawait__walk *w, PGconn *c, int timed_out)
{
    const char *m = c ? PQerrorMessage(c) : "out of memory\n";
    size_t n = strlen(m);
    int exhausted = c && !timed_out && at_sentinel(c);
    if (exhausted) {
        /* the sentinel's own line ("invalid port number") goes */
        if (n && m[n - 1] == '\n')
            n--;
        while (n && m[n - 1] != '\n')
            n--;
    }
    add_err(w, m, n);
    if (timed_out)
        add_err(w, "timeout expired\n", strlen("timeout expired\n")); /* as libpq's pqWaitTimed */
    if (w->n == 0 || !c)
        return 0; /* libpq's own walk: it is over (or no attempt could start) */
    if (timed_out) {
        if (w->at + 1 < w->n) {
            w->first = w->at + 1; /* on to the next host, same pass */
            return 1;
        }
        exhausted = 1; /* the last host: as if libpq ran out of hosts */
    }
    if (exhausted && w->pass == 1) {
        w->pass = 2; /* prefer-standby: no standby, any server from the top */
        w->first = 0;
        return 1;
    }
    return 0;
}

const char *pqawait__walk_error(const pqawait__walk *w)
{
    return w->err;
}
