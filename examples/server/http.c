/*
 * http.c -- request parsing, responses, and the byte buffer they are built
 * in (see http.h).
 *
 * Strict where being lenient would make a request mean two things: a
 * Content-Length that is not all digits, two that disagree, or one next to
 * Transfer-Encoding (RFC 9112's request smuggling cases) are refused; so
 * are obsolete line folding, whitespace before a field's colon, control
 * characters in values and a missing Host in HTTP/1.1.  Lenient where it
 * costs nothing: a bare LF ends a line as well as CRLF.
 */
#include "http.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- buffers ------------------------------------------------------------------- */

void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void sb_puts(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        sb_add(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_add(b, big, (size_t)n);
    free(big);
}

void sb_json_str(struct sbuf *b, const char *s)
{
    sb_add(b, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch >= 0x20 && ch != '"' && ch != '\\')
            continue;
        sb_add(b, run, (size_t)(s - run));
        char esc[8];
        switch (ch) {
        case '"': sb_add(b, "\\\"", 2); break;
        case '\\': sb_add(b, "\\\\", 2); break;
        case '\n': sb_add(b, "\\n", 2); break;
        case '\r': sb_add(b, "\\r", 2); break;
        case '\t': sb_add(b, "\\t", 2); break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", ch);
            sb_add(b, esc, 6);
        }
        run = s + 1;
    }
    sb_add(b, run, (size_t)(s - run));
    sb_add(b, "\"", 1);
}

void sb_free(struct sbuf *b)
{
    free(b->p);
    *b = (struct sbuf){ 0 };
}

/* ---- parsing --------------------------------------------------------------------- */

