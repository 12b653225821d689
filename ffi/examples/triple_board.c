/* triple_board.c -- a triple-buffer client in C, under the shmsnap host (triple strategy).
 *
 *   target/release/shmsnap run --state board.snap --strategy triple --size 1M -- \
 *       ./triple_board [PAUSE_US]
 *
 * The state is a board of 1024 words: a magic, the generation g, and 1022 words that are a
 * function of g and their index. Every generation is written into a taken buffer in four
 * pieces and published; every 16th the client first takes a buffer, scribbles into it and
 * aborts it, and every 7th it uses the one-call publish instead. On start it reads the newest
 * published board and checks every word: a torn or stale board prints CORRUPT and exits 3.
 *
 * Output: "c-triple: pid P restored generation G (seq S), board verified" or
 * "c-triple: pid P starts a fresh board", then it publishes forever, sleeping PAUSE_US
 * (default 200) between generations.
 */
#include <shmsnap.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define WORDS 1024
#define BOARD (WORDS * 8)
#define MAGIC 0x6472616f62706374ULL /* "tcpboard" */
#define CORRUPT 3

static const shmsnap_triple_layout_request LAYOUT = {.buffers = 4, .buffer_size = BOARD};

/* splitmix64: word i of generation g. */
static uint64_t cell(uint64_t g, uint64_t i) {
    uint64_t z = g * WORDS + i + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void board(uint64_t g, uint64_t *w) {
    w[0] = MAGIC;
    w[1] = g;
    for (uint64_t i = 2; i < WORDS; i++)
        w[i] = cell(g, i);
}

static void die(const char *what) {
    fprintf(stderr, "c-triple: %s: %s\n", what, shmsnap_error_message());
    exit(70);
}

/* The generation of the newest published board, checked word by word (0: none). */
static uint64_t restore(shmsnap_triple *c) {
    static uint64_t w[WORDS];
    uint64_t seq;
    int rc = shmsnap_triple_read_newest(c, 0, w, BOARD, &seq);
    if (rc == SHMSNAP_E_NOT_FOUND) {
        printf("c-triple: pid %d starts a fresh board\n", (int)getpid());
        return 0;
    }
    if (rc != SHMSNAP_OK)
        die("read the newest board");
    uint64_t g = w[1];
    int bad = w[0] != MAGIC;
    for (uint64_t i = 2; i < WORDS && !bad; i++)
        bad = w[i] != cell(g, i);
    if (bad) {
        printf("c-triple: pid %d CORRUPT: board of seq %" PRIu64 " (generation %" PRIu64
               ") does not match its generation\n",
               (int)getpid(), seq, g);
        exit(CORRUPT);
    }
    printf("c-triple: pid %d restored generation %" PRIu64 " (seq %" PRIu64 "), board verified\n",
           (int)getpid(), g, seq);
    return g;
}

/* Publishes generation g: in four pieces through a grant, or in one call every 7th. */
static void publish(shmsnap_triple *c, uint64_t g) {
    static uint64_t w[WORDS];
    board(g, w);
    if (g % 7 == 0) {
        if (shmsnap_triple_publish(c, w, BOARD, NULL) != SHMSNAP_OK)
            die("publish");
        return;
    }
    shmsnap_grant *grant;
    if (g % 16 == 0) {
        /* A grant that is never published: its buffer goes back to free. */
        uint64_t junk[4] = {1, 2, 3, 4};
        if (shmsnap_triple_take(c, &grant) || shmsnap_grant_write(grant, 0, junk, sizeof junk) ||
            shmsnap_grant_abort(grant))
            die("abort a grant");
    }
    if (shmsnap_triple_take(c, &grant) != SHMSNAP_OK)
        die("take");
    for (size_t piece = 0; piece < 4; piece++) {
        size_t at = piece * (BOARD / 4);
        if (shmsnap_grant_write(grant, at, (const char *)w + at, BOARD / 4) != SHMSNAP_OK)
            die("write");
    }
    if (shmsnap_grant_publish(grant, NULL) != SHMSNAP_OK)
        die("publish");
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    long pause_us = argc > 1 ? atol(argv[1]) : 200;
    shmsnap_region *region;
    shmsnap_triple *c;
    if (shmsnap_region_open(NULL, &region) != SHMSNAP_OK)
        die("open the region");
    if (shmsnap_triple_open(region, &LAYOUT, &c) != SHMSNAP_OK)
        die("open the triple client");
    uint64_t g = restore(c);
    struct timespec pause = {.tv_sec = pause_us / 1000000, .tv_nsec = pause_us % 1000000 * 1000};
    for (;;) {
        publish(c, ++g);
        if (pause_us > 0)
            nanosleep(&pause, NULL);
    }
}
