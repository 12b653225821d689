/* embed.c -- a runtime in C that is its own host: writer and host over memory it maps itself,
 * no shmsnap binary, one file.
 *
 *   cc -Wall -Wextra -Werror -pthread ffi/examples/embed.c \
 *       $(PKG_CONFIG_PATH=ffi pkg-config --cflags --libs shmsnap) -o embed && ./embed
 *
 * Queue: a writer thread commits states (a counter and its square) as fast as it can while
 * the main thread takes a snapshot: shmsnap_snapshot_begin (pre), a word-atomic copy of the
 * region, shmsnap_snapshot_finish (post, retain). Then the runtime "restarts": the image is
 * written back into the memory and a new writer attaches; the state it finds must be exactly
 * one the old writer committed. A second writer on the same region is refused.
 *
 * Triple: a client thread publishes boards while the main thread freezes the newest, copies
 * it, writes the image meta and releases it; the image restored into fresh memory must read
 * back as that board.
 *
 * Exit 0 when every check passed; 1 with the reason otherwise.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include <shmsnap.h>

#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define REGION (256 * 1024)
#define TRIPLE_BUFFER 4096

static void fail(const char *what) {
    fprintf(stderr, "embed: %s: %s\n", what, shmsnap_error_message());
    exit(1);
}

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "embed: check failed: %s\n", what);
        exit(1);
    }
}

static void *map(size_t len) {
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    check(m != MAP_FAILED, "mmap");
    return m;
}

/* ---- queue ---------------------------------------------------------------------------- */

struct queue_run {
    shmsnap_region *region;
    atomic_int stop;
    uint64_t last; /* the last state committed, read after the join */
};

static void *writer_thread(void *arg) {
    struct queue_run *run = arg;
    const shmsnap_queue_layout layout = {.entries = 1024, .data_size = 64 * 1024};
    shmsnap_writer *w;
    if (shmsnap_writer_open(run->region, &layout, &w) != SHMSNAP_OK)
        fail("open the writer");
    uint64_t i = 0;
    while (!atomic_load(&run->stop) || i == 0) {
        i++;
        uint64_t state[2] = {i, i * i};
        if (shmsnap_writer_commit(w, state, sizeof state, NULL) != SHMSNAP_OK)
            fail("commit");
    }
    run->last = i;
    if (shmsnap_writer_close(w) != SHMSNAP_OK)
        fail("close the writer");
    return NULL;
}

/* One snapshot of the live region into `image`, retried until it keeps an entry. */
static void queue_snapshot(shmsnap_region *region, unsigned char *image) {
    for (;;) {
        shmsnap_snapshot *snap;
        shmsnap_snapshot_info info;
        int rc = shmsnap_snapshot_begin(region, &snap, &info);
        if (rc == SHMSNAP_E_UNCONFIGURED) { /* the writer has not configured it yet */
            sched_yield();
            continue;
        }
        if (rc != SHMSNAP_OK)
            fail("begin a snapshot");
        if (info.pre == 0) { /* nothing committed yet */
            shmsnap_snapshot_abort(snap);
            continue;
        }
        if (shmsnap_region_read(region, 0, image, info.region_len) != SHMSNAP_OK)
            fail("copy the region");
        shmsnap_retained kept;
        rc = shmsnap_snapshot_finish(snap, image, info.region_len, &kept);
        if (rc == SHMSNAP_E_STARVED)
            continue; /* every entry was overwritten during the copy: try again */
        if (rc != SHMSNAP_OK)
            fail("finish the snapshot");
        printf("embed: queue snapshot kept %" PRIu64 " of %" PRIu64 " entries, newest seq %" PRIu64
               "\n",
               kept.kept, kept.pre, kept.newest_seq);
        return;
    }
}

static void queue_part(void) {
    void *mem = map(REGION);
    struct queue_run run = {.stop = 0, .last = 0};
    if (shmsnap_region_attach(mem, REGION, &run.region) != SHMSNAP_OK)
        fail("attach");
    pthread_t t;
    check(pthread_create(&t, NULL, writer_thread, &run) == 0, "start the writer");
    unsigned char *image = malloc(REGION);
    check(image != NULL, "malloc");
    queue_snapshot(run.region, image);

    /* One writer per region: while the writer thread runs, a second writer is refused. */
    shmsnap_writer *second;
    int rc = shmsnap_writer_open(run.region, NULL, &second);
    check(rc == SHMSNAP_E_CLAIMED && second == NULL, "a second writer is refused");
    printf("embed: a second writer is refused: %s\n", shmsnap_error_message());

    atomic_store(&run.stop, 1);
    check(pthread_join(t, NULL) == 0, "join the writer");

    /* Restart: the image goes back into the memory, a new writer attaches. */
    if (shmsnap_region_write(run.region, 0, image, REGION) != SHMSNAP_OK)
        fail("restore the image");
    shmsnap_writer *w;
    if (shmsnap_writer_open(run.region, NULL, &w) != SHMSNAP_OK)
        fail("attach to the restored image");
    shmsnap_entry newest;
    uint64_t state[2];
    size_t len;
    if (shmsnap_writer_newest(w, &newest) || shmsnap_writer_read(w, &newest, state, sizeof state, &len))
        fail("read the restored state");
    uint64_t i = state[0];
    check(len == sizeof state && state[1] == i * i, "the restored state is one that was committed");
    check(newest.seq == i && i >= 1 && i <= run.last, "state i was committed as seq i");
    printf("embed: restored state %" PRIu64 " of %" PRIu64 " committed, exactly as committed\n", i,
           run.last);
    if (shmsnap_writer_close(w) || shmsnap_region_close(run.region))
        fail("close");
    free(image);
    munmap(mem, REGION);
}

