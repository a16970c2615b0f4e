/*
 * libmsgc driven from C, as the product's modules use it. Run by tests/ffi.rs, which starts
 * the servers and passes their addresses:
 *
 *   ffi_test basic ADDR CONFIG   join, views, multicast in order, bad arguments, and a
 *                                reconnect: prints "phase:restart" and expects the harness
 *                                to restart the server on the same address.
 *   ffi_test gap ADDR            against a scripted server: a sequence jump and a GAP frame.
 *
 * Every wait has a deadline; any failure prints why and exits 1.
 */
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "msgc.h"

#define DEADLINE_MS 20000

static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ffi_test: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) fail("%s:%d: check failed: %s", __FILE__, __LINE__, #cond);         \
    } while (0)

#define CHECK_RC(expr, want)                                                             \
    do {                                                                                 \
        int rc_ = (expr);                                                                \
        if (rc_ != (want))                                                               \
            fail("%s:%d: %s returned %d (%s), wanted %d", __FILE__, __LINE__, #expr, rc_,  \
                 msgc_strerror(rc_), (want));                                            \
    } while (0)

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The next event, waiting on the client's descriptor; fails after the deadline. */
static msgc_event *next_event(msgc_client *c) {
    long long end = now_ms() + DEADLINE_MS;
    for (;;) {
        msgc_event *ev = NULL;
        int rc = msgc_next_event(c, &ev);
        if (rc == MSGC_OK) return ev;
        if (rc != MSGC_EAGAIN) fail("msgc_next_event: %s", msgc_strerror(rc));
        long long left = end - now_ms();
        if (left <= 0) fail("no event before the deadline");
        struct pollfd p = {.fd = msgc_fd(c), .events = POLLIN};
        if (poll(&p, 1, (int)left) < 0) fail("poll failed");
    }
}

/* Skips events until one of `kind` (and, for views, with `members` members) arrives. */
static msgc_event *wait_for(msgc_client *c, int kind, size_t members) {
    for (int i = 0; i < 100000; i++) {
        msgc_event *ev = next_event(c);
        if (ev->kind == kind && (kind != MSGC_EVENT_VIEW || ev->member_count == members)) return ev;
        msgc_event_free(ev);
    }
    fail("no event of kind %d", kind);
    return NULL;
}

static void wait_view(msgc_client *c, size_t members) {
    msgc_event *v = wait_for(c, MSGC_EVENT_VIEW, members);
    CHECK(strcmp(v->group, "ctest") == 0 && v->group_len == 5);
    for (size_t i = 1; i < v->member_count; i++) CHECK(v->members[i - 1].session < v->members[i].session);
    msgc_event_free(v);
}

