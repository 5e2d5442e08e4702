/*
 * frames.h -- following the frame boundaries of a PostgreSQL connection's
 * stream, for the fault proxy's cuts (proxy.c, pqa_proxy_cut).
 *
 * A cut must land strictly inside a frame's body -- a DataRow, a CopyData,
 * a TLS record -- so that the client reads a frame that starts and never
 * ends.  A framer is fed the bytes of one direction as they are forwarded
 * and knows, after each byte, whether the position lies inside a body.
 * The server's stream is PostgreSQL messages (type byte + 4-byte length),
 * or TLS records (5-byte header) once the server answered the client's
 * SSLRequest with 'S'; the client's stream is followed by byte count only.
 */
#ifndef PQA_TESTS_FRAMES_H
#define PQA_TESTS_FRAMES_H

#include <stddef.h>

typedef struct pqa_framer {
    char kind;              /* 0: not known yet; 'S': the server's 1-byte answer
                               to an SSLRequest comes next; 'P' messages, 'T' TLS
                               records, 'B' bytes only */
    unsigned char hdr[5];
    int have;               /* header bytes seen of the current frame */
    unsigned long body_len; /* body of the current frame, once its header is in */
    unsigned long body_done;
} pqa_framer;

/* The server's stream starts once the client's first `have` (up to 8)
 * bytes are in: an SSLRequest (length 8, code 80877103) is answered by one
 * byte first, anything else by messages. */
void pqa_framer_start(pqa_framer *f, const unsigned char first[8], int have);

/* Follows up to n bytes; returns how many it consumed (header bytes one at
 * a time, a body in one step). */
size_t pqa_framer_take(pqa_framer *f, const unsigned char *b, size_t n);

/* 1 if the position is strictly inside a frame's body: at least one body
 * byte passed, at least one still to come (always, for a byte stream). */
int pqa_framer_inside(const pqa_framer *f);

/* How many of the n bytes b may be forwarded before a cut armed to fall
 * `budget` bytes from now, at the first position inside a body (n if the
 * cut lies beyond them).  Works on *f, which the caller passes as a copy. */
size_t pqa_framer_limit(pqa_framer *f, unsigned long budget, const unsigned char *b, size_t n);

#endif
