/*
 * msgc.h: the C interface of libmsgc, the msgc client library.
 *
 * A client keeps one TCP connection to a msgc server: it joins and leaves groups,
 * multicasts to groups, and receives messages and membership views. It reconnects by
 * itself (trying the servers in order), rejoins its groups and reports what may have been
 * missed as gap events. The client runs on an internal thread. msgc_connect and msgc_close
 * block (each at most connect_timeout per server); every other call returns without
 * blocking unless its timeout argument says otherwise.
 *
 * Link with -lmsgc (pkg-config --libs libmsgc); a static link also needs -lpthread -ldl -lm.
 *
 * Threads: every function may be called from any thread, concurrently, except msgc_close,
 * which must be the last call on a client (no other call on it may run or follow).
 *
 * Ownership, buffer by buffer:
 *   - Strings and buffers passed in (servers, name, config_path, group, data) stay the
 *     caller's: the library copies what it needs before the call returns and keeps no
 *     pointer to them.
 *   - errbuf (msgc_connect) is the caller's; the library writes a NUL-terminated message
 *     into it, cut to errbuf_len bytes.
 *   - A msgc_client is the library's, from msgc_connect until msgc_close frees it.
 *   - A msgc_event is the library's allocation handed to the caller: every pointer inside
 *     it (group, payload, members and their names, text) points into that allocation and
 *     stays valid until the caller passes the event to msgc_event_free, exactly once. Events
 *     outlive msgc_close; free them all the same.
 *   - The descriptor from msgc_fd is the client's: poll it, never read, write or close it.
 *     msgc_close closes it.
 *   - msgc_strerror returns a static string: never free it.
 */
#ifndef MSGC_H
#define MSGC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
#define MSGC_OK 0
#define MSGC_EAGAIN (-1)    /* would block: queue full, reconnecting, or no event waiting */
#define MSGC_EINVAL (-2)    /* NULL where not allowed, not UTF-8, or a bad group name */
#define MSGC_ETOOLARGE (-3) /* the message does not fit in the maximum frame size */
#define MSGC_ECLOSED (-4)   /* the client is closed; no more events will come */
#define MSGC_ELOST (-5)     /* the connection was lost before the queued bytes were written */
#define MSGC_EINTERNAL (-6) /* a bug in the library (it was caught; the client may be unusable) */

/* Event kinds (msgc_event.kind). */
#define MSGC_EVENT_MESSAGE 1      /* a multicast to a group this client is in */
#define MSGC_EVENT_VIEW 2         /* a group's membership changed */
#define MSGC_EVENT_GAP 3          /* messages first..last from sender may never arrive */
#define MSGC_EVENT_RECONNECTED 4  /* connected again with a new session; groups rejoined */
#define MSGC_EVENT_DISCONNECTED 5 /* the connection was lost; a reconnection follows */
#define MSGC_EVENT_ERROR 6        /* a non-fatal error from the server */

/* View causes (msgc_event.cause). */
#define MSGC_CAUSE_JOIN 1
#define MSGC_CAUSE_LEAVE 2
#define MSGC_CAUSE_DISCONNECT 3
#define MSGC_CAUSE_NETWORK 4

/* Gap reasons (msgc_event.gap_reason). */
#define MSGC_GAP_LINK_LOST 1   /* a server link was lost, or a sequence number jumped */
#define MSGC_GAP_RECONNECTED 2 /* this client reconnected: anything sent meanwhile */
#define MSGC_GAP_SERVER_LOST 3 /* a server was lost */

/* A client; opaque. */
typedef struct msgc_client msgc_client;

/* One member of a view. */
typedef struct msgc_member {
    uint64_t session;  /* the member's session id */
    const char *name;  /* its client name, NUL-terminated UTF-8 (may be empty) */
} msgc_member;

