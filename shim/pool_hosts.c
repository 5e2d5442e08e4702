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
 *  - but a silent *address* of a host name is libpq's try_next_addr: its
 *    blocking connect goes on to the name's next address, and the list of
 *    them is private to libpq.  So the walk looks the name up itself (as
 *    libpq does: any family, stream sockets; on a worker thread, the task
 *    suspended), finds the silent one (PQhostaddr) and gives libpq the
 *    addresses after it one an attempt -- host=name (libpq keeps the name
 *    for the password file, TLS and PQhost), hostaddr=address, the name's
 *    port, then the sentinel (below), so libpq stops after that address
 *    whatever made it leave.  Why it left decides what follows, as in
 *    libpq: before the TCP connection was made (refused, unreachable:
 *    try_next_addr) the name's next address; after the server answered
 *    (refused for target_session_attrs, 57P03 "cannot connect now":
 *    try_next_host) the host after the name.  PQstatus at the last look
 *    tells which (libpq has no try_next_addr past CONNECTION_STARTED).
 *    libpq writes `at "ADDR", port P failed: ' for such an attempt where
 *    its blocking connect writes `at "NAME" (ADDR), port P failed: ', and
 *    the walk writes it back so;
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
 * Left different, after a silent address only: the lookup is the walk's
 * own, so a resolver that changes its order between two lookups (DNS round
 * robin) may make the remaining addresses not those libpq had.
 *
 * Nothing here touches the pool's state, and only pqawait__walk_lookup
 * suspends (it decides nothing); the connector (in pool_tasks.c) decides
 * when an attempt has ended.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
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
    char *cur;               /* PQhostaddr at the last look: a new one restarts the timer */
    /* a host name's addresses after the one that stayed silent, given to
     * libpq one an attempt (host=name, hostaddr=address, then the sentinel) */
    int xhost;               /* their host; -1: none */
    char **xaddr;            /* the addresses still to try, the attempt's first */
    int nx;
    int reached;             /* the attempt's libpq was past the TCP connect at the last look */
    /* walk_lookup's answer: the addresses of host lhost (-1: none) */
    int lhost;
    char **laddr;
    int nl;
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

/* The walk gives libpq no more addresses of a name. */
static void drop_expansion(pqawait__walk *w)
{
    free_list(w->xaddr, w->nx);
    w->xaddr = NULL;
    w->nx = 0;
    w->xhost = -1;
}

static void drop_lookup(pqawait__walk *w)
{
    free_list(w->laddr, w->nl);
    w->laddr = NULL;
    w->nl = 0;
    w->lhost = -1;
}

void pqawait__walk_free(pqawait__walk *w)
{
    if (!w)
        return;
    free_list(w->host, w->cap);
    free_list(w->addr, w->cap);
    free_list(w->port, w->cap);
    drop_expansion(w);
    drop_lookup(w);
    free(w->cur);
    free(w->err);
    free(w);
}

