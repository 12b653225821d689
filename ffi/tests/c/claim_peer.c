/*
 * claim_peer -- one process of the cross-process claim test (ffi/tests/c_claim.rs).
 *
 *   claim_peer hold PATH   open PATH (a memfd, as /proc/<pid>/fd/<n>), attach, open the queue
 *                          writer, commit "from A", print "held <pid>", then wait for SIGKILL.
 *   claim_peer serve PATH  attach, then run one command per line of stdin and print one line
 *                          per command:
 *                            open     -> "open rc=<code> msg=<shmsnap_error_message>"
 *                            reclaim  -> "reclaim rc=<code> pid=<holder_pid> msg=<...>"
 *                            write    -> "write rc=<code> before=<newest payload> after=<...>"
 *                                        (commits "from B" with the writer from `open`)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <shmsnap.h>

static const struct shmsnap_queue_layout LAYOUT = {.entries = 16, .data_size = 4096};

static struct shmsnap_region *attach(const char *path) {
    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(path);
        exit(2);
    }
    void *mem = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    close(fd);
    struct shmsnap_region *region = NULL;
    if (shmsnap_region_attach(mem, (size_t)st.st_size, &region) != SHMSNAP_OK) {
        fprintf(stderr, "attach: %s\n", shmsnap_error_message());
        exit(2);
    }
    return region;
}

static int hold(struct shmsnap_region *region) {
    struct shmsnap_writer *w = NULL;
    if (shmsnap_writer_open(region, &LAYOUT, &w) != SHMSNAP_OK ||
        shmsnap_writer_commit(w, "from A", 6, NULL) != SHMSNAP_OK) {
        fprintf(stderr, "hold: %s\n", shmsnap_error_message());
        return 2;
    }
    printf("held %d\n", (int)getpid());
    fflush(stdout);
    for (;;) pause(); /* until SIGKILL: the claim is never released */
}

/* The payload of the newest entry into `buf` (NUL-terminated); a status code. */
static int newest(struct shmsnap_writer *w, char *buf, size_t cap) {
    struct shmsnap_entry e;
    size_t len = 0;
    memset(buf, 0, cap);
    int rc = shmsnap_writer_newest(w, &e);
    return rc ? rc : shmsnap_writer_read(w, &e, buf, cap - 1, &len);
}

static void write_newest(struct shmsnap_writer *w) {
    char before[64], after[64];
    int rc = w ? newest(w, before, sizeof before) : SHMSNAP_E_NULL;
    if (rc == SHMSNAP_OK) rc = shmsnap_writer_commit(w, "from B", 6, NULL);
    if (rc == SHMSNAP_OK) rc = newest(w, after, sizeof after);
    printf("write rc=%d before=%s after=%s\n", rc, rc ? "" : before, rc ? "" : after);
}

static int serve(struct shmsnap_region *region) {
    struct shmsnap_writer *w = NULL;
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "open", 4) == 0) {
            int rc = w ? SHMSNAP_E_BUSY : shmsnap_writer_open(region, &LAYOUT, &w);
            printf("open rc=%d msg=%s\n", rc, rc ? shmsnap_error_message() : "");
        } else if (strncmp(line, "reclaim", 7) == 0) {
            uint32_t pid = 12345;
            int rc = shmsnap_region_reclaim(region, &pid);
            printf("reclaim rc=%d pid=%u msg=%s\n", rc, pid, rc ? shmsnap_error_message() : "");
        } else if (strncmp(line, "write", 5) == 0) {
            write_newest(w);
        } else {
            printf("unknown command %s", line);
        }
        fflush(stdout);
    }
    if (w) shmsnap_writer_close(w);
    return shmsnap_region_close(region) == SHMSNAP_OK ? 0 : 3;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s hold|serve PATH\n", argv[0]);
        return 2;
    }
    struct shmsnap_region *region = attach(argv[2]);
    if (strcmp(argv[1], "hold") == 0) return hold(region);
    if (strcmp(argv[1], "serve") == 0) return serve(region);
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
