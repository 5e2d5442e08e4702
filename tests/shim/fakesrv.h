/*
 * fakesrv.h -- two misbehaving "servers" for connect/ping failure paths the
 * real server cannot produce on demand.
 *
 * - black hole: listens (the kernel completes TCP handshakes) but never
 *   answers, so libpq's connect_timeout must fire.
 * - rejecter: answers every startup packet with FATAL 57P03 ("the database
 *   system is starting up"), which PQping reports as PQPING_REJECT.
 * Both live on ephemeral 127.0.0.1 ports; the rejecter answers from its own
 * thread (plain blocking sockets), so a blocking PQping on the test's main
 * thread still gets its answer.
 */
#ifndef PQA_TESTS_FAKESRV_H
#define PQA_TESTS_FAKESRV_H

typedef struct pqa_fakesrv pqa_fakesrv;

pqa_fakesrv *pqa_fakesrv_blackhole(void);
pqa_fakesrv *pqa_fakesrv_rejecter(void);
int pqa_fakesrv_port(const pqa_fakesrv *f);
void pqa_fakesrv_stop(pqa_fakesrv *f);

/* A port on 127.0.0.1 nothing listens on (bound, then closed). */
int pqa_closed_port(void);

#endif
