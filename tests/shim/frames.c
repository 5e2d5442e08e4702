/*
 * frames.c -- the fault proxy's frame follower (see frames.h): enough of
 * the PostgreSQL and TLS framing to tell a header from a body, nothing
 * more (no content is parsed or changed).
 */
#include "frames.h"

#include <stdint.h>

static uint32_t be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

void pqa_framer_start(pqa_framer *f, const unsigned char first[8], int have)
{
    if (have == 8 && be32(first) == 8 && be32(first + 4) == 80877103u)
        f->kind = 'S';
    else
        f->kind = 'P';
}

size_t pqa_framer_take(pqa_framer *f, const unsigned char *b, size_t n)
{
    if (f->kind == 'B')
        return n;
    if (f->kind == 'S') {
        f->kind = b[0] == 'S' ? 'T' : 'P';
        return 1;
    }
    if (f->have < 5) {
        f->hdr[f->have++] = b[0];
        if (f->have == 5) {
            f->body_len = f->kind == 'T' ? (unsigned long)f->hdr[3] << 8 | f->hdr[4]
                                         : (unsigned long)be32(f->hdr + 1) - 4;
            f->body_done = 0;
            if (f->body_len == 0)
                f->have = 0;
        }
        return 1;
    }
    unsigned long left = f->body_len - f->body_done;
    size_t k = n < left ? n : (size_t)left;
    f->body_done += k;
    if (f->body_done == f->body_len)
        f->have = 0;
    return k;
}

int pqa_framer_inside(const pqa_framer *f)
{
    if (f->kind == 'B')
        return 1;
    return (f->kind == 'P' || f->kind == 'T') && f->have == 5 && f->body_done >= 1 &&
           f->body_done < f->body_len;
}

size_t pqa_framer_limit(pqa_framer *f, unsigned long budget, const unsigned char *b, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (budget == 0 && pqa_framer_inside(f))
            return i;
        /* one byte at a time: cuts are rare and short */
        i += pqa_framer_take(f, b + i, 1);
        if (budget)
            budget--;
    }
    return n;
}
