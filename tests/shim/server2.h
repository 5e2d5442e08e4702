/*
 * server2.h -- extra private PostgreSQL servers put in states the shared
 * test server must never be in: frozen, shutting down, crashed and
 * restarted, a streaming standby (promoted later), pooled by pgbouncer.
 *
 * Some connect and ping paths of libpq need a server that misbehaves:
 * - frozen: the postmaster is SIGSTOPped; the kernel still completes TCP
 *   handshakes into its listen backlog but nobody answers, so libpq's
 *   connect_timeout must fire ("timeout expired").
 * - rejecting: a smart shutdown is pending while one session (held here)
 *   keeps it open; every new connection gets FATAL 57P03 "the database
 *   system is shutting down", which PQping reports as PQPING_REJECT.
 * Both are the real thing (tests/pg/pgserver), not imitations: the project
 * tests against real PostgreSQL only.
 *
 * A server costs ~1 s to start, so a test program starts the ones it needs
 * once, in main() before running its suite (never inside a test: Check
 * forks each test, and the servers belong to the main process).  They are
 * stopped by pqa_server2_stop_all(), by an atexit handler if main returns
 * early, and by a watchdog process in its own session if the program is
 * killed, so a failing or timed-out test never leaks a server.  A frozen
 * postmaster is always continued before it is stopped.
 */
#ifndef PQA_TESTS_SERVER2_H
#define PQA_TESTS_SERVER2_H

typedef struct pqa_server2 pqa_server2;

/* Starts n servers in parallel with `pgserver start` (script from
 * $PQAWAIT_PGSERVER, else the source tree's).  Call from main() only;
 * on failure prints why and exits 1. */
void pqa_server2_start(pqa_server2 **out, int n);

/* Its TCP port on 127.0.0.1 (user pqa_trust, database pqawait, no SSL). */
int pqa_server2_port(const pqa_server2 *s);

/* Freezes the postmaster (SIGSTOP) until the server is stopped.  main() only. */
void pqa_server2_freeze(pqa_server2 *s);

/* Opens the holding session, asks for a smart shutdown and waits (<= 5 s)
 * until a plain PQping reports PQPING_REJECT.  main() only. */
void pqa_server2_reject(pqa_server2 *s);

/* Inside a test: fails it unless the server is still in the state set
 * above (frozen: postmaster stopped; rejecting: PQping gives REJECT).
 * States only move forward, so holding before and after a scenario means
 * the scenario saw it. */
void pqa_server2_check(const pqa_server2 *s);

/* Continues, releases and stops every server of this process (idempotent;
 * does nothing in a forked test child). */
void pqa_server2_stop_all(void);

/* ---- for the fault tests (tests/fault) ----
 * Crash, wait_down, restart and promote may be called inside a test (a
 * forked child): they act on the server through its directory and lock
 * file, never through state cached in this process, so a later test sees
 * the server as the earlier one left it.  A test that crashes a server
 * restarts it before it ends. */

/* pgserver's directory of s. */
const char *pqa_server2_dir(const pqa_server2 *s);

/* Starts a streaming standby of primary (`pgserver standby`: pg_basebackup
 * -R, hot standby, streaming when this returns).  main() only; stopped
 * with the others. */
pqa_server2 *pqa_server2_standby(pqa_server2 *primary);

/* Promotes a standby (`pgserver promote`); returns once it accepts writes.
 * Fails the program (exit 1) if it cannot. */
void pqa_server2_promote(pqa_server2 *s);

/* Crashes the server now: SIGQUIT to its postmaster, which is exactly what
 * `pg_ctl stop -m immediate` sends (every backend exits at once, no
 * checkpoint); returns without waiting and without spawning anything, so
 * the moment of the crash is known to the microsecond.  The postmaster's
 * pid is read from its lock file.  -1 with errno if it is not running. */
int pqa_server2_crash(pqa_server2 *s);

/* Waits (<= timeout seconds) until the crashed postmaster has exited: 0, or
 * -1 with ETIMEDOUT. */
int pqa_server2_wait_down(pqa_server2 *s, double timeout);

/* Starts a crashed server again on its port (`pgserver restart`: crash
 * recovery) and waits for it; 0, or -1.  Blocks the calling thread ~1 s:
 * from a task, run it with awaitlet_offload. */
int pqa_server2_restart(pqa_server2 *s);

/* Starts pgbouncer in front of s (`tests/pg/pgbouncer start`): transaction
 * mode, at most `pool` server connections, database pqawait, user
 * pqa_trust without password, 127.0.0.1 only.  Returns its port.  main()
 * only; stopped (before its server) by pqa_server2_stop_all, and by a
 * watchdog if the program is killed. */
int pqa_server2_bouncer(pqa_server2 *s, int pool);

#endif
