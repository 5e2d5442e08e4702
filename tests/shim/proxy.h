/*
 * proxy.h -- a loopback TCP proxy that delays every chunk by D ms.
 *
 * A test helper, not a mock: it forwards every byte to the real server,
 * unchanged, but holds each chunk it reads for D ms before writing it on, in
 * both directions.  Through it, every round trip takes >= 2*D, so any place
 * where a libpq call inside a task waited by blocking the thread instead of
 * suspending the task shows up as a loop stall of >= D, far above the noise.
 *
 * It runs in its own thread with its own plain poll() loop (no awaitlet, no
 * libev): outside any task, so the shim's interposed poll() must pass it
 * straight to the kernel -- which this also exercises.
 */
#ifndef PQA_TESTS_PROXY_H
#define PQA_TESTS_PROXY_H

typedef struct pqa_proxy pqa_proxy;

/* Starts a proxy on an ephemeral 127.0.0.1 port forwarding to
 * 127.0.0.1:target_port, delaying chunks by delay_ms.  NULL with errno on
 * failure. */
pqa_proxy *pqa_proxy_start(int target_port, int delay_ms);

/* The port it listens on. */
int pqa_proxy_port(const pqa_proxy *p);

/* Connections accepted and bytes forwarded so far (both directions). */
unsigned long pqa_proxy_accepted(const pqa_proxy *p);
unsigned long long pqa_proxy_bytes(const pqa_proxy *p);

/* From now on (on != 0), connections accepted are not forwarded: the proxy
 * accepts them, reads and discards whatever arrives and never answers,
 * until the peer closes (what a hung postmaster looks like to a cancel
 * request, while the sessions already forwarded keep working).  0 closes
 * every held connection and forwards new ones again. */
void pqa_proxy_hold_new(pqa_proxy *p, int on);

/* A network that stopped forwarding (on != 0): from now on no byte moves
 * on the connections already forwarded, in either direction (what was read
 * stays queued in the proxy, what was not stays in the kernel), and new
 * connections are held as with pqa_proxy_hold_new -- so a cancel request
 * meets the same dead end.  0 lets everything flow again (held connections
 * are closed).  For the interruption bounds (tests/shim/test_bound.c). */
void pqa_proxy_stall(pqa_proxy *p, int on);

/* Held connections: accepted so far, closed by their peer so far, and the
 * longest time one stayed open before its peer closed it (seconds). */
typedef struct pqa_proxy_held {
    unsigned long accepted, closed;
    double longest;
} pqa_proxy_held;
void pqa_proxy_held_stats(pqa_proxy *p, pqa_proxy_held *out);

/* Stops the thread, closes every connection and frees the proxy. */
void pqa_proxy_stop(pqa_proxy *p);

#endif
