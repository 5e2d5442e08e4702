/*
 * hosts_common.h -- the multi-host walk's tests (pool-hosts,
 * pool-hosts-addrs): a scenario is a conninfo run twice, first by plain
 * PQconnectdb outside any task (libpq's own blocking walk, its own timers:
 * the reference), then by a pool on a task, which must end as libpq did --
 * the same host entry reached (PQhost, PQport), the silent host waited on
 * as many times, or the same failure message.
 *
 * A silent host is a listener of the test's that never accepts: TCP
 * connections complete in its backlog and never hear a word, so each one
 * libpq or the pool opens is counted there (ph_silent_tries).
 */
#ifndef PQA_HOSTS_COMMON_H
#define PQA_HOSTS_COMMON_H

#include "pool_common.h"

/* What plain PQconnectdb did with a conninfo. */
struct ph_ref {
    int ok;
    char host[256], port[16];
    char msg[4096]; /* trailing newlines removed, as pqawait_pool_error */
    double secs;
};

struct ph_scenario {
    const char *name;
    char ci[2048];
    struct ph_ref ref;
    int silent_fd; /* the silent listener, -1 if none */
    int ref_tries; /* connections that reached it from the reference */
};

/* Run sc: the reference (which must connect, or fail, as expect_ok says),
 * then the pool, judged against it. */
void ph_run(struct ph_scenario *sc, int expect_ok);

/* A silent listener on addr (an IPv4 literal) and port (0: any free one);
 * its descriptor goes to sc->silent_fd.  Returns its port. */
int ph_silent_listener(struct ph_scenario *sc, const char *addr, int port);
/* Connections that reached sc's silent listener since the last call. */
int ph_silent_tries(int fd);
/* A server on addr:port (0: any free port) that answers every startup
 * packet with an ErrorResponse, FATAL with SQLSTATE `sqlstate` (28000: as
 * a failed authentication, libpq's walk ends; 57P03 "cannot connect now":
 * libpq goes on to the next host), and closes.  Returns its port; it
 * serves until the test's process ends. */
int ph_fatal_listener(const char *addr, int port, const char *sqlstate);
/* A port of addr nobody listens on (connection refused). */
int ph_refused_port(const char *addr);

/* sc->ci: `hosts` and the with-pg database and user, no SSL, no GSS, a
 * fresh application_name. */
void ph_conninfo(struct ph_scenario *sc, const char *hosts);

#endif
