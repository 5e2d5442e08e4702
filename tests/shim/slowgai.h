/*
 * slowgai.h -- the slow resolver of slowgai.c (a test helper library).
 */
#ifndef PQA_TESTS_SLOWGAI_H
#define PQA_TESTS_SLOWGAI_H

#include <stdatomic.h>

/* The name whose lookup is slow; it resolves to 127.0.0.1. */
#define PQA_SLOW_HOST "slow.pqawait.test"

/* How long its lookup takes (set before the lookup starts). */
extern double pqa_slowgai_seconds;

/* Lookups of PQA_SLOW_HOST started and finished so far. */
extern atomic_int pqa_slowgai_started, pqa_slowgai_finished;

#endif
