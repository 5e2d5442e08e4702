/*
 * http.h -- the HTTP/1.1 subset pqawait-server speaks: requests with
 * Content-Length bodies, keep-alive, pipelining; strict limits.
 *
 * The parser is incremental in the simplest way: it is handed everything
 * received so far and either finds one whole request at the front, or says
 * it needs more, or names the status that rejects the input.  After a
 * rejection the connection cannot be trusted to be in step, so the server
 * answers and closes it.
 */
#ifndef PQA_SERVER_HTTP_H
#define PQA_SERVER_HTTP_H

#include <stddef.h>

#define HTTP_MAX_HEADER 8192    /* request line + headers: beyond, 431 */
#define HTTP_MAX_TARGET 2048    /* request target: beyond, 414 */
#define HTTP_MAX_BODY 65536     /* Content-Length: beyond, 413 */
#define HTTP_MAX_FIELDS 64      /* header fields: beyond, 431 */

struct http_request {
    char method[8];
    char path[HTTP_MAX_TARGET + 1];  /* decoded no further: ids are digits */
    char query[HTTP_MAX_TARGET + 1]; /* after '?', "" if none */
    int minor;                       /* HTTP/1.<minor>: 0 or 1 */
    int keepalive;                   /* the connection may carry another request */
    size_t content_length;
    char *body;                      /* malloc'd, NUL-terminated (also when empty) */
};

/* Look for one request at the front of buf[0..len).  Returns the number of
 * bytes it occupies (*rq filled: free rq->body with http_request_free), 0
 * when more input is needed, or -STATUS when the input must be rejected:
 * 400 (malformed: request line, header syntax, bad or conflicting
 * Content-Length, no Host in HTTP/1.1), 413 (body over HTTP_MAX_BODY), 414
 * (target too long), 431 (header section or field count over the limits),
 * 501 (Transfer-Encoding, or a method this server does not know), 505
 * (an HTTP version other than 1.0 and 1.1). */
long http_parse(const char *buf, size_t len, struct http_request *rq);
void http_request_free(struct http_request *rq);

/* The reason phrase of a status code. */
const char *http_reason(int status);

/* A growable byte buffer. */
struct sbuf {
    char *p;
    size_t len, cap;
    int oom;    /* an append failed: the content is cut short */
};
void sb_add(struct sbuf *b, const char *s, size_t n);
void sb_puts(struct sbuf *b, const char *s);
void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s as a JSON string, quotes included: ", \ and control characters
 * escaped; bytes >= 0x80 passed through (the database speaks UTF-8). */
void sb_json_str(struct sbuf *b, const char *s);
void sb_free(struct sbuf *b);

/* Append a whole response: status line, Content-Type: application/json,
 * Content-Length, Connection (close, or keep-alive for an HTTP/1.0 client
 * that asked), extra header lines (each ending in \r\n, may be NULL), and
 * the body. */
void http_response(struct sbuf *out, int status, int minor, int keepalive, const char *extra,
                   const char *body, size_t blen);

#endif