/* An event. Which fields are set depends on kind; the others are 0 or NULL. */
typedef struct msgc_event {
    int32_t kind;       /* MSGC_EVENT_* */
    int32_t cause;      /* VIEW: MSGC_CAUSE_* */
    int32_t gap_reason; /* GAP: MSGC_GAP_* */
    int32_t error_code; /* ERROR: the protocol's error code (docs/protocol.md) */
    /* MESSAGE, VIEW, GAP: the group, NUL-terminated UTF-8 of group_len bytes (a group name
     * may itself contain a NUL byte: trust group_len). */
    const char *group;
    size_t group_len;
    /* MESSAGE: the sender's session id. VIEW: the session that joined, left or disconnected
     * (0 for NETWORK). GAP: the sender whose messages are missing, 0 = any sender. */
    uint64_t sender;
    uint64_t seq;             /* MESSAGE: the sender's sequence number in this group, from 1 */
    const uint8_t *payload;   /* MESSAGE: payload_len bytes (not NUL-terminated) */
    size_t payload_len;
    uint64_t view_id;         /* VIEW */
    const msgc_member *members; /* VIEW: member_count members, ascending by session id */
    size_t member_count;
    uint64_t first;           /* GAP: first missing sequence number */
    uint64_t last;            /* GAP: last missing one; UINT64_MAX = unknown */
    uint64_t session;         /* RECONNECTED: this client's new session id */
    /* RECONNECTED: the server's address. DISCONNECTED: the reason. ERROR: the message.
     * NUL-terminated. */
    const char *text;
} msgc_event;

/*
 * Connects to the first of `servers` that answers, completes the handshake, and starts the
 * client's thread. Blocks until then (at most connect_timeout per server).
 *   servers, server_count: "host:port" strings tried in order; server_count 0 takes the
 *       config file's `server` list (default "127.0.0.1:4809").
 *   name: this client's name in views (NULL = empty; at most 255 bytes).
 *   config_path: a vendor config file whose msgc_client scope sets the options
 *       (connect_timeout, reconnect_interval, keepalive_interval, idle_timeout, tcpbuf_size,
 *       max_backlog, max_frame_size, bind_address, server); NULL = defaults.
 *   errbuf, errbuf_len: where to write why, on failure (may be NULL/0).
 * Returns the client, or NULL on failure.
 */
msgc_client *msgc_connect(const char *const *servers, size_t server_count, const char *name,
                          const char *config_path, char *errbuf, size_t errbuf_len);

/* Joins a group (remembered across reconnections). The view listing this client follows as
 * an event; membership starts with it. Returns MSGC_OK, MSGC_EINVAL or MSGC_ECLOSED. */
int msgc_join(msgc_client *client, const char *group);

/* Leaves a group; a view without this client follows. Same returns as msgc_join. */
int msgc_leave(msgc_client *client, const char *group);

/*
 * Multicasts len bytes at data to group (membership is not required). The bytes are copied
 * into the client's bounded send queue before this returns; they leave in batches.
 *   timeout_ms: 0 = never wait (MSGC_EAGAIN when the queue is full or the client is
 *   reconnecting); > 0 = wait at most that long for room (then MSGC_EAGAIN); < 0 = wait
 *   as long as it takes.
 * Returns MSGC_OK, MSGC_EAGAIN, MSGC_EINVAL, MSGC_ETOOLARGE or MSGC_ECLOSED. Messages are
 * never dropped silently: once queued they are sent, or the receivers get a gap event.
 */
int msgc_multicast(msgc_client *client, const char *group, const void *data, size_t len,
                   int timeout_ms);

/* Waits until everything multicast before this call was handed to the socket. timeout_ms
 * as for msgc_multicast. Returns MSGC_OK, MSGC_EAGAIN (timed out), MSGC_ELOST (the
 * connection was lost first) or MSGC_ECLOSED. */
int msgc_flush(msgc_client *client, int timeout_ms);

/* A descriptor that is readable (POLLIN) while events are waiting, and for good once the
 * client is closed. Returns it, or MSGC_EINVAL for NULL. */
int msgc_fd(const msgc_client *client);

/*
 * Takes the next event without waiting.
 * Returns MSGC_OK with *event set (free it with msgc_event_free), MSGC_EAGAIN when none is
 * waiting (poll msgc_fd), MSGC_ECLOSED when none ever will, or MSGC_EINVAL.
 * At most a few thousand events wait here; while they do, the client stops reading and the
 * server holds senders back, so take events promptly.
 */
int msgc_next_event(msgc_client *client, msgc_event **event);

/* Frees an event from msgc_next_event, with every buffer it points to. NULL is ignored. */
void msgc_event_free(msgc_event *event);

/* This client's current session id (it changes after a reconnection); 0 for NULL. */
uint64_t msgc_session_id(const msgc_client *client);

/* Sends what is queued (waiting at most connect_timeout), disconnects, stops the client's
 * thread, closes its descriptor and frees it. NULL is ignored. */
void msgc_close(msgc_client *client);

/* A description of a return code: a static string. */
const char *msgc_strerror(int code);

/* sizeof(msgc_event) as the library lays it out: compare with sizeof(msgc_event) to check
 * that this header matches the library. */
size_t msgc_event_size(void);

#ifdef __cplusplus
}
#endif

#endif /* MSGC_H */
