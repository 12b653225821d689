/* ack_counter.c -- a C client that acknowledges only durable commits (DESIGN §14).
 *
 *   target/release/shmsnap run --state ack.snap --strategy queue --interval 2s -- \
 *       ./ack_counter [EVERY] [PAUSE_US]
 *
 * It commits a counter (the count and a check word) once per PAUSE_US (default 1000). Every
 * EVERY commits (default 4) it asks the host for a prompt snapshot, waits until the host's
 * status says that commit is in a durable snapshot, and only then prints
 * "c-ack: acknowledged COUNT": a promise that COUNT survives any crash. The commit itself
 * never waits; the wait is this client's choice.
 *
 * On start: "c-ack: pid P restored COUNT" (checked: a torn state prints CORRUPT, exit 3).
 */
#include <shmsnap.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define CHECK 0x9e3779b97f4a7c15ULL
#define CORRUPT 3
#define WAIT_MS 5000

static const shmsnap_queue_layout LAYOUT = {.entries = 64, .data_size = 4096};

static void die(const char *what) {
    fprintf(stderr, "c-ack: %s: %s\n", what, shmsnap_error_message());
    exit(70);
}

/* The restored count (0 for a fresh region), checked. */
static uint64_t restore(shmsnap_writer *w) {
    shmsnap_entry newest;
    int rc = shmsnap_writer_newest(w, &newest);
    if (rc == SHMSNAP_E_NOT_FOUND)
        return 0;
    uint64_t v[2];
    size_t len;
    if (rc != SHMSNAP_OK || shmsnap_writer_read(w, &newest, v, sizeof v, &len) != SHMSNAP_OK)
        die("read the newest entry");
    if (len != sizeof v || v[1] != v[0] * CHECK) {
        printf("c-ack: pid %d CORRUPT: entry %" PRIu64 " holds %" PRIu64 "/%" PRIu64 "\n",
               (int)getpid(), newest.seq, v[0], v[1]);
        exit(CORRUPT);
    }
    return v[0];
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    long every = argc > 1 ? atol(argv[1]) : 4;
    long pause_us = argc > 2 ? atol(argv[2]) : 1000;
    if (every < 1)
        every = 1;
    shmsnap_region *region;
    shmsnap_writer *w;
    if (shmsnap_region_open(NULL, &region) || shmsnap_writer_open(region, &LAYOUT, &w))
        die("open");
    uint64_t count = restore(w);
    printf("c-ack: pid %d restored %" PRIu64 "\n", (int)getpid(), count);
    struct timespec pause = {.tv_sec = pause_us / 1000000, .tv_nsec = pause_us % 1000000 * 1000};
    for (;;) {
        count++;
        uint64_t v[2] = {count, count * CHECK}, seq;
        if (shmsnap_writer_commit(w, v, sizeof v, &seq) != SHMSNAP_OK) /* wait-free */
            die("commit");
        if (count % (uint64_t)every == 0) {
            if (shmsnap_region_request_snapshot(region) != SHMSNAP_OK)
                die("request a snapshot");
            int rc = shmsnap_region_wait_persisted(region, seq, WAIT_MS); /* blocks */
            if (rc == SHMSNAP_OK)
                printf("c-ack: acknowledged %" PRIu64 " (seq %" PRIu64 ")\n", count, seq);
            else if (rc == SHMSNAP_E_TIMEOUT)
                printf("c-ack: not durable within %d ms: %" PRIu64 "\n", WAIT_MS, count);
            else
                die("wait");
        }
        if (pause_us > 0)
            nanosleep(&pause, NULL);
    }
}
