/*
 * record.h -- a text log of everything a libpq scenario can observe.
 *
 * The differential test runs each scenario twice, outside a task (plain
 * libpq) and inside one (the shim's cooperative path), and compares the two
 * logs byte for byte.  So the helpers here write down every observable a
 * caller could base a decision on -- statuses, values, field metadata,
 * error texts and fields, connection state -- and nothing that differs
 * between two honest runs (backend pids, server-assigned OIDs, salts).
 */
#ifndef PQA_TESTS_RECORD_H
#define PQA_TESTS_RECORD_H

#include <libpq-fe.h>
#include <stddef.h>

struct record {
    char *buf;
    size_t len, cap;
};

void rec_init(struct record *out);
void rec_free(struct record *out);

/* Appends formatted text (no newline added). */
void rec_printf(struct record *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends bytes, escaping non-printables as \xNN (so binary data compares). */
void rec_bytes(struct record *out, const char *data, size_t len);

/* Everything about a result: status, cmdstatus, cmdtuples, shape, field
 * names/types/formats/sizes, every value (escaped), error message and the
 * SQLSTATE/severity/primary fields; "(null result)" for NULL.  `label`
 * names the step. */
void rec_result(struct record *out, const char *label, const PGresult *res);

/* Connection state: PQstatus, PQtransactionStatus, PQisnonblocking,
 * PQpipelineStatus and PQerrorMessage.  (Not PQisBusy: it parses whatever
 * input happens to be buffered, which depends on timing, not on libpq.) */
void rec_conn(struct record *out, const char *label, const PGconn *conn);

/* rec_result + PQclear. */
void rec_take(struct record *out, const char *label, PGresult *res);

/* Installs a notice receiver (mode 0) or processor (mode 1) logging into out. */
void rec_notices(struct record *out, PGconn *conn, int processor);

/* Drains PQnotifies into the log (channel, payload, whether be_pid is the
 * connection's own backend). */
void rec_notifies(struct record *out, PGconn *conn);

/* Byte offset of the first difference, or (size_t)-1 when equal. */
size_t rec_diff(const struct record *a, const struct record *b);

/* A human-readable description of the first difference (malloc'd). */
char *rec_describe_diff(const struct record *a, const struct record *b);

#endif
