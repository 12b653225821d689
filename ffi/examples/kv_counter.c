/* kv_counter.c -- a small key-value counter store in C, under the shmsnap host (queue strategy).
 *
 *   target/release/shmsnap run --state kv.snap --strategy queue --size 2M -- \
 *       ./kv_counter [PAUSE_US] [OPS]
 *
 * 32 counters in 8 buckets of 4. Each bucket is a node in its own frozen tail unit; an update
 * copies the bucket into a fresh unit with one counter incremented (copy-on-write), commits a
 * new root (the op count and the 8 bucket units) in a transaction, and retires the old unit as
 * of that commit. Operation i increments counter (7 i) mod 32, so every counter is a function
 * of the op count, and the client checks every restored counter on start: a torn or stale
 * state prints CORRUPT and exits 3.
 *
 * Everything read from the region is hostile input: unit numbers are checked by the unit
 * table, nodes carry their bucket and a checksum.
 *
 * Output: "c-kv: pid P restored OPS ops, all 32 counters correct" once per start, then it
 * commits bursts of 8 operations, sleeping PAUSE_US (default 1000) between bursts, until OPS
 * operations (default: forever).
 */
#include <shmsnap.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KEYS 32
#define BUCKETS 8
#define PER_BUCKET (KEYS / BUCKETS)
#define UNIT 64                        /* bytes per node: 8 words */
#define NO_UNIT UINT64_MAX
#define ROOT_WORDS (2 + BUCKETS)       /* ops, 8 units, checksum */
#define NODE_MAGIC 0x65646f6e766b63ULL /* "ckvnode" */
#define CORRUPT 3

static const shmsnap_queue_layout LAYOUT = {.entries = 64, .data_size = 4096};

/* The client's state: the op count, every counter, and the unit holding each bucket. */
struct state {
    uint64_t ops;
    uint64_t counters[KEYS];
    uint64_t units[BUCKETS];
};

static uint64_t key_of(uint64_t op) { return (op % KEYS) * 7 % KEYS; }

/* Counter k after `ops` operations: 7 * 23 = 1 (mod 32), so op j hits k iff j = 23 k (mod 32). */
static uint64_t expected(uint64_t k, uint64_t ops) {
    return ops / KEYS + ((k * 23 % KEYS) < ops % KEYS ? 1 : 0);
}

