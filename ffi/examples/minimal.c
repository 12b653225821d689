/* minimal.c -- the smallest useful C client: counts its own starts in the region.
 *
 *   cargo build --release -p shmsnap -p shmsnap-ffi
 *   cc -Wall -Wextra -Werror ffi/examples/minimal.c \
 *       $(PKG_CONFIG_PATH=ffi pkg-config --cflags --libs shmsnap) -o minimal
 *   target/release/shmsnap run --state counter.snap --strategy queue -- ./minimal
 *
 * Each start reads the newest committed counter (restored by the host), adds one and commits
 * it. Kill it any way you like; the count never goes backwards. (The README's "From C".)
 */
#include <shmsnap.h>
#include <stdio.h>

int main(void) {
    shmsnap_region *region;
    shmsnap_writer *writer;
    shmsnap_queue_layout layout = {.entries = 64, .data_size = 4096};
    shmsnap_entry newest;
    uint64_t starts = 0;
    size_t len;
    if (shmsnap_region_open(NULL, &region) || shmsnap_writer_open(region, &layout, &writer)) {
        fprintf(stderr, "minimal: %s\n", shmsnap_error_message());
        return 1;
    }
    if (shmsnap_writer_newest(writer, &newest) == SHMSNAP_OK) /* the restored state */
        shmsnap_writer_read(writer, &newest, &starts, sizeof starts, &len);
    starts++;
    if (shmsnap_writer_commit(writer, &starts, sizeof starts, NULL)) { /* wait-free */
        fprintf(stderr, "minimal: %s\n", shmsnap_error_message());
        return 1;
    }
    printf("minimal: start number %llu\n", (unsigned long long)starts);
    shmsnap_writer_close(writer);
    shmsnap_region_close(region);
    return 0;
}
