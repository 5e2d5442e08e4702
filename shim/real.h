/*
 * real.h -- the functions libpqawait stands in for, as found behind it.
 *
 * The shim defines PQexec, poll, getaddrinfo... under their own names, so
 * the originals can only be reached through pointers that the dynamic
 * linker hands out for "the next definition after this object"
 * (dlsym(RTLD_NEXT)).  Every pointer is resolved once, in a constructor or
 * at first use (poll may be called by another library's constructor before
 * ours ran); a wrapper's check costs one load (PQAWAIT__REAL).  A symbol the run-time libpq lacks stays NULL and its wrapper
 * fails with errno ENOSYS instead of crashing.
 *
 * The list is an X-macro so the struct, the resolver and the compiler's
 * prototype check (__typeof__ of libpq-fe.h's own declaration) can never
 * drift apart.  Functions of newer libpq releases are listed only when the
 * build-time libpq-fe.h announces them.
 */
#ifndef PQAWAIT_REAL_H
#define PQAWAIT_REAL_H

#include <netdb.h>
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>

#include <libpq-fe.h>

/* glibc's fortified poll; declared by <poll.h> only under _FORTIFY_SOURCE. */
int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen);

/* Symbols the shim exports; everything else in the library is hidden. */
#define PQAWAIT_EXPORT __attribute__((visibility("default")))

/* Thread-local state of the shim.  initial-exec: a plain %fs-relative
 * access, no __tls_get_addr call per libpq call (the shim is loaded at
 * start-up, or preloaded). */
#define PQAWAIT__TLS __thread __attribute__((tls_model("initial-exec")))

#define PQAWAIT__REAL_CORE(X) \
    X(poll) X(__poll_chk) X(getaddrinfo) X(connect) \
    X(PQconnectdb) X(PQconnectdbParams) X(PQsetdbLogin) X(PQconnectStart) \
    X(PQconnectStartParams) X(PQconnectPoll) X(PQreset) X(PQresetStart) \
    X(PQresetPoll) X(PQping) X(PQpingParams) X(PQfinish) \
    X(PQexec) X(PQexecParams) X(PQprepare) X(PQexecPrepared) \
    X(PQdescribePrepared) X(PQdescribePortal) X(PQgetResult) X(PQflush) \
    X(PQsendQuery) X(PQsendQueryParams) X(PQsendPrepare) X(PQsendQueryPrepared) \
    X(PQsendDescribePrepared) X(PQsendDescribePortal) X(PQsetnonblocking) \
    X(PQconsumeInput) \
    X(PQputCopyData) X(PQputCopyEnd) X(PQgetCopyData) X(PQgetline) \
    X(PQputline) X(PQputnbytes) X(PQendcopy) \
    X(PQfn) X(lo_open) X(lo_close) X(lo_read) X(lo_write) X(lo_lseek) \
    X(lo_lseek64) X(lo_tell) X(lo_tell64) X(lo_truncate) X(lo_truncate64) \
    X(lo_creat) X(lo_create) X(lo_unlink) X(lo_import) X(lo_import_with_oid) \
    X(lo_export) X(PQsetClientEncoding) X(PQencryptPasswordConn) \
    X(PQsetNoticeProcessor) X(PQsetNoticeReceiver) \
    X(PQerrorMessage) X(PQresultErrorMessage) X(PQclear) \
    X(PQresultVerboseErrorMessage)

#ifdef LIBPQ_HAS_PIPELINING /* 14 */
#define PQAWAIT__REAL_PIPELINE(X) \
    X(PQpipelineSync) X(PQexitPipelineMode) X(PQsendFlushRequest) X(PQpipelineStatus)
#else
#define PQAWAIT__REAL_PIPELINE(X)
#endif

#ifdef LIBPQ_HAS_CLOSE_PREPARED /* 17 */
#define PQAWAIT__REAL_CLOSE(X) \
    X(PQclosePrepared) X(PQclosePortal) X(PQsendClosePrepared) X(PQsendClosePortal)
#else
#define PQAWAIT__REAL_CLOSE(X)
#endif

#ifdef LIBPQ_HAS_SEND_PIPELINE_SYNC /* 17 */
#define PQAWAIT__REAL_SENDSYNC(X) X(PQsendPipelineSync)
#else
#define PQAWAIT__REAL_SENDSYNC(X)
#endif

#ifdef LIBPQ_HAS_ASYNC_CANCEL /* 17 */
#define PQAWAIT__REAL_CANCEL(X) X(PQcancelBlocking) X(PQcancelStart) X(PQcancelPoll)
#else
#define PQAWAIT__REAL_CANCEL(X)
#endif

#ifdef LIBPQ_HAS_SOCKET_POLL /* 17 */
#define PQAWAIT__REAL_SOCKPOLL(X) X(PQsocketPoll)
#else
#define PQAWAIT__REAL_SOCKPOLL(X)
#endif

#ifdef LIBPQ_HAS_CHANGE_PASSWORD /* 17 */
#define PQAWAIT__REAL_CHPASS(X) X(PQchangePassword)
#else
#define PQAWAIT__REAL_CHPASS(X)
#endif

#define PQAWAIT__REAL_FUNCS(X) \
    PQAWAIT__REAL_CORE(X) PQAWAIT__REAL_PIPELINE(X) PQAWAIT__REAL_CLOSE(X) \
    PQAWAIT__REAL_SENDSYNC(X) PQAWAIT__REAL_CANCEL(X) PQAWAIT__REAL_SOCKPOLL(X) \
    PQAWAIT__REAL_CHPASS(X)

#define PQAWAIT__REAL_FIELD(name) __typeof__(name) *name;
struct pqawait__real_fns {
    PQAWAIT__REAL_FUNCS(PQAWAIT__REAL_FIELD)
};
#undef PQAWAIT__REAL_FIELD

extern struct pqawait__real_fns pqawait__real;

/* Resolve every pointer and create the shim's task key; idempotent,
 * thread-safe, cheap after the first call. */
void pqawait__init(void);

/* hooks.c: find libpq's text segment, the one holding libpq_fn (from the
 * resolver; NULL: no libpq). */
void pqawait__hooks_init(const void *libpq_fn);

/* relocs.c: 1 if every loaded libpq's own references (poll, getaddrinfo,
 * connect, PQsendQuery...) reach the shim. */
int pqawait__libpq_bound(void);

/* callbacks.c: PQfinish frees conn; forget its notice-hook bookkeeping. */
void pqawait__callbacks_forget(PGconn *conn);

/* The real function `name`, resolving first if needed (NULL: missing).
 * resolve() publishes every pointer with a release store after the rest
 * of the shim's set-up (the task key, libpq's text), so one acquire load
 * that finds it set is all a call pays; the resolver runs only while it is
 * still NULL (a call from another library's constructor, or a symbol the
 * run-time libpq lacks). */
#define PQAWAIT__REAL(name)                                                          \
    __extension__({                                                                  \
        __typeof__(pqawait__real.name) real_fn_ =                                    \
            __atomic_load_n(&pqawait__real.name, __ATOMIC_ACQUIRE);                  \
        if (__builtin_expect(!real_fn_, 0)) {                                        \
            pqawait__init();                                                         \
            real_fn_ = __atomic_load_n(&pqawait__real.name, __ATOMIC_ACQUIRE);       \
        }                                                                            \
        real_fn_;                                                                    \
    })

#endif