/* ---- triple --------------------------------------------------------------------------- */

struct triple_run {
    shmsnap_region *region;
    atomic_int stop;
};

static void fill(uint64_t g, uint64_t *board) {
    for (size_t k = 0; k < TRIPLE_BUFFER / 8; k++)
        board[k] = g * 1000003 + k;
}

static void *client_thread(void *arg) {
    struct triple_run *run = arg;
    const shmsnap_triple_layout_request layout = {.buffers = 3, .buffer_size = TRIPLE_BUFFER};
    shmsnap_triple *c;
    if (shmsnap_triple_open(run->region, &layout, &c) != SHMSNAP_OK)
        fail("open the triple client");
    static uint64_t board[TRIPLE_BUFFER / 8];
    for (uint64_t g = 1; !atomic_load(&run->stop) || g < 3; g++) {
        fill(g, board);
        if (shmsnap_triple_publish(c, board, sizeof board, NULL) != SHMSNAP_OK)
            fail("publish");
    }
    if (shmsnap_triple_close(c) != SHMSNAP_OK)
        fail("close the triple client");
    return NULL;
}

static void triple_part(void) {
    struct triple_run run = {.stop = 0};
    void *mem = map(REGION);
    if (shmsnap_region_attach(mem, REGION, &run.region) != SHMSNAP_OK)
        fail("attach");
    pthread_t t;
    check(pthread_create(&t, NULL, client_thread, &run) == 0, "start the client");
    shmsnap_triple_host *host;
    int rc;
    while ((rc = shmsnap_triple_host_open(run.region, &host)) == SHMSNAP_E_UNCONFIGURED)
        sched_yield();
    if (rc != SHMSNAP_OK)
        fail("open the triple host");
    shmsnap_frozen *frozen;
    shmsnap_frozen_info info;
    while ((rc = shmsnap_triple_host_freeze(host, 0, &frozen, &info)) == SHMSNAP_E_NOT_FOUND)
        sched_yield();
    if (rc != SHMSNAP_OK)
        fail("freeze");
    unsigned char *image = calloc(1, info.region_len); /* holes: zeros */
    check(image != NULL, "calloc");
    if (shmsnap_frozen_copy(frozen, image + info.offset, info.len) ||
        shmsnap_frozen_image_meta(frozen, image, info.meta_len) || shmsnap_frozen_release(frozen))
        fail("copy the frozen buffer");
    atomic_store(&run.stop, 1);
    check(pthread_join(t, NULL) == 0, "join the client");
    if (shmsnap_triple_host_close(host) || shmsnap_region_close(run.region))
        fail("close");
    munmap(mem, REGION);

    /* Restore into fresh memory; the client that attaches reads the frozen board. */
    mem = map(REGION);
    if (shmsnap_region_attach(mem, REGION, &run.region) ||
        shmsnap_region_write(run.region, 0, image, info.region_len))
        fail("restore the image");
    shmsnap_triple *c;
    if (shmsnap_triple_open(run.region, NULL, &c) != SHMSNAP_OK)
        fail("attach to the restored image");
    static uint64_t back[TRIPLE_BUFFER / 8], want[TRIPLE_BUFFER / 8];
    uint64_t seq;
    if (shmsnap_triple_read_newest(c, 0, back, sizeof back, &seq) != SHMSNAP_OK)
        fail("read the restored board");
    fill(back[0] / 1000003, want);
    check(seq == info.seq && memcmp(back, want, sizeof want) == 0,
          "the restored board is the frozen one");
    printf("embed: triple snapshot of seq %" PRIu64 " restored, board exactly as published\n",
           seq);
    if (shmsnap_triple_close(c) || shmsnap_region_close(run.region))
        fail("close");
    free(image);
    munmap(mem, REGION);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    queue_part();
    triple_part();
    printf("embed: ok\n");
    return 0;
}
