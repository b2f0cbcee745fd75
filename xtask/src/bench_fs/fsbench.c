/* The workload of `cargo xtask bench`'s virtio-fs part, run the same way
   on the host (the floor), in a Krypton container on a virtio-fs share and
   in a QEMU guest on a virtio-9p share. Built with `cc -static`.
   usage: fsbench DIR MIB OPS
   Prints key=value lines; times are CLOCK_MONOTONIC of the system it runs
   on (the guest's clock under a VMM). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char buf[1 << 20];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int fail(const char *what) {
    perror(what);
    printf("fsbench-failed=%s\n", what);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: fsbench DIR MIB OPS\n");
        return 2;
    }
    long mib = atol(argv[2]), ops = atol(argv[3]);
    if (chdir(argv[1])) return fail("chdir");
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (char)(i * 131 + (i >> 12));

    /* Sequential write: MIB MiB in 1 MiB writes, then fsync. */
    double t = now();
    int fd = open("write.bin", O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0) return fail("open write.bin");
    for (long i = 0; i < mib; i++) {
        size_t done = 0;
        while (done < sizeof buf) {
            ssize_t n = write(fd, buf + done, sizeof buf - done);
            if (n <= 0) return fail("write");
            done += (size_t)n;
        }
    }
    if (fsync(fd) || close(fd)) return fail("fsync");
    printf("seq_write_mibs=%.2f\n", (double)mib / (now() - t));
    fflush(stdout);

    /* Sequential read of read.bin (made by the host, not yet in the
       reader's page cache) in 1 MiB reads. */
    t = now();
    fd = open("read.bin", O_RDONLY);
    if (fd < 0) return fail("open read.bin");
    long long total = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) total += n;
    if (n < 0 || close(fd)) return fail("read");
    if (total != (long long)mib << 20) return fail("short read.bin");
    printf("seq_read_mibs=%.2f\n", (double)total / 1048576.0 / (now() - t));
    fflush(stdout);

    /* Metadata: OPS times create, stat, unlink. */
    if (mkdir("meta", 0755)) return fail("mkdir meta");
    char name[64];
    struct stat st;
    t = now();
    for (long i = 0; i < ops; i++) {
        snprintf(name, sizeof name, "meta/f%ld", i);
        fd = open(name, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0 || close(fd)) return fail("create");
        if (stat(name, &st)) return fail("stat");
        if (unlink(name)) return fail("unlink");
    }
    printf("meta_ops=%.1f\n", (double)ops / (now() - t));
    fflush(stdout);

    /* Untar tree.tar with busybox tar. */
    if (mkdir("untar", 0755)) return fail("mkdir untar");
    t = now();
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/busybox", "tar", "xf", "tree.tar", "-C", "untar", (char *)0);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || status != 0) return fail("tar");
    printf("untar_s=%.3f\n", now() - t);
    printf("fsbench-done=1\n");
    fflush(stdout);
    return 0;
}
