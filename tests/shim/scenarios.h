/*
 * scenarios.h -- the differential test's scenario tables.
 *
 * A scenario drives libpq calls and writes everything observable into a
 * record.  test_differential.c runs each one outside a task (the shim passes
 * straight to libpq) and inside a task (the shim's cooperative path) with a
 * fresh connection each time and requires byte-identical records.  So a
 * scenario must be deterministic: no backend pids, no server-assigned OIDs,
 * no timing-dependent loop counts in the record.
 */
#ifndef PQA_TESTS_SCENARIOS_H
#define PQA_TESTS_SCENARIOS_H

#include <libpq-fe.h>

#include "common.h"
#include "record.h"

typedef void (*pqa_scenario_fn)(PGconn *conn, struct record *out);

/* kind: the connection the driver opens (and records) before calling fn;
 * PQA_SELF: none, fn gets NULL and connects by itself. */
#define PQA_SELF (-1)

struct pqa_scenario {
    const char *name;
    pqa_scenario_fn fn;
    int kind;
};

/* Things both runs of a scenario must share (set up once per test). */
struct pqa_diff_ctx {
    int blackhole_port;   /* listens, never answers */
    int rejecter_port;    /* answers FATAL 57P03 */
    Oid lo_base;          /* explicit large-object OIDs: lo_base .. lo_base+15 */
};
extern struct pqa_diff_ctx pqa_diff;

/* Each table ends with a {NULL} entry. */
extern const struct pqa_scenario pqa_scen_connect[];
extern const struct pqa_scenario pqa_scen_exec[];
extern const struct pqa_scenario pqa_scen_async[];
extern const struct pqa_scenario pqa_scen_copy[];
extern const struct pqa_scenario pqa_scen_lo[];

/* Silently unlinks the large objects lo_base .. lo_base+15 (not recorded:
 * leftovers of an earlier crashed run must not change the record). */
void pqa_lo_cleanup(PGconn *conn);

#endif
