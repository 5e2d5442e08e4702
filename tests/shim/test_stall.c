/*
 * test_stall.c -- the loop never stalls while a task is inside libpq.
 *
 * Each workload runs in a task beside a 1 ms repeating timer; the longest
 * gap between ticks must stay under 10 ms (100 ms under valgrind/ASan).
 * The workloads are the ones where a blocking wait would hide: name lookup,
 * TLS handshakes, bulk COPY both ways, a big result, large objects (a server round trip
 * per 8 KB chunk plus local file I/O), PQping, slow statements, and TLS
 * records bigger than a socket read (bytes left inside OpenSSL: a wrong
 * wait there hangs forever, so every workload runs under a time limit).
 */
#include <check.h>
#include <stdlib.h>

#include "common.h"
#include "stall_work.h"

#define MB (1024u * 1024u)

static size_t bulk(size_t normal, size_t slow)
{
    return pqa_slow_build() ? slow : normal;
}

static void check_kind(const char *name, pqa_work_fn fn, pqa_kind kind, size_t size)
{
    struct pqa_work w = {.size = size};
    char *ci = pqa_conninfo(kind, NULL);
    w.conninfo = ci;
    pqa_work_check(name, fn, &w, 60);
    free(ci);
}

START_TEST(test_interposed)
{
    pqa_check_interposed();
}
END_TEST

START_TEST(test_connect_hostname)
{
    check_kind("connect localhost (tcp)", pqa_work_connect, PQA_TCP_NAME, 0);
}
END_TEST

START_TEST(test_connect_ssl)
{
    check_kind("connect verify-full", pqa_work_connect, PQA_SSL, 0);
    check_kind("connect scram + ssl", pqa_work_connect, PQA_SCRAM_SSL, 0);
}
END_TEST

START_TEST(test_copy_out)
{
    check_kind("copy out", pqa_work_copy_out, PQA_TCP, bulk(50 * MB, 5 * MB));
}
END_TEST

START_TEST(test_copy_in)
{
    check_kind("copy in", pqa_work_copy_in, PQA_TCP, bulk(50 * MB, 5 * MB));
}
END_TEST

START_TEST(test_big_result)
{
    check_kind("select, big result", pqa_work_select, PQA_TCP, bulk(30 * MB, 3 * MB));
}
END_TEST

START_TEST(test_lo)
{
    check_kind("lo_import + lo_export", pqa_work_lo, PQA_UNIX, bulk(10 * MB, 2 * MB));
}
END_TEST

START_TEST(test_ping)
{
    check_kind("ping unix", pqa_work_ping, PQA_UNIX, 0);
    check_kind("ping localhost ssl", pqa_work_ping, PQA_SSL, 0);
}
END_TEST

START_TEST(test_slow_query)
{
    check_kind("pg_sleep x2", pqa_work_sleep, PQA_UNIX, 0);
}
END_TEST

START_TEST(test_ssl_wide_rows)
{
    /* 20 KB rows arrive as TLS records larger than one socket read */
    check_kind("ssl copy out, 20 KB rows", pqa_work_copy_out_wide, PQA_SSL, bulk(20 * MB, 4 * MB));
    check_kind("ssl copy in", pqa_work_copy_in, PQA_SSL, bulk(10 * MB, 2 * MB));
}
END_TEST

START_TEST(test_all_at_once)
{
    /* every workload in its own task on one loop: the shim's fairness must
     * keep each loop iteration short however many tasks have work ready */
    static const pqa_kind kinds[] = {PQA_TCP, PQA_TCP, PQA_UNIX, PQA_UNIX, PQA_SSL,
                                     PQA_SSL, PQA_TCP_NAME, PQA_SSL, PQA_UNIX};
    static const char *const names[] = {"  copy out", "  copy in", "  lo", "  pg_sleep",
                                        "  ssl wide rows", "  ssl connect", "  ping", "  ssl copy in",
                                        "  big result"};
    const pqa_work_fn fns[] = {pqa_work_copy_out, pqa_work_copy_in, pqa_work_lo, pqa_work_sleep,
                               pqa_work_copy_out_wide, pqa_work_connect, pqa_work_ping, pqa_work_copy_in,
                               pqa_work_select};
    const size_t sizes[] = {bulk(20 * MB, 2 * MB), bulk(20 * MB, 2 * MB), bulk(4 * MB, 1 * MB), 0,
                            bulk(8 * MB, 1 * MB), 0, 0, bulk(8 * MB, 1 * MB), bulk(8 * MB, 1 * MB)};
    enum { N = sizeof kinds / sizeof kinds[0] };
    struct pqa_work w[N];
    char *ci[N];
    for (int i = 0; i < N; i++) {
        ci[i] = pqa_conninfo(kinds[i], NULL);
        w[i] = (struct pqa_work){.conninfo = ci[i], .size = sizes[i]};
    }
    printf("all at once:\n");
    pqa_work_check_many(names, fns, w, N, 60);
    for (int i = 0; i < N; i++)
        free(ci[i]);
}
END_TEST

int main(void)
{
    pqa_env_init();
    Suite *s = suite_create("shim-stall");
    TCase *tc = tcase_create("stall");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_interposed);
    tcase_add_test(tc, test_connect_hostname);
    tcase_add_test(tc, test_connect_ssl);
    tcase_add_test(tc, test_copy_out);
    tcase_add_test(tc, test_copy_in);
    tcase_add_test(tc, test_big_result);
    tcase_add_test(tc, test_lo);
    tcase_add_test(tc, test_ping);
    tcase_add_test(tc, test_slow_query);
    tcase_add_test(tc, test_ssl_wide_rows);
    tcase_add_test(tc, test_all_at_once);
    suite_add_tcase(s, tc);
    int rc = pqa_run_suite(s);
    return rc;
}