static int is_tchar(int c)
{
    return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* The end of the line starting at p (the LF), or NULL. */
static const char *line_end(const char *p, const char *end)
{
    const char *lf = memchr(p, '\n', (size_t)(end - p));
    return lf;
}

/* [p, lf) without a trailing CR */
static const char *trim_cr(const char *p, const char *lf)
{
    return (lf > p && lf[-1] == '\r') ? lf - 1 : lf;
}

static int parse_request_line(const char *p, const char *e, struct http_request *rq)
{
    const char *sp = memchr(p, ' ', (size_t)(e - p));
    if (!sp || sp == p)
        return 400;
    size_t mlen = (size_t)(sp - p);
    for (const char *q = p; q < sp; q++)
        if (!is_tchar((unsigned char)*q))
            return 400;
    if (mlen >= sizeof rq->method)
        return 501;
    memcpy(rq->method, p, mlen);
    rq->method[mlen] = 0;
    static const char *known[] = { "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH",
                                   "OPTIONS", "TRACE", "CONNECT" };
    int ok = 0;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        ok |= strcmp(rq->method, known[i]) == 0;
    if (!ok)
        return 501;
    const char *t = sp + 1;
    const char *sp2 = memchr(t, ' ', (size_t)(e - t));
    if (!sp2 || sp2 == t)
        return 400;
    if ((size_t)(sp2 - t) > HTTP_MAX_TARGET)
        return 414;
    if (*t != '/')
        return 400; /* origin-form only */
    for (const char *q = t; q < sp2; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
            return 400;
    const char *qm = memchr(t, '?', (size_t)(sp2 - t));
    const char *pend = qm ? qm : sp2;
    memcpy(rq->path, t, (size_t)(pend - t));
    rq->path[pend - t] = 0;
    if (qm) {
        memcpy(rq->query, qm + 1, (size_t)(sp2 - qm - 1));
        rq->query[sp2 - qm - 1] = 0;
    } else {
        rq->query[0] = 0;
    }
    const char *v = sp2 + 1;
    size_t vlen = (size_t)(e - v);
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || !isdigit((unsigned char)v[5]) || v[6] != '.' ||
        !isdigit((unsigned char)v[7]))
        return 400;
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return 505;
    rq->minor = v[7] - '0';
    return 0;
}

/* Does the comma-separated list [v, e) hold token `tok` (any case)? */
static int has_token(const char *v, const char *e, const char *tok)
{
    size_t n = strlen(tok);
    while (v < e) {
        while (v < e && (*v == ' ' || *v == '\t' || *v == ','))
            v++;
        const char *s = v;
        while (v < e && *v != ',')
            v++;
        const char *te = v;
        while (te > s && (te[-1] == ' ' || te[-1] == '\t'))
            te--;
        if ((size_t)(te - s) == n && strncasecmp(s, tok, n) == 0)
            return 1;
    }
    return 0;
}

long http_parse(const char *buf, size_t len, struct http_request *rq)
{
    const char *end = buf + len;
    /* the header section ends with an empty line */
    const char *p = buf, *hdr_end = NULL;
    int nlines = 0;
    while (p < end) {
        const char *lf = line_end(p, end);
        if (!lf)
            break;
        if (trim_cr(p, lf) == p) {
            if (nlines == 0) { /* empty lines before a request: tolerated */
                p = lf + 1;
                buf = p;
                continue;
            }
            hdr_end = lf + 1;
            break;
        }
        nlines++;
        p = lf + 1;
        if ((size_t)(p - buf) > HTTP_MAX_HEADER)
            return -431;
    }
    if (!hdr_end) {
        if ((size_t)(end - buf) > HTTP_MAX_HEADER)
            return -431;
        /* a first line that is already too long for any valid request */
        const char *lf = line_end(buf, end);
        if (!lf && (size_t)(end - buf) > HTTP_MAX_TARGET + 32)
            return -414;
        return 0;
    }
    if (nlines - 1 > HTTP_MAX_FIELDS)
        return -431;
    memset(rq, 0, sizeof *rq);
    const char *lf = line_end(buf, hdr_end);
    int st = parse_request_line(buf, trim_cr(buf, lf), rq);
    if (st)
        return -st;
    int have_len = 0, have_host = 0, conn_close = 0, conn_keep = 0;
    size_t clen = 0;
    for (p = lf + 1; p < hdr_end;) {
        lf = line_end(p, hdr_end);
        const char *e = trim_cr(p, lf);
        if (e == p)
            break; /* the empty line */
        if (*p == ' ' || *p == '\t')
            return -400; /* obsolete line folding */
        const char *colon = memchr(p, ':', (size_t)(e - p));
        if (!colon || colon == p)
            return -400;
        for (const char *q = p; q < colon; q++)
            if (!is_tchar((unsigned char)*q))
                return -400; /* includes whitespace before the colon */
        const char *v = colon + 1, *ve = e;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        for (const char *q = v; q < ve; q++)
            if (((unsigned char)*q < 0x20 && *q != '\t') || *q == 0x7f)
                return -400;
        size_t nlen = (size_t)(colon - p);
        if (nlen == 14 && strncasecmp(p, "Content-Length", 14) == 0) {
            if (v == ve)
                return -400;
            for (const char *q = v; q < ve; q++)
                if (!isdigit((unsigned char)*q))
                    return -400;
            if (ve - v > 10)
                return -413; /* digits, but far beyond any body we take */
            size_t n = 0;
            for (const char *q = v; q < ve; q++)
                n = n * 10 + (size_t)(*q - '0');
            if (have_len && n != clen)
                return -400;
            have_len = 1;
            clen = n;
        } else if (nlen == 17 && strncasecmp(p, "Transfer-Encoding", 17) == 0) {
            return -501;
        } else if (nlen == 4 && strncasecmp(p, "Host", 4) == 0) {
            if (have_host)
                return -400;
            have_host = 1;
        } else if (nlen == 10 && strncasecmp(p, "Connection", 10) == 0) {
            conn_close |= has_token(v, ve, "close");
            conn_keep |= has_token(v, ve, "keep-alive");
        }
        p = lf + 1;
    }
    if (rq->minor == 1 && !have_host)
        return -400;
    if (clen > HTTP_MAX_BODY)
        return -413;
    size_t hlen = (size_t)(hdr_end - buf);
    if ((size_t)(end - hdr_end) < clen)
        return 0; /* the body is still coming */
    rq->content_length = clen;
    rq->keepalive = rq->minor == 1 ? !conn_close : (conn_keep && !conn_close);
    rq->body = malloc(clen + 1);
    if (!rq->body)
        return -503;
    memcpy(rq->body, hdr_end, clen);
    rq->body[clen] = 0;
    /* bytes consumed, counting tolerated empty lines before the request */
    return (long)((size_t)(buf - (end - len)) + hlen + clen);
}

void http_request_free(struct http_request *rq)
{
    free(rq->body);
    rq->body = NULL;
}

/* ---- responses -------------------------------------------------------------------- */

const char *http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

void http_response(struct sbuf *out, int status, int minor, int keepalive, const char *extra,
                   const char *body, size_t blen)
{
    sb_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n",
              status, http_reason(status), blen);
    if (!keepalive)
        sb_puts(out, "Connection: close\r\n");
    else if (minor == 0)
        sb_puts(out, "Connection: keep-alive\r\n");
    if (extra)
        sb_puts(out, extra);
    sb_add(out, "\r\n", 2);
    sb_add(out, body, blen);
}
