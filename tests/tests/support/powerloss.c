/*
 * The power-loss seam of the fault suite (tests/tests/support/powerloss.rs):
 * an LD_PRELOAD shim that lets every write under one directory go through
 * to the file, but first records in an undo journal what the write is
 * about to change, until the file (for data) or its directory (for names)
 * is fsynced. After a `kill -9`, `powerloss::roll_back` plays the journal
 * backwards: every byte, length and name not made durable is put back as
 * it was at the last fsync, which is what a power cut may leave (the
 * strictest reading of POSIX: nothing unsynced survives, a new name needs
 * its directory fsynced).
 *
 * Environment: TANDEM_POWERLOSS_DIR (absolute, canonical: the directory
 * whose files are watched), TANDEM_POWERLOSS_JOURNAL (the journal file,
 * appended to), TANDEM_POWERLOSS_GRAVE (a directory on the same file
 * system where names about to be replaced or removed are hard-linked, so
 * that they can be put back).
 *
 * Journal records: one byte of kind, a u32 length of what follows, then:
 *   'D' dev u64, ino u64, size u64     the file's size before a change
 *   'U' dev u64, ino u64, off u64, ..  the bytes at off before a write
 *   'S' dev u64, ino u64               fsync / fdatasync of the file
 *   'C' path                           a new name (open O_CREAT, mkdir, link)
 *   'R' old \0 new \0 grave            rename old -> new (grave: what new was)
 *   'X' path \0 grave                  unlink / rmdir of path
 *   'Y' path                           fsync of the directory path
 * (all integers little-endian, as this machine's).
 *
 * What it intercepts: open, open64, openat, openat64, creat, creat64,
 * write, pwrite, pwrite64, writev, pwritev, pwritev64, pwritev2,
 * ftruncate, ftruncate64, fallocate, fallocate64, fsync, fdatasync,
 * rename, renameat, renameat2, link, linkat, unlink, unlinkat, mkdir,
 * mkdirat. sync_file_range and close make nothing durable and are left
 * alone. mmap'd writes are not seen (nothing watched uses them: the
 * relay's and the agent's redb stores write with pwrite).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static char dir[PATH_MAX];
static size_t dir_len;
static char grave[PATH_MAX];
static int journal = -1;
static unsigned long grave_n;
/* TANDEM_POWERLOSS_JOURNAL + ".crash": when the harness writes a number N
 * there, the process kills itself (SIGKILL) right after its N-th watched
 * change from then on, before any fsync can follow it: power lost at the
 * worst moment. */
static char crash_file[PATH_MAX + 8];
static long countdown = -1;
static int doomed;

#define REAL(ret, name, ...)                                                  \
    static ret (*real_##name)(__VA_ARGS__);                                   \
    static void load_##name(void) {                                           \
        if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name);              \
    }

__attribute__((constructor)) static void init(void) {
    const char *d = getenv("TANDEM_POWERLOSS_DIR");
    const char *j = getenv("TANDEM_POWERLOSS_JOURNAL");
    const char *g = getenv("TANDEM_POWERLOSS_GRAVE");
    if (!d || !j || !g || !*d) return;
    snprintf(dir, sizeof dir, "%s", d);
    dir_len = strlen(dir);
    while (dir_len > 1 && dir[dir_len - 1] == '/') dir[--dir_len] = 0;
    snprintf(grave, sizeof grave, "%s", g);
    snprintf(crash_file, sizeof crash_file, "%s.crash", j);
    journal = (int)syscall(SYS_openat, AT_FDCWD, j, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (journal < 0) {
        dir_len = 0;
        return;
    }
    /* Keep the fd away from the ones the program numbers itself. */
    int high = (int)syscall(SYS_fcntl, journal, F_DUPFD_CLOEXEC, 900);
    if (high >= 0) {
        syscall(SYS_close, journal);
        journal = high;
    }
}

static int active(void) { return dir_len > 0 && journal >= 0; }

/* Whether an absolute path is the watched directory or under it. */
static int watched(const char *p) {
    if (!active() || !p) return 0;
    if (strncmp(p, dir, dir_len) != 0) return 0;
    return p[dir_len] == 0 || p[dir_len] == '/';
}

/* The absolute path of `path` relative to `dirfd` in `out`. */
static void absolute(int dirfd, const char *path, char *out, size_t n) {
    if (!path) {
        out[0] = 0;
        return;
    }
    if (path[0] == '/') {
        snprintf(out, n, "%s", path);
        return;
    }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) base[0] = 0;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t l = readlink(link, base, sizeof base - 1);
        base[l > 0 ? l : 0] = 0;
    }
    const char *p = path;
    while (p[0] == '.' && p[1] == '/') p += 2;
    if (p[0] == '.' && p[1] == 0) snprintf(out, n, "%s", base);
    else snprintf(out, n, "%s/%s", base, p);
}

