/*
 * handlers.h -- the endpoints: plain blocking libpq code.
 *
 * Nothing here knows about tasks, loops or pools: a handler gets a PGconn
 * and a request and writes a JSON body, calling PQexec & co. as any
 * blocking program would.  Run inside an awaitlet task (the server's normal
 * mode) those calls suspend only the request's task; run inline (--blocking)
 * they block the whole loop.  Same code, both ways.
 */
#ifndef PQA_SERVER_HANDLERS_H
#define PQA_SERVER_HANDLERS_H

#include <libpq-fe.h>

#include "http.h"

enum route {
    R_HEALTH,
    R_ITEM,
    R_TAKE,
    R_SLOW,
    R_STATS,
};

/* Which endpoint rq asks for: a route (>= 0; *id is the item id, *needs_db
 * says whether it needs a connection), or -STATUS with the error body
 * already in *body (404 unknown path, 405 wrong method -- then *allow names
 * the method --, 400 bad id). */
int route_request(const struct http_request *rq, long *id, int *needs_db, const char **allow,
                  struct sbuf *body);

/* Run a route.  conn is NULL for the routes that need none.  Returns the
 * status; the JSON body is in *body.  A database error is 503 with
 * {"error": ...}, never a crash; a take is acknowledged (200) only after
 * its COMMIT succeeded. */
int run_route(int route, long id, PGconn *conn, const struct http_request *rq,
              struct sbuf *body);

/* A 503 body for "no connection" (pool timeout, shut down...). */
void no_connection(struct sbuf *body, const char *why);

/* --init: create and fill the schema.  0, or -1 with a message on stderr. */
int init_schema(const char *conninfo);

#endif
