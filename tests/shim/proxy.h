/*
 * proxy.h -- a loopback TCP proxy that delays every chunk by D ms, and
 * injects network faults on demand.
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
 *
 * Fault modes, for tests/fault: accept and never answer (hold), stop
 * forwarding (stall), reset every connection (drop), and cut a connection
 * in the middle of a protocol message or TLS record (cut).  The bytes that
 * do pass are always the real server's, unchanged.
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

/* Held connections: accepted so far, closed by their peer so far, the
 * longest time one stayed open before its peer closed it (seconds), and
 * the most that were open at once. */
typedef struct pqa_proxy_held {
    unsigned long accepted, closed;
    double longest;
    unsigned long max_open;
} pqa_proxy_held;
void pqa_proxy_held_stats(pqa_proxy *p, pqa_proxy_held *out);

/* ---- fault modes (tests/fault) ----
 *
 * Each call takes effect in the proxy's thread at once (it is woken up);
 * connections the proxy already forwards are "live". */

/* Drop every live connection now: both ends are reset (close with
 * SO_LINGER 0, so each peer gets an RST), as a middlebox that forgets
 * its connections does.  New connections are forwarded as before. */
void pqa_proxy_drop(pqa_proxy *p);

/* Cut every live connection in the middle of a frame.  Frames are
 * recognised per connection from its first bytes: after an SSLRequest
 * answered 'S', the server's stream is TLS records (5-byte header); else
 * it is PostgreSQL messages (type byte + length).  The client's stream is
 * cut by byte count only.  Once `after` more bytes have been forwarded in
 * the direction chosen, the proxy forwards on to the first position that
 * lies inside a frame's body -- at least one body byte forwarded, at least
 * one byte of the frame held back -- then forwards nothing more on that
 * connection and either closes both ends (PQA_CUT_CLOSE: the client reads
 * EOF in the middle of the frame) or keeps them open, silent
 * (PQA_CUT_STALL).  Connections accepted later are not cut.
 * Returns the number of live connections armed. */
typedef enum pqa_cut_dir { PQA_CUT_TO_CLIENT, PQA_CUT_TO_SERVER } pqa_cut_dir;
typedef enum pqa_cut_then { PQA_CUT_CLOSE, PQA_CUT_STALL } pqa_cut_then;
int pqa_proxy_cut(pqa_proxy *p, pqa_cut_dir dir, unsigned long after, pqa_cut_then then);

/* The same cut for every connection accepted from now on, counted from
 * its first byte (a TLS handshake cut mid-record, for instance), until
 * pqa_proxy_cut_new_stop. */
void pqa_proxy_cut_new(pqa_proxy *p, pqa_cut_dir dir, unsigned long after, pqa_cut_then then);
void pqa_proxy_cut_new_stop(pqa_proxy *p);

/* What the cuts did: how many happened, and for the last one when
 * (CLOCK_MONOTONIC seconds: TCP flow control may hold a cut back well past
 * pqa_proxy_cut), the kind of stream ('T' TLS records, 'P' PostgreSQL
 * messages, 'B' bytes only), the frame's type byte (TLS content type, 23 =
 * application data; message type, 'D' = DataRow), its total length and how
 * many of its bytes were forwarded before the cut. */
typedef struct pqa_proxy_cut_info {
    unsigned long cuts;
    double at;
    char stream;
    unsigned char frame_type;
    unsigned long frame_len, frame_sent;
} pqa_proxy_cut_info;
void pqa_proxy_cut_stats(pqa_proxy *p, pqa_proxy_cut_info *out);

/* A cancel request PostgreSQL ignores for certain (test_recancel.c).
 * From now on, what clients send on the connections already forwarded is
 * read but held in the proxy, until a connection accepted after this call
 * -- a cancel request, forwarded as usual -- has been closed by the server:
 * the request is answered, its backend was signalled while idle, waiting
 * for the bytes held here (PostgreSQL ignores a cancel then).  The held
 * bytes go on at that moment; everything else flows as usual all along.
 * Returns once the proxy's thread has shut the gate. */
void pqa_proxy_gate_sends(pqa_proxy *p);

/* How many times the gate opened so far. */
unsigned long pqa_proxy_gate_opened(pqa_proxy *p);

/* Live forwarded connections now (updated by the proxy's thread). */
unsigned pqa_proxy_live(pqa_proxy *p);

/* Stops the thread, closes every connection and frees the proxy. */
void pqa_proxy_stop(pqa_proxy *p);

#endif