/* FNV-1a over words: a torn node or root does not pass. */
static uint64_t checksum(const uint64_t *w, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= w[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void die(const char *what) {
    fprintf(stderr, "c-kv: %s: %s\n", what, shmsnap_error_message());
    exit(70);
}

static void corrupt(const char *why, uint64_t a, uint64_t b) {
    printf("c-kv: pid %d CORRUPT: %s (%" PRIu64 ", %" PRIu64 ")\n", (int)getpid(), why, a, b);
    exit(CORRUPT);
}

/* Node words: magic ^ bucket, 4 counters, the op count it was written at, checksum, 0. */
static void encode_node(const struct state *st, uint64_t b, uint64_t node[8]) {
    node[0] = NODE_MAGIC ^ b;
    for (int i = 0; i < PER_BUCKET; i++)
        node[1 + i] = st->counters[b * PER_BUCKET + i];
    node[5] = st->ops;
    node[6] = checksum(node, 6);
    node[7] = 0;
}

/* Rebuilds the state from the newest root, marking the units it uses; checks every counter. */
static void restore(shmsnap_writer *w, shmsnap_units *units, struct state *st) {
    memset(st, 0, sizeof *st);
    for (int b = 0; b < BUCKETS; b++)
        st->units[b] = NO_UNIT;
    shmsnap_entry newest;
    int rc = shmsnap_writer_newest(w, &newest);
    if (rc == SHMSNAP_E_NOT_FOUND)
        return;
    if (rc != SHMSNAP_OK)
        die("newest");
    uint64_t root[ROOT_WORDS];
    size_t len;
    if (shmsnap_writer_read(w, &newest, root, sizeof root, &len) != SHMSNAP_OK)
        die("read the root");
    if (len != sizeof root)
        corrupt("root length", len, sizeof root);
    if (root[ROOT_WORDS - 1] != checksum(root, ROOT_WORDS - 1))
        corrupt("root checksum", root[ROOT_WORDS - 1], checksum(root, ROOT_WORDS - 1));
    st->ops = root[0];
    for (uint64_t b = 0; b < BUCKETS; b++) {
        uint64_t u = root[1 + b];
        st->units[b] = u;
        if (u == NO_UNIT)
            continue;
        if (u > SIZE_MAX / UNIT || shmsnap_units_mark_in_use(units, (size_t)u) != SHMSNAP_OK)
            corrupt("root names a unit outside the table", b, u);
        uint64_t node[8];
        if (shmsnap_writer_read_tail(w, u * UNIT, node, sizeof node) != SHMSNAP_OK)
            die("read a node");
        if (node[0] != (NODE_MAGIC ^ b) || node[6] != checksum(node, 6))
            corrupt("node magic or checksum", b, u);
        for (int i = 0; i < PER_BUCKET; i++)
            st->counters[b * PER_BUCKET + i] = node[1 + i];
    }
    for (uint64_t k = 0; k < KEYS; k++)
        if (st->counters[k] != expected(k, st->ops))
            corrupt("counter", k, st->counters[k]);
}

/* One operation: a new node for the bucket in a fresh unit, and a new root, in a transaction. */
static void step(shmsnap_writer *w, shmsnap_units *units, struct state *st) {
    uint64_t k = key_of(st->ops), b = k / PER_BUCKET;
    st->counters[k]++;
    st->ops++;
    shmsnap_txn *txn;
    size_t unit;
    for (int attempt = 0;; attempt++) {
        if (shmsnap_txn_begin(w, ROOT_WORDS * 8, &txn) != SHMSNAP_OK)
            die("begin");
        int rc = shmsnap_txn_alloc_unit(txn, units, &unit);
        if (rc == SHMSNAP_OK)
            break;
        if (rc != SHMSNAP_E_NO_UNIT || attempt > 0)
            die("alloc a unit");
        /* Retired units come back once the entries that may refer to them are evicted. */
        shmsnap_txn_abort(txn);
        uint64_t next;
        if (shmsnap_writer_next_seq(w, &next) || shmsnap_writer_evict_before(w, next))
            die("evict");
    }
    uint64_t node[8], root[ROOT_WORDS], seq;
    encode_node(st, b, node);
    if (shmsnap_txn_write_unit(txn, units, unit, 0, node, sizeof node) != SHMSNAP_OK)
        die("write the node");
    uint64_t old = st->units[b];
    st->units[b] = unit;
    root[0] = st->ops;
    memcpy(&root[1], st->units, sizeof st->units);
    root[ROOT_WORDS - 1] = checksum(root, ROOT_WORDS - 1);
    if (shmsnap_txn_commit(txn, root, sizeof root, &seq) != SHMSNAP_OK)
        die("commit");
    if (old != NO_UNIT && shmsnap_units_retire(units, (size_t)old, seq) != SHMSNAP_OK)
        die("retire");
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    long pause_us = argc > 1 ? atol(argv[1]) : 1000;
    uint64_t limit = argc > 2 ? strtoull(argv[2], NULL, 10) : 0;
    shmsnap_region *region;
    shmsnap_writer *w;
    shmsnap_units *units;
    size_t count;
    if (shmsnap_region_open(NULL, &region) != SHMSNAP_OK)
        die("open the region");
    if (shmsnap_writer_open(region, &LAYOUT, &w) != SHMSNAP_OK)
        die("open the writer");
    if (shmsnap_writer_unit_count(w, UNIT, &count) || shmsnap_units_new(count, UNIT, &units))
        die("unit table");
    struct state st;
    restore(w, units, &st);
    printf("c-kv: pid %d restored %" PRIu64 " ops, all %d counters correct\n", (int)getpid(),
           st.ops, KEYS);
    struct timespec pause = {.tv_sec = pause_us / 1000000, .tv_nsec = pause_us % 1000000 * 1000};
    while (limit == 0 || st.ops < limit) {
        for (int i = 0; i < 8; i++)
            step(w, units, &st);
        if (pause_us > 0)
            nanosleep(&pause, NULL);
    }
    printf("c-kv: done at %" PRIu64 " ops\n", st.ops);
    if (shmsnap_units_close(units) || shmsnap_writer_close(w) || shmsnap_region_close(region))
        die("close");
    return 0;
}
