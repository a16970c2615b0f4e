/*
 * monitor: a minimal libmsgc program. Joins a group, says hello once its membership view
 * arrives, and prints every event, driven by poll() on the client's descriptor.
 *
 *   cargo build --release
 *   cc -I include examples/c/monitor.c target/release/libmsgc.a -lpthread -ldl -lm -o monitor
 *   ./monitor 127.0.0.1:4809 lobby           # until interrupted
 *   ./monitor 127.0.0.1:4809 lobby --once    # until its own hello comes back
 *
 * With an installed library: cc monitor.c $(pkg-config --cflags --libs libmsgc).
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "msgc.h"

int main(int argc, char **argv) {
    const char *server = argc > 1 ? argv[1] : "127.0.0.1:4809";
    const char *group = argc > 2 ? argv[2] : "lobby";
    int once = argc > 3 && strcmp(argv[3], "--once") == 0;
    char err[256];

    msgc_client *c = msgc_connect(&server, 1, "monitor", NULL, err, sizeof err);
    if (!c) {
        fprintf(stderr, "monitor: %s\n", err);
        return 1;
    }
    printf("connected as session %" PRIu64 "\n", msgc_session_id(c));
    if (msgc_join(c, group) != MSGC_OK) {
        fprintf(stderr, "monitor: bad group name %s\n", group);
        msgc_close(c);
        return 1;
    }
    int said_hello = 0, done = 0, idle_polls = 0;
    while (!done) {
        struct pollfd p = {.fd = msgc_fd(c), .events = POLLIN};
        int ready = poll(&p, 1, 1000);
        if (ready < 0) break;
        if (ready == 0 && once && ++idle_polls > 20) {
            fprintf(stderr, "monitor: nothing for 20 s\n");
            break;
        }
        msgc_event *ev;
        int rc;
        /* Take everything that is waiting; the descriptor stays readable until then. */
        while ((rc = msgc_next_event(c, &ev)) == MSGC_OK) {
            switch (ev->kind) {
            case MSGC_EVENT_MESSAGE:
                printf("message %s from %" PRIu64 " #%" PRIu64 ": %.*s\n", ev->group, ev->sender, ev->seq,
                       (int)ev->payload_len, (const char *)ev->payload);
                if (once && ev->sender == msgc_session_id(c)) done = 1;
                break;
            case MSGC_EVENT_VIEW:
                printf("view %s #%" PRIu64 ": %zu members\n", ev->group, ev->view_id, ev->member_count);
                for (size_t i = 0; i < ev->member_count; i++) {
                    if (!said_hello && ev->members[i].session == msgc_session_id(c)) {
                        /* Membership starts with the view that lists us. */
                        const char hello[] = "hello from monitor";
                        msgc_multicast(c, group, hello, sizeof hello - 1, -1);
                        said_hello = 1;
                    }
                }
                break;
            case MSGC_EVENT_GAP:
                printf("gap %s: from %" PRIu64 " #%" PRIu64 "..%" PRIu64 " may be missing\n", ev->group, ev->sender,
                       ev->first, ev->last);
                break;
            case MSGC_EVENT_RECONNECTED:
                printf("reconnected to %s as %" PRIu64 "\n", ev->text, ev->session);
                break;
            case MSGC_EVENT_DISCONNECTED:
                printf("disconnected: %s\n", ev->text);
                break;
            case MSGC_EVENT_ERROR:
                printf("error %d: %s\n", ev->error_code, ev->text);
                break;
            }
            msgc_event_free(ev);
        }
        if (rc == MSGC_ECLOSED) break;
    }
    fflush(stdout);
    msgc_close(c);
    return done || !once ? 0 : 1;
}