static int basic(const char *addr, const char *config) {
    char err[256] = "";
    const char *servers[] = {addr};

    CHECK(msgc_event_size() == sizeof(msgc_event));
    CHECK(msgc_connect(servers, 1, "x", "/nonexistent/msgc.conf", err, sizeof err) == NULL);
    CHECK(strlen(err) > 0);
    CHECK(msgc_connect(NULL, 1, "x", NULL, err, sizeof err) == NULL);
    CHECK(strstr(err, "NULL") != NULL);

    msgc_client *a = msgc_connect(servers, 1, "c-a", config, err, sizeof err);
    if (!a) fail("connect a: %s", err);
    msgc_client *b = msgc_connect(servers, 1, "c-b", config, err, sizeof err);
    if (!b) fail("connect b: %s", err);
    uint64_t a_session = msgc_session_id(a), b_session = msgc_session_id(b);
    CHECK(a_session != 0 && b_session != 0 && a_session != b_session);

    /* Nothing is waiting yet: the descriptor is not readable and next_event says so. */
    struct pollfd p = {.fd = msgc_fd(a), .events = POLLIN};
    CHECK(poll(&p, 1, 0) == 0);
    msgc_event *none = NULL;
    CHECK_RC(msgc_next_event(a, &none), MSGC_EAGAIN);

    CHECK_RC(msgc_join(a, "ctest"), MSGC_OK);
    wait_view(a, 1);
    CHECK_RC(msgc_join(b, "ctest"), MSGC_OK);
    wait_view(a, 2);
    wait_view(b, 2);

    /* Bad arguments are refused, not crashed on. */
    CHECK_RC(msgc_join(a, NULL), MSGC_EINVAL);
    CHECK_RC(msgc_join(NULL, "ctest"), MSGC_EINVAL);
    CHECK_RC(msgc_join(a, ""), MSGC_EINVAL);
    CHECK_RC(msgc_multicast(a, "", "x", 1, 0), MSGC_EINVAL);
    CHECK_RC(msgc_multicast(a, "ctest", NULL, 1, 0), MSGC_EINVAL);
    CHECK_RC(msgc_next_event(a, NULL), MSGC_EINVAL);
    CHECK_RC(msgc_fd(NULL), MSGC_EINVAL);
    size_t big_len = 2u << 20;
    char *big = calloc(1, big_len);
    CHECK_RC(msgc_multicast(a, "ctest", big, big_len, 0), MSGC_ETOOLARGE);
    free(big);
    CHECK(strlen(msgc_strerror(MSGC_EAGAIN)) > 0 && strlen(msgc_strerror(12345)) > 0);

    /* b multicasts; a receives every message once, in order, with b as the sender. The
     * buffer is reused at once: the library copied it. */
    enum { N = 2000 };
    char msg[64];
    for (int i = 1; i <= N; i++) {
        int len = snprintf(msg, sizeof msg, "msg-%d", i);
        int rc = msgc_multicast(b, "ctest", msg, (size_t)len, i % 2 ? -1 : 5000);
        if (rc != MSGC_OK) fail("multicast %d: %s", i, msgc_strerror(rc));
        memset(msg, 'X', sizeof msg);
    }
    CHECK_RC(msgc_flush(b, 10000), MSGC_OK);
    for (int i = 1; i <= N; i++) {
        msgc_event *m = wait_for(a, MSGC_EVENT_MESSAGE, 0);
        int len = snprintf(msg, sizeof msg, "msg-%d", i);
        CHECK(m->seq == (uint64_t)i && m->sender == b_session);
        CHECK(m->payload_len == (size_t)len && memcmp(m->payload, msg, (size_t)len) == 0);
        CHECK(strcmp(m->group, "ctest") == 0);
        msgc_event_free(m);
    }
    msgc_close(b);
    /* a sees b go. */
    msgc_event *v = wait_for(a, MSGC_EVENT_VIEW, 1);
    CHECK(v->cause == MSGC_CAUSE_DISCONNECT && v->sender == b_session);
    CHECK(v->members[0].session == a_session && strcmp(v->members[0].name, "c-a") == 0);
    msgc_event_free(v);

    /* The harness restarts the server on the same address. */
    printf("phase:restart\n");
    fflush(stdout);
    msgc_event *d = wait_for(a, MSGC_EVENT_DISCONNECTED, 0);
    CHECK(d->text != NULL && strlen(d->text) > 0);
    msgc_event_free(d);
    msgc_event *r = wait_for(a, MSGC_EVENT_RECONNECTED, 0);
    CHECK(r->session != 0 && r->session != a_session && r->session == msgc_session_id(a));
    CHECK(strcmp(r->text, addr) == 0);
    uint64_t new_session = r->session;
    msgc_event_free(r);
    msgc_event *g = next_event(a);
    CHECK(g->kind == MSGC_EVENT_GAP && g->gap_reason == MSGC_GAP_RECONNECTED);
    CHECK(strcmp(g->group, "ctest") == 0 && g->sender == 0 && g->last == UINT64_MAX);
    msgc_event_free(g);
    /* Rejoined by itself: a view listing the new session, then its own message comes back. */
    wait_view(a, 1);
    CHECK_RC(msgc_multicast(a, "ctest", "back", 4, -1), MSGC_OK);
    msgc_event *back = wait_for(a, MSGC_EVENT_MESSAGE, 0);
    CHECK(back->payload_len == 4 && memcmp(back->payload, "back", 4) == 0 && back->seq == 1);
    /* Events outlive the client. */
    msgc_close(a);
    CHECK(back->sender == new_session && memcmp(back->payload, "back", 4) == 0);
    msgc_event_free(back);
    printf("ok\n");
    return 0;
}

static int gap(const char *addr) {
    char err[256] = "";
    const char *servers[] = {addr};
    msgc_client *c = msgc_connect(servers, 1, "c-gap", NULL, err, sizeof err);
    if (!c) fail("connect: %s", err);
    /* The scripted server sends seq 1, then 4, then a GAP frame, for sender 77 in "ctest". */
    msgc_event *m1 = wait_for(c, MSGC_EVENT_MESSAGE, 0);
    CHECK(m1->seq == 1 && m1->sender == 77);
    msgc_event_free(m1);
    msgc_event *g = next_event(c);
    CHECK(g->kind == MSGC_EVENT_GAP && g->gap_reason == MSGC_GAP_LINK_LOST);
    CHECK(g->sender == 77 && g->first == 2 && g->last == 3 && strcmp(g->group, "ctest") == 0);
    msgc_event_free(g);
    msgc_event *m4 = next_event(c);
    CHECK(m4->kind == MSGC_EVENT_MESSAGE && m4->seq == 4);
    msgc_event_free(m4);
    msgc_event *s = next_event(c);
    CHECK(s->kind == MSGC_EVENT_GAP && s->gap_reason == MSGC_GAP_SERVER_LOST);
    CHECK(s->sender == 0 && s->first == 5 && s->last == UINT64_MAX);
    msgc_event_free(s);
    msgc_close(c);
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "basic") == 0) return basic(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "gap") == 0) return gap(argv[2]);
    fprintf(stderr, "usage: ffi_test basic ADDR CONFIG | gap ADDR\n");
    return 2;
}