pqawait__walk *pqawait__walk_new(const pqawait__hosts *h)
{
    pqawait__walk *w = calloc(1, sizeof *w);
    if (!w || !(w->err = strdup("")))
        goto oom;
    w->h = h;
    w->xhost = w->lhost = -1;
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

/* "v[0],v[1],...": a libpq list of n elements; NULL when out of memory. */
static char *join(const char *const *v, int n)
{
    size_t len = 1;
    for (int i = 0; i < n; i++)
        len += strlen(v[i]) + 1;
    char *s = malloc(len), *p = s;
    if (!s)
        return NULL;
    for (int i = 0; i < n; i++) {
        size_t k = strlen(v[i]);
        if (i)
            *p++ = ',';
        memcpy(p, v[i], k);
        p += k;
    }
    *p = 0;
    return s;
}

/* An attempt over the list from host `first` on, in pass 1 followed by the
 * sentinel; or, on a name's addresses, one of them followed by the
 * sentinel (so libpq stops after it, whatever made it leave). */
static PGconn *start_slice(pqawait__walk *w)
{
    int k = w->xhost >= 0;
    int s = w->pass == 1 || k;
    size_t total = (size_t)(k ? 1 : w->n - w->first) + (size_t)s;
    const char **hv = calloc(total, sizeof *hv), **av = calloc(total, sizeof *av);
    const char **pv = calloc(total, sizeof *pv);
    char *hs = NULL, *as = NULL, *ps = NULL;
    PGconn *c = NULL;
    if (hv && av && pv) {
        int e = 0;
        if (k) {
            hv[e] = w->host[w->xhost]; /* libpq keeps using the name: password file, TLS */
            av[e] = w->xaddr[0];
            pv[e++] = w->port[w->xhost];
        }
        for (int i = w->first; i < w->n && !k; i++, e++) {
            hv[e] = w->host ? w->host[i] : ""; /* a hostaddr-only list: "" means none */
            av[e] = w->addr ? w->addr[i] : "";
            pv[e] = w->port[i];
        }
        if (s) {
            hv[e] = SENTINEL_HOST;
            av[e] = "";
            pv[e++] = SENTINEL_PORT;
        }
        int ok = 1;
        if (w->host || s)
            ok &= (hs = join(hv, e)) != NULL;
        if (w->addr || k)
            ok &= (as = join(av, e)) != NULL;
        if (w->nport > 1 || s) /* one port for all: it still applies to the rest */
            ok &= (ps = join(pv, e)) != NULL;
        if (ok) {
            static const char *const kw[] = { "host", "hostaddr", "port", "target_session_attrs" };
            const char *val[] = { hs, as, ps, w->pass == 1 ? "standby" : w->pass == 2 ? "any" : NULL };
            c = start_with(w->h, kw, val, 4);
        }
    }
    free(hv);
    free(av);
    free(pv);
    free(hs);
    free(as);
    free(ps);
    return c;
}

PGconn *pqawait__walk_start(pqawait__walk *w)
{
    w->at = w->xhost >= 0 ? w->xhost : w->first;
    w->reached = 0;
    PGconn *c;
    if (w->n == 0 || (w->first == 0 && w->pass == 0 && w->xhost < 0))
        c = start_with(w->h, NULL, NULL, 0); /* libpq walks it all by itself */
    else
        c = start_slice(w);
    free(w->cur);
    w->cur = c && PQhostaddr(c) && *PQhostaddr(c) ? strdup(PQhostaddr(c)) : NULL;
    if (c && w->xhost >= 0)
        (void)pqawait__walk_track(w, c); /* PQconnectStart may have got past the connect */
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
    const char *host = PQhost(c), *port = PQport(c), *addr = PQhostaddr(c);
    if (!host)
        return 0;
    int moved = 0;
    if (addr && *addr && (!w->cur || strcmp(w->cur, addr))) {
        moved = w->cur != NULL; /* libpq's next address (of its own lookup too) */
        free(w->cur);
        w->cur = strdup(addr);
    }
    if (w->xhost >= 0) {
        /* one address of a name: libpq leaves it for its next address
         * (try_next_addr) only before the TCP connection is made, for the
         * next host (try_next_host: refused for target_session_attrs,
         * 57P03) only after the server answered */
        ConnStatusType st = PQstatus(c);
        w->reached = st != CONNECTION_STARTED && st != CONNECTION_NEEDED && st != CONNECTION_BAD;
        return moved;
    }
    int from = w->at;
    for (int i = from; i < w->n; i++) {
        /* PQhost names the host, else the address */
        const char *mine = w->host && *w->host[i] ? w->host[i] : w->addr ? w->addr[i] : "";
        if (*mine && strcmp(mine, host))
            continue;
        if (w->nport > 1 && *w->port[i] && port && strcmp(w->port[i], port))
            continue;
        moved |= i != w->at;
        w->at = i;
        return moved;
    }
    return moved;
}

/* ---- a host name's addresses ---------------------------------------------- */

/* A host entry libpq looks up by name (not a socket directory, no
 * hostaddr, not an address literal): one that may have several addresses. */
static int is_name(const pqawait__walk *w, int i)
{
    unsigned char buf[sizeof(struct in6_addr)];
    const char *h = w->host ? w->host[i] : "";
    return *h && *h != '/' && *h != '@' && !(w->addr && *w->addr[i]) && inet_pton(AF_INET, h, buf) != 1 &&
           inet_pton(AF_INET6, h, buf) != 1;
}

int pqawait__walk_lookup(pqawait__walk *w, PGconn *c)
{
    if (!c || w->n == 0 || w->lhost == w->at || w->xhost >= 0)
        return 0;
    const char *addr = PQhostaddr(c);
    drop_lookup(w);
    if (!is_name(w, w->at) || !addr || !*addr) {
        w->lhost = w->at; /* nothing to look up: the walk goes on to the next host */
        return 0;
    }
    char **l;
    int n;
    if (pqawait__addrs_lookup(w->host[w->at], &l, &n) < 0) /* suspends */
        return -1; /* interrupted: the caller looks at the pool, then asks again */
    w->lhost = w->at; /* none found (or no memory): as if the name had one address */
    w->laddr = l;
    w->nl = n;
    return 1;
}

/* The name's first remaining address is done with. */
static void drop_first_addr(pqawait__walk *w)
{
    free(w->xaddr[0]);
    memmove(w->xaddr, w->xaddr + 1, (size_t)(w->nx - 1) * sizeof *w->xaddr);
    w->nx--;
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

/* Append m (n bytes), an attempt's message about one address of a name,
 * written as libpq writes a name's.  Given hostaddr, libpq says
 *     connection to server at "ADDR", port P failed: ...
 * where its blocking connect, which looked the name up itself, says
 *     connection to server at "NAME" (ADDR), port P failed: ...
 * English only, like "timeout expired". */
static void add_named(pqawait__walk *w, const char *m, size_t n)
{
    const char *name = w->host[w->xhost], *port = *w->port[w->xhost] ? w->port[w->xhost] : "5432";
    char was[512], now[1024];
    int k = snprintf(was, sizeof was, "\"%s\", port %s failed: ", w->xaddr[0], port);
    int l = snprintf(now, sizeof now, "\"%s\" (%s), port %s failed: ", name, w->xaddr[0], port);
    size_t done = 0;
    if (k > 0 && (size_t)k < sizeof was && l > 0 && (size_t)l < sizeof now) {
        for (size_t i = 0; i + (size_t)k <= n; i++) {
            if (memcmp(m + i, was, (size_t)k))
                continue;
            add_err(w, m + done, i - done);
            add_err(w, now, (size_t)l);
            done = i + (size_t)k;
            i = done - 1;
        }
    }
    add_err(w, m + done, n - done);
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
    if (c && w->xhost >= 0 && w->nx > 0)
        add_named(w, m, n);
    else
        add_err(w, m, n);
    if (timed_out)
        add_err(w, "timeout expired\n", strlen("timeout expired\n")); /* as libpq's pqWaitTimed */
    /* what walk_lookup found for the host the attempt ended on */
    char **look = c && w->lhost == w->at ? w->laddr : NULL;
    int nl = look ? w->nl : 0;
    if (look)
        w->laddr = NULL, w->nl = 0;
    drop_lookup(w);
    if (w->n == 0 || !c) {
        free_list(look, nl);
        return 0; /* libpq's own walk: it is over (or no attempt could start) */
    }
    if (w->xhost >= 0) {
        /* one address of a name: past it (the sentinel), or silent */
        int at = w->xhost;
        if (!timed_out && !exhausted) {
            drop_expansion(w); /* an error that ends libpq's walk */
            return 0;
        }
        if ((timed_out || !w->reached) && w->nx > 1) {
            drop_first_addr(w); /* try_next_addr: the name's next address */
            return 1;
        }
        drop_expansion(w); /* try_next_host, or the name's last address */
        if (at + 1 < w->n) {
            w->first = at + 1;
            return 1;
        }
        exhausted = 1;
    } else if (timed_out) {
        const char *addr = PQhostaddr(c);
        int k = -1;
        for (int j = 0; j < nl && addr && k < 0; j++)
            if (!strcmp(look[j], addr))
                k = j;
        if (k >= 0 && k + 1 < nl) {
            /* libpq would try the name's next address: the ones after the
             * silent one, an attempt each */
            for (int j = 0; j <= k; j++)
                free(look[j]);
            memmove(look, look + k + 1, (size_t)(nl - k - 1) * sizeof *look);
            w->xaddr = look;
            w->nx = nl - k - 1;
            w->xhost = w->at;
            return 1;
        }
        free_list(look, nl);
        look = NULL;
        if (w->at + 1 < w->n) {
            w->first = w->at + 1; /* on to the next host, same pass */
            return 1;
        }
        exhausted = 1; /* the last host: as if libpq ran out of hosts */
    }
    free_list(look, nl);
    drop_expansion(w);
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
