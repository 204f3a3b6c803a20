/*
 * metaops: the metadata workload of scripts/test-fuse-performance.sh.
 *
 *   metaops create|stat|unlink DIR N [START]
 *
 * Files are DIR/dKKKK/fNNNNNNN, 1,000 per directory (file i lives in d(i/1000)).
 *   create  mkdir the directories it needs (existing ones are fine), then for
 *           i in [START, N): open(O_CREAT|O_EXCL|O_WRONLY, 0644) + close
 *           (empty files; no data is written).
 *   stat    lstat every file i in [START, N).
 *   unlink  unlink every file i in [START, N), then rmdir the directories
 *           that held them.
 * Prints one JSON line: {"op":..,"files":..,"seconds":..} where seconds is the
 * monotonic time of the loop alone (process start-up is not counted). Exits 1
 * at the first failed call, naming it on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PER_DIR 1000L

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *path)
{
    fprintf(stderr, "metaops: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

static void dir_path(char *buf, size_t len, const char *root, long d)
{
    snprintf(buf, len, "%s/d%04ld", root, d);
}

static void file_path(char *buf, size_t len, const char *root, long i)
{
    snprintf(buf, len, "%s/d%04ld/f%07ld", root, i / PER_DIR, i);
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: metaops create|stat|unlink DIR N [START]\n");
        return 2;
    }
    const char *op = argv[1];
    const char *root = argv[2];
    long n = atol(argv[3]);
    long start = argc == 5 ? atol(argv[4]) : 0;
    char path[4096];
    struct stat st;
    double t0 = now();

    if (strcmp(op, "create") == 0) {
        for (long d = start / PER_DIR; d <= (n - 1) / PER_DIR && n > start; d++) {
            dir_path(path, sizeof path, root, d);
            if (mkdir(path, 0755) != 0 && errno != EEXIST)
                die("mkdir", path);
        }
        for (long i = start; i < n; i++) {
            file_path(path, sizeof path, root, i);
            int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
            if (fd < 0)
                die("open(O_CREAT)", path);
            if (close(fd) != 0)
                die("close", path);
        }
    } else if (strcmp(op, "stat") == 0) {
        for (long i = start; i < n; i++) {
            file_path(path, sizeof path, root, i);
            if (lstat(path, &st) != 0)
                die("lstat", path);
        }
    } else if (strcmp(op, "unlink") == 0) {
        for (long i = start; i < n; i++) {
            file_path(path, sizeof path, root, i);
            if (unlink(path) != 0)
                die("unlink", path);
        }
        for (long d = start / PER_DIR; d <= (n - 1) / PER_DIR && n > start; d++) {
            dir_path(path, sizeof path, root, d);
            if (rmdir(path) != 0 && errno != ENOTEMPTY)
                die("rmdir", path);
        }
    } else {
        fprintf(stderr, "metaops: unknown op %s\n", op);
        return 2;
    }
    printf("{\"op\":\"%s\",\"files\":%ld,\"seconds\":%.9f}\n", op, n - start, now() - t0);
    return 0;
}
