/* Guest side of the virtio-fs end-to-end case (tests/tests/e2e/fs_cases.rs),
   built static on the host with `cc -static` and run from a read-only
   share. Each guest exec costs seconds under the emulated guest kernel, so
   one program makes every check and prints key=value lines the host test
   reads.
   usage: fstool check RW RO OUTSIDE   data, metadata, read-only, escapes
          fstool test FILE             the harness example: exit 3 on "fail" */
#define _GNU_SOURCE
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/xattr.h>
#include <unistd.h>

static char path[4096];

static const char *at(const char *dir, const char *name) {
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

/* Prints key=ok or key=<error text>. */
static void said(const char *key, int r) {
    printf("%s=%s\n", key, r == 0 ? "ok" : strerror(errno));
}

/* Reads a small file: key=<first line> or key=<error text>. */
static void show(const char *key, const char *p) {
    char b[256] = {0};
    int fd = open(p, O_RDONLY);
    if (fd < 0) { printf("%s=%s\n", key, strerror(errno)); return; }
    ssize_t n = read(fd, b, sizeof b - 1);
    close(fd);
    if (n < 0) { printf("%s=%s\n", key, strerror(errno)); return; }
    b[strcspn(b, "\n")] = 0;
    printf("%s=%s\n", key, b);
}

static int put(const char *p, const char *text) {
    int fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    return close(fd) || n != (ssize_t)strlen(text) ? -1 : 0;
}

static void data(const char *rw) {
    struct stat st;
    char b[256];
    show("host_txt", at(rw, "host.txt"));
    said("guest_write", put(at(rw, "guest.txt"), "from-guest\n"));
    DIR *d = opendir(at(rw, "many"));
    long count = 0;
    for (struct dirent *e; d && (e = readdir(d));) count += e->d_name[0] != '.';
    if (d) closedir(d);
    printf("many=%ld\n", count);
    said("mkdir", mkdir(at(rw, "d1"), 0755));
    printf("mkdir_isdir=%d\n", stat(at(rw, "d1"), &st) == 0 && S_ISDIR(st.st_mode));
    put(at(rw, "r1"), "one\n");
    put(at(rw, "r2"), "two\n");
    char r1[4096];
    snprintf(r1, sizeof r1, "%s/r1", rw);
    said("rename", rename(r1, at(rw, "r2")));
    show("rename_r2", at(rw, "r2"));
    show("rename_r1", r1);
    put(at(rw, "u"), "still-open\n");
    int fd = open(at(rw, "u"), O_RDONLY);
    said("unlink", unlink(at(rw, "u")));
    memset(b, 0, sizeof b);
    printf("unlink_open=%s\n", fd >= 0 && read(fd, b, sizeof b - 1) > 0 ? strtok(b, "\n") : strerror(errno));
    if (fd >= 0) close(fd);
    printf("unlink_gone=%d\n", access(at(rw, "u"), F_OK) != 0 && errno == ENOENT);
    char h1[4096];
    snprintf(h1, sizeof h1, "%s/h1", rw);
    put(h1, "h\n");
    said("link", link(h1, at(rw, "h2")));
    link(h1, at(rw, "h3"));
    printf("nlink=%ld\n", stat(h1, &st) ? -1L : (long)st.st_nlink);
    unlink(at(rw, "h3"));
    printf("nlink_after=%ld\n", stat(h1, &st) ? -1L : (long)st.st_nlink);
    put(at(rw, "m"), "m\n");
    said("chmod", chmod(path, 0751));
    printf("chmod_mode=%o\n", stat(path, &st) ? 0 : st.st_mode & 07777);
    put(at(rw, "o"), "o\n");
    said("chown", chown(path, 1234, 5678));
    printf("chown_ids=%u:%u\n", stat(path, &st) ? 0 : st.st_uid, stat(path, &st) ? 0 : st.st_gid);
    put(at(rw, "t"), "t\n");
    struct timeval tv[2] = {{981173106, 0}, {981173106, 0}};
    said("utimes", utimes(path, tv));
    printf("utimes_mtime=%lld\n", stat(path, &st) ? 0LL : (long long)st.st_mtime);
    said("symlink", symlink("target-name", at(rw, "sl")));
    memset(b, 0, sizeof b);
    printf("readlink=%s\n", readlink(path, b, sizeof b - 1) < 0 ? strerror(errno) : b);
    memset(b, 0, sizeof b);
    ssize_t n = getxattr(at(rw, "host.txt"), "user.fromhost", b, sizeof b - 1);
    printf("host_xattr=%s\n", n < 0 ? strerror(errno) : b);
    put(at(rw, "x"), "x\n");
    said("setxattr", setxattr(path, "user.k", "guest-value", 11, 0));
    setxattr(path, "user.j", "other", 5, 0);
    said("removexattr", removexattr(path, "user.j"));
    memset(b, 0, sizeof b);
    n = getxattr(path, "user.k", b, sizeof b - 1);
    printf("xattr_get=%s\n", n < 0 ? strerror(errno) : b);
    memset(b, 0, sizeof b);
    n = listxattr(path, b, sizeof b);
    printf("xattr_list=");
    for (char *p = b; n > 0 && p < b + n; p += strlen(p) + 1) printf("%s,", p);
    printf("\n");
}

static void read_only(const char *ro, const char *prefix) {
    char key[64];
    struct timeval tv[2] = {{1, 0}, {1, 0}};
    snprintf(key, sizeof key, "%s_create", prefix);
    said(key, put(at(ro, "new"), "x\n"));
    snprintf(key, sizeof key, "%s_write", prefix);
    int fd = open(at(ro, "ro.txt"), O_WRONLY);
    said(key, fd < 0 ? -1 : (close(fd), 0));
    snprintf(key, sizeof key, "%s_mkdir", prefix);
    said(key, mkdir(at(ro, "d"), 0755));
    snprintf(key, sizeof key, "%s_unlink", prefix);
    said(key, unlink(at(ro, "ro.txt")));
    snprintf(key, sizeof key, "%s_chmod", prefix);
    said(key, chmod(at(ro, "ro.txt"), 0600));
    snprintf(key, sizeof key, "%s_utimes", prefix);
    said(key, utimes(at(ro, "ro.txt"), tv));
    snprintf(key, sizeof key, "%s_setxattr", prefix);
    said(key, setxattr(at(ro, "ro.txt"), "user.k", "v", 1, 0));
}

/* The guest resolves links in its own namespace: none of these may reach
   OUTSIDE (the host directory next to the shares). */
static void escapes(const char *rw, const char *out) {
    char p[4096];
    snprintf(p, sizeof p, "%s/../outside/secret", rw);
    show("esc_dotdot", p);
    snprintf(p, sizeof p, "%s/../../../../../..%s/secret", rw, out);
    show("esc_dotdot_host", p);
    show("esc_planted_rel", at(rw, "planted_rel"));
    show("esc_planted_abs", at(rw, "planted_abs"));
    show("esc_planted_proc", at(rw, "planted_proc"));
    snprintf(p, sizeof p, "%s/planted_dir/secret", rw);
    show("esc_planted_dir", p);
    put(at(rw, "planted_rel"), "pwned\n");
    put(at(rw, "planted_abs"), "pwned\n");
    snprintf(p, sizeof p, "%s/planted_dir/new", rw);
    put(p, "pwned\n");
    snprintf(p, sizeof p, "%s/secret", out);
    symlink(p, at(rw, "g_abs"));
    show("esc_g_abs", path);
    put(path, "pwned\n");
    symlink("../outside/secret", at(rw, "g_rel"));
    show("esc_g_rel", path);
    put(path, "pwned\n");
    int fd = open(at(rw, "inside"), O_RDONLY);
    symlink("/proc/self/fd/3", at(rw, "g_magic"));
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    char b[256] = {0};
    printf("esc_proc_fd=%s\n", readlink(p, b, sizeof b - 1) < 0 ? strerror(errno) : b);
    if (fd >= 0) close(fd);
    char pa[4096];
    snprintf(pa, sizeof pa, "%s/planted_abs", rw);
    said("esc_hardlink_link", link(pa, at(rw, "hl")));
    show("esc_hardlink_read", at(rw, "hl"));
    said("esc_hardlink_cross", link("/etc/passwd", at(rw, "etcpw")));
    snprintf(p, sizeof p, "%s/inside", rw);
    said("esc_rename_out", rename(p, "/tmp/inside-moved"));
}

int main(int c, char **v) {
    if (c == 5 && !strcmp(v[1], "check")) {
        data(v[2]);
        read_only(v[3], "ro");
        /* Lift the guest's own MS_RDONLY: the host must still refuse. */
        said("remount_rw", mount(NULL, v[3], NULL, MS_REMOUNT, NULL));
        read_only(v[3], "rw_ro");
        escapes(v[2], v[4]);
        printf("done=1\n");
        return 0;
    }
    if (c == 3 && !strcmp(v[1], "test")) {
        FILE *f = fopen(v[2], "r");
        char b[64] = {0};
        if (!f || !fgets(b, sizeof b, f)) { perror(v[2]); return 1; }
        printf("harness read: %s", b);
        return strcmp(b, "fail\n") ? 0 : 3;
    }
    fprintf(stderr, "usage: fstool check RW RO OUTSIDE | fstool test FILE\n");
    return 2;
}