/* The path an fd names, if it is a watched file (regular or directory). */
static int fd_watched(int fd, struct stat *st, char *path, size_t n) {
    if (!active() || fd < 0 || fd == journal) return 0;
    if (fstat(fd, st) != 0) return 0;
    if (!S_ISREG(st->st_mode) && !S_ISDIR(st->st_mode)) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t l = readlink(link, path, n - 1);
    if (l <= 0) return 0;
    path[l] = 0;
    return watched(path);
}

static void jwrite(const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = syscall(SYS_write, journal, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            /* A journal that cannot be written would make the drop lie. */
            static const char msg[] = "powerloss shim: journal write failed\n";
            syscall(SYS_write, 2, msg, sizeof msg - 1);
            abort();
        }
        p += w;
        n -= (size_t)w;
    }
}

/* A watched change is about to be made: count it down if asked to. */
static void count_change(void) {
    if (countdown < 0) {
        int fd = (int)syscall(SYS_openat, AT_FDCWD, crash_file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return;
        char buf[32] = {0};
        ssize_t n = syscall(SYS_read, fd, buf, sizeof buf - 1);
        syscall(SYS_close, fd);
        syscall(SYS_unlinkat, AT_FDCWD, crash_file, 0);
        countdown = n > 0 ? atol(buf) : 1;
    }
    if (countdown > 0 && --countdown == 0) doomed = 1;
}

/* After a change: die if it was the one counted down to. */
static void maybe_die(void) {
    if (doomed) syscall(SYS_kill, (long)getpid(), (long)SIGKILL);
}

static void record(char kind, const void *a, size_t an, const void *b, size_t bn) {
    if (kind == 'D' || kind == 'R' || kind == 'C' || kind == 'X') count_change();
    uint32_t len = (uint32_t)(an + bn);
    char head[5];
    head[0] = kind;
    memcpy(head + 1, &len, 4);
    /* One write for small records keeps them whole; large ones are
     * written under the lock, and a kill between pieces leaves a torn
     * tail, which roll_back ignores (the change it announced never
     * happened: it is made after the record). */
    char small[4096];
    if (5 + an + bn <= sizeof small) {
        memcpy(small, head, 5);
        memcpy(small + 5, a, an);
        if (bn) memcpy(small + 5 + an, b, bn);
        jwrite(small, 5 + an + bn);
    } else {
        jwrite(head, 5);
        jwrite(a, an);
        if (bn) jwrite(b, bn);
    }
}

/* Before bytes [off, off + len) of fd's file change (or its size, to
 * `new_size` when not -1): its size and the bytes it holds there. */
static void before_change(int fd, const struct stat *st, off_t off, size_t len) {
    uint64_t dsz[3] = {(uint64_t)st->st_dev, (uint64_t)st->st_ino, (uint64_t)st->st_size};
    record('D', dsz, sizeof dsz, NULL, 0);
    if (off >= st->st_size || len == 0) return;
    size_t have = (size_t)(st->st_size - off);
    if (have > len) have = len;
    /* fd may be open for writing only: read through a descriptor of our
     * own on the same file. */
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int rfd = (int)syscall(SYS_openat, AT_FDCWD, link, O_RDONLY | O_CLOEXEC);
    if (rfd < 0) {
        static const char msg[] = "powerloss shim: cannot read a watched file back\n";
        syscall(SYS_write, 2, msg, sizeof msg - 1);
        abort();
    }
    size_t chunk = 1 << 20;
    char *buf = malloc(have < chunk ? have : chunk);
    if (!buf) abort();
    size_t done = 0;
    while (done < have) {
        size_t want = have - done < chunk ? have - done : chunk;
        ssize_t r = pread(rfd, buf, want, off + (off_t)done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        uint64_t head[3] = {(uint64_t)st->st_dev, (uint64_t)st->st_ino, (uint64_t)(off + (off_t)done)};
        record('U', head, sizeof head, buf, (size_t)r);
        done += (size_t)r;
    }
    free(buf);
    syscall(SYS_close, rfd);
}

/* Hard-link `path` into the grave (its name is about to go); the grave
 * name in `out`, empty when there was nothing to keep. */
static void bury(const char *path, char *out, size_t n) {
    struct stat st;
    out[0] = 0;
    if (lstat(path, &st) != 0) return;
    char g[PATH_MAX];
    snprintf(g, sizeof g, "%.3000s/%d-%lu", grave, (int)getpid(), ++grave_n);
    if (S_ISDIR(st.st_mode)) {
        /* A directory cannot be linked: only empty ones are removed, so
         * its name is enough (roll_back makes it again). */
        snprintf(out, n, "dir");
        return;
    }
    if (syscall(SYS_linkat, AT_FDCWD, path, AT_FDCWD, g, 0) == 0) snprintf(out, n, "%s", g);
}

static void record_paths(char kind, const char *a, const char *b, const char *c) {
    char buf[3 * PATH_MAX + 3];
    size_t n = 0;
    const char *parts[3] = {a, b, c};
    for (int i = 0; i < 3 && parts[i]; i++) {
        size_t l = strlen(parts[i]);
        if (i > 0) buf[n++] = 0;
        memcpy(buf + n, parts[i], l);
        n += l;
    }
    record(kind, buf, n, NULL, 0);
}

/* ---- opening ---- */

static void before_open(int dirfd, const char *path, int flags) {
    if (!active() || !(flags & (O_CREAT | O_TRUNC))) return;
    char abs[PATH_MAX];
    absolute(dirfd, path, abs, sizeof abs);
    if (!watched(abs)) return;
    struct stat st;
    if (stat(abs, &st) != 0) {
        if (flags & O_CREAT) record_paths('C', abs, NULL, NULL);
        return;
    }
    if ((flags & O_TRUNC) && S_ISREG(st.st_mode) && st.st_size > 0) {
        int fd = (int)syscall(SYS_openat, AT_FDCWD, abs, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            before_change(fd, &st, 0, (size_t)st.st_size);
            syscall(SYS_close, fd);
        }
    }
}

REAL(int, openat, int, const char *, int, ...)
REAL(int, openat64, int, const char *, int, ...)
REAL(int, open, const char *, int, ...)
REAL(int, open64, const char *, int, ...)

#define OPEN_BODY(call, dirfd)                                                \
    mode_t mode = 0;                                                          \
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {                                      \
        va_list ap;                                                           \
        va_start(ap, flags);                                                  \
        mode = va_arg(ap, mode_t);                                            \
        va_end(ap);                                                           \
    }                                                                         \
    if (!active()) return call;                                               \
    pthread_mutex_lock(&lock);                                                \
    before_open(dirfd, path, flags);                                          \
    int r = call;                                                             \
    maybe_die();                                                              \
    pthread_mutex_unlock(&lock);                                              \
    return r;

int open(const char *path, int flags, ...) {
    load_open();
    OPEN_BODY(real_open(path, flags, mode), AT_FDCWD)
}
int open64(const char *path, int flags, ...) {
    load_open64();
    OPEN_BODY(real_open64(path, flags, mode), AT_FDCWD)
}
int openat(int dirfd, const char *path, int flags, ...) {
    load_openat();
    OPEN_BODY(real_openat(dirfd, path, flags, mode), dirfd)
}
int openat64(int dirfd, const char *path, int flags, ...) {
    load_openat64();
    OPEN_BODY(real_openat64(dirfd, path, flags, mode), dirfd)
}
int creat(const char *path, mode_t mode) { return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }
int creat64(const char *path, mode_t mode) { return open64(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

/* ---- writing ---- */

/* Record what [off, off + len) holds before a write to fd (off -1: at the
 * fd's position, or its end with O_APPEND). Called under the lock. */
static void before_write(int fd, off_t off, size_t len) {
    struct stat st;
    char path[PATH_MAX];
    if (!fd_watched(fd, &st, path, sizeof path) || !S_ISREG(st.st_mode)) return;
    if (off < 0) {
        int fl = (int)syscall(SYS_fcntl, fd, F_GETFL);
        off = (fl >= 0 && (fl & O_APPEND)) ? st.st_size : lseek(fd, 0, SEEK_CUR);
        if (off < 0) off = 0;
    }
    before_change(fd, &st, off, len);
}

static size_t iov_len(const struct iovec *iov, int n) {
    size_t t = 0;
    for (int i = 0; i < n; i++) t += iov[i].iov_len;
    return t;
}

REAL(ssize_t, write, int, const void *, size_t)
REAL(ssize_t, pwrite, int, const void *, size_t, off_t)
REAL(ssize_t, pwrite64, int, const void *, size_t, off64_t)
REAL(ssize_t, writev, int, const struct iovec *, int)
REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t)
REAL(ssize_t, pwritev64, int, const struct iovec *, int, off64_t)
REAL(ssize_t, pwritev2, int, const struct iovec *, int, off_t, int)
REAL(int, ftruncate, int, off_t)
REAL(int, ftruncate64, int, off64_t)
REAL(int, fallocate, int, int, off_t, off_t)
REAL(int, fallocate64, int, int, off64_t, off64_t)

#define GUARD(setup, call)                                                    \
    if (!active()) return call;                                               \
    pthread_mutex_lock(&lock);                                                \
    setup;                                                                    \
    __typeof__(call) r = call;                                                \
    int saved = errno;                                                        \
    maybe_die();                                                              \
    pthread_mutex_unlock(&lock);                                              \
    errno = saved;                                                            \
    return r;

ssize_t write(int fd, const void *buf, size_t n) {
    load_write();
    if (fd <= 2) return real_write(fd, buf, n);
    GUARD(before_write(fd, -1, n), real_write(fd, buf, n))
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    load_pwrite();
    GUARD(before_write(fd, off, n), real_pwrite(fd, buf, n, off))
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    load_pwrite64();
    GUARD(before_write(fd, off, n), real_pwrite64(fd, buf, n, off))
}
ssize_t writev(int fd, const struct iovec *iov, int n) {
    load_writev();
    if (fd <= 2) return real_writev(fd, iov, n);
    GUARD(before_write(fd, -1, iov_len(iov, n)), real_writev(fd, iov, n))
}
ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off) {
    load_pwritev();
    GUARD(before_write(fd, off, iov_len(iov, n)), real_pwritev(fd, iov, n, off))
}
ssize_t pwritev64(int fd, const struct iovec *iov, int n, off64_t off) {
    load_pwritev64();
    GUARD(before_write(fd, off, iov_len(iov, n)), real_pwritev64(fd, iov, n, off))
}
ssize_t pwritev2(int fd, const struct iovec *iov, int n, off_t off, int flags) {
    load_pwritev2();
    GUARD(before_write(fd, off, iov_len(iov, n)), real_pwritev2(fd, iov, n, off, flags))
}

/* A size change: the size before, and the bytes a shrink cuts off. */
static void before_resize(int fd, off_t len) {
    struct stat st;
    char path[PATH_MAX];
    if (!fd_watched(fd, &st, path, sizeof path) || !S_ISREG(st.st_mode)) return;
    if (len < st.st_size) before_change(fd, &st, len, (size_t)(st.st_size - len));
    else before_change(fd, &st, st.st_size, 0);
}

int ftruncate(int fd, off_t len) {
    load_ftruncate();
    GUARD(before_resize(fd, len), real_ftruncate(fd, len))
}
int ftruncate64(int fd, off64_t len) {
    load_ftruncate64();
    GUARD(before_resize(fd, len), real_ftruncate64(fd, len))
}
int fallocate(int fd, int mode, off_t off, off_t len) {
    load_fallocate();
    GUARD(before_write(fd, off, (size_t)len), real_fallocate(fd, mode, off, len))
}
int fallocate64(int fd, int mode, off64_t off, off64_t len) {
    load_fallocate64();
    GUARD(before_write(fd, off, (size_t)len), real_fallocate64(fd, mode, off, len))
}

/* ---- making durable ---- */

static void after_sync(int fd) {
    struct stat st;
    char path[PATH_MAX];
    if (!fd_watched(fd, &st, path, sizeof path)) return;
    if (S_ISDIR(st.st_mode)) {
        record_paths('Y', path, NULL, NULL);
    } else {
        uint64_t di[2] = {(uint64_t)st.st_dev, (uint64_t)st.st_ino};
        record('S', di, sizeof di, NULL, 0);
    }
}

REAL(int, fsync, int)
REAL(int, fdatasync, int)

/* Under the lock, so that a write that another thread makes while the
 * fsync runs is not taken for synced. */
int fsync(int fd) {
    load_fsync();
    if (!active()) return real_fsync(fd);
    pthread_mutex_lock(&lock);
    int r = real_fsync(fd);
    int saved = errno;
    if (r == 0) after_sync(fd);
    pthread_mutex_unlock(&lock);
    errno = saved;
    return r;
}
int fdatasync(int fd) {
    load_fdatasync();
    if (!active()) return real_fdatasync(fd);
    pthread_mutex_lock(&lock);
    int r = real_fdatasync(fd);
    int saved = errno;
    if (r == 0) after_sync(fd);
    pthread_mutex_unlock(&lock);
    errno = saved;
    return r;
}

/* ---- names ---- */

REAL(int, renameat2, int, const char *, int, const char *, unsigned int)
REAL(int, renameat, int, const char *, int, const char *)
REAL(int, rename, const char *, const char *)
REAL(int, linkat, int, const char *, int, const char *, int)
REAL(int, link, const char *, const char *)
REAL(int, unlinkat, int, const char *, int)
REAL(int, unlink, const char *)
REAL(int, rmdir, const char *)
REAL(int, mkdirat, int, const char *, mode_t)
REAL(int, mkdir, const char *, mode_t)

static int do_rename(int od, const char *old, int nd, const char *new, int (*call)(void *), void *arg) {
    if (!active()) return call(arg);
    char a[PATH_MAX], b[PATH_MAX], g[PATH_MAX];
    absolute(od, old, a, sizeof a);
    absolute(nd, new, b, sizeof b);
    if (!watched(a) && !watched(b)) return call(arg);
    pthread_mutex_lock(&lock);
    bury(b, g, sizeof g);
    int r = call(arg);
    int saved = errno;
    if (r == 0) record_paths('R', a, b, g);
    else if (g[0] && strcmp(g, "dir") != 0) syscall(SYS_unlinkat, AT_FDCWD, g, 0);
    maybe_die();
    pthread_mutex_unlock(&lock);
    errno = saved;
    return r;
}

struct rename_args {
    int od;
    const char *old;
    int nd;
    const char *new;
    unsigned int flags;
};
static int call_renameat2(void *p) {
    struct rename_args *a = p;
    load_renameat2();
    return real_renameat2(a->od, a->old, a->nd, a->new, a->flags);
}
static int call_renameat(void *p) {
    struct rename_args *a = p;
    load_renameat();
    return real_renameat(a->od, a->old, a->nd, a->new);
}
static int call_rename(void *p) {
    struct rename_args *a = p;
    load_rename();
    return real_rename(a->old, a->new);
}
int renameat2(int od, const char *old, int nd, const char *new, unsigned int flags) {
    struct rename_args a = {od, old, nd, new, flags};
    return do_rename(od, old, nd, new, call_renameat2, &a);
}
int renameat(int od, const char *old, int nd, const char *new) {
    struct rename_args a = {od, old, nd, new, 0};
    return do_rename(od, old, nd, new, call_renameat, &a);
}
int rename(const char *old, const char *new) {
    struct rename_args a = {AT_FDCWD, old, AT_FDCWD, new, 0};
    return do_rename(AT_FDCWD, old, AT_FDCWD, new, call_rename, &a);
}

static int new_name(int dirfd, const char *path, int r) {
    if (r == 0 && active()) {
        char a[PATH_MAX];
        absolute(dirfd, path, a, sizeof a);
        if (watched(a)) {
            int saved = errno;
            pthread_mutex_lock(&lock);
            record_paths('C', a, NULL, NULL);
            pthread_mutex_unlock(&lock);
            errno = saved;
        }
    }
    return r;
}
int linkat(int od, const char *old, int nd, const char *new, int flags) {
    load_linkat();
    return new_name(nd, new, real_linkat(od, old, nd, new, flags));
}
int link(const char *old, const char *new) {
    load_link();
    return new_name(AT_FDCWD, new, real_link(old, new));
}
int mkdirat(int dirfd, const char *path, mode_t mode) {
    load_mkdirat();
    return new_name(dirfd, path, real_mkdirat(dirfd, path, mode));
}
int mkdir(const char *path, mode_t mode) {
    load_mkdir();
    return new_name(AT_FDCWD, path, real_mkdir(path, mode));
}

static int gone(int dirfd, const char *path, int (*call)(void *), void *arg) {
    if (!active()) return call(arg);
    char a[PATH_MAX], g[PATH_MAX];
    absolute(dirfd, path, a, sizeof a);
    if (!watched(a)) return call(arg);
    pthread_mutex_lock(&lock);
    bury(a, g, sizeof g);
    int r = call(arg);
    int saved = errno;
    if (r == 0) record_paths('X', a, g, NULL);
    else if (g[0] && strcmp(g, "dir") != 0) syscall(SYS_unlinkat, AT_FDCWD, g, 0);
    pthread_mutex_unlock(&lock);
    errno = saved;
    return r;
}
struct unlink_args {
    int dirfd;
    const char *path;
    int flags;
};
static int call_unlinkat(void *p) {
    struct unlink_args *a = p;
    load_unlinkat();
    return real_unlinkat(a->dirfd, a->path, a->flags);
}
static int call_unlink(void *p) {
    struct unlink_args *a = p;
    load_unlink();
    return real_unlink(a->path);
}
static int call_rmdir(void *p) {
    struct unlink_args *a = p;
    load_rmdir();
    return real_rmdir(a->path);
}
int unlinkat(int dirfd, const char *path, int flags) {
    struct unlink_args a = {dirfd, path, flags};
    return gone(dirfd, path, call_unlinkat, &a);
}
int unlink(const char *path) {
    struct unlink_args a = {AT_FDCWD, path, 0};
    return gone(AT_FDCWD, path, call_unlink, &a);
}
int rmdir(const char *path) {
    struct unlink_args a = {AT_FDCWD, path, 0};
    return gone(AT_FDCWD, path, call_rmdir, &a);
}
