/*
 * fastckpt's `tar` for CRIU: the tmpfs mounts of a container, without two execs each.
 *
 * CRIU saves the content of every tmpfs mount by running `tar --create --gzip`
 * (and restores it with `tar --extract --gzip`), found on PATH. A runc
 * container has five (/dev, /dev/shm, /sys/fs/cgroup and the masked
 * /proc/acpi and /sys/firmware), nearly empty: each costs a tar and the gzip
 * tar forks, ~2.5 ms of the dump and again of the restore. fastckpt puts the
 * directory of this program first on the PATH of the CRIU it runs, and this
 * program does those two exact commands itself, for the content they
 * nearly always hold: directories, symbolic links, device nodes, FIFOs and
 * small regular files. It writes what GNU tar writes (GNU format headers,
 * numeric owners, gzip), and extracts as GNU tar does for root (owners,
 * modes, modification times; directories' last).
 *
 * Anything else -- another command line, a long name, a hard link, a sparse
 * or large file, a socket, a file on another file system, an archive with
 * user names, pax or GNU extension headers -- is handed to the real tar (the
 * next `tar` on PATH), with the same arguments and the same input, so the
 * result is GNU tar's. Set FASTCKPT_TAR_SHIM=0 to always do that.
 *
 * Build: cc -O2 -o tar tar_shim.c -lz (setup.py does, into fastckpt/libexec).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include <linux/openat2.h>

#include "shim_io.h"

#define BLOCK 512
#define RECORD (20 * BLOCK)              /* GNU tar's default blocking factor */
#define MAX_FILE (1 << 20)               /* bigger regular files: real tar */
#define MAX_GZ_INPUT (8 << 20)              /* compressed archive read before deciding */
#define MAX_ARCHIVE (32 << 20)           /* decompressed */
#define MAX_ENTRIES 4096
#define MAX_DEPTH 32

static const char DIR_ARG[] = "<dir>"; /* where the command line has the directory */
static const char *const CREATE_ARGS[] = { "--create", "--gzip", "--no-unquote", "--no-wildcards",
					   "--one-file-system", "--check-links", "--preserve-permissions",
					   "--sparse", "--numeric-owner", "--directory", DIR_ARG, ".", NULL };
static const char *const EXTRACT_ARGS[] = { "--extract", "--gzip", "--no-unquote", "--no-wildcards",
					    "--directory", DIR_ARG, NULL };

/* --- the real tar ------------------------------------------------------------------ */

static char **g_argv;

/* The next `tar` on PATH that is not this program. */
static int find_real_tar(char *out, size_t n)
{
	char self_dir[PATH_MAX], dir_real[PATH_MAX], *path, *save = NULL, *d;
	ssize_t len = readlink("/proc/self/exe", self_dir, sizeof(self_dir) - 1);

	if (len <= 0)
		return -1;
	self_dir[len] = 0;
	*strrchr(self_dir, '/') = 0;
	path = strdup(getenv("PATH") ? getenv("PATH") : "/usr/bin:/bin");
	if (!path)
		return -1;
	for (d = strtok_r(path, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		if (!*d || !realpath(d, dir_real) || !strcmp(dir_real, self_dir))
			continue;
		if ((size_t)snprintf(out, n, "%s/tar", d) >= n)
			continue;
		if (access(out, X_OK) == 0) {
			free(path);
			return 0;
		}
	}
	free(path);
	return -1;
}

/* Run the real tar with our arguments; its input is ours from START, of which HEAD (LEN bytes) was read. */
static int real_tar(off_t start, const unsigned char *head, size_t len)
{
	char tar[PATH_MAX];
	int pfd[2], status = 2 << 8;
	pid_t pid;

	if (find_real_tar(tar, sizeof(tar))) {
		fprintf(stderr, "tar: fastckpt's shim found no other tar on PATH\n");
		return 127;
	}
	g_argv[0] = tar;
	if (!len || (start >= 0 && lseek(0, start, SEEK_SET) == start)) {
		execv(tar, g_argv);
		fprintf(stderr, "tar: cannot run %s: %s\n", tar, strerror(errno));
		return 127;
	}
	/* input that cannot be rewound (a pipe): feed what was read, then the rest */
	if (pipe(pfd))
		return 2;
	pid = fork();
	if (pid < 0)
		return 2;
	if (pid == 0) {
		dup2(pfd[0], 0);
		close(pfd[0]);
		close(pfd[1]);
		execv(tar, g_argv);
		_exit(127);
	}
	close(pfd[0]);
	signal(SIGPIPE, SIG_IGN); /* tar may stop reading early: it says why, and its status is ours */
	for (;;) {
		ssize_t w;
		while (len) {
			w = write(pfd[1], head, len);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				goto done;
			head += w;
			len -= w;
		}
		static unsigned char buf[65536];
		w = read(0, buf, sizeof(buf));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		head = buf;
		len = w;
	}
done:
	close(pfd[1]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 2;
}

/* --- create -------------------------------------------------------------------------- */

struct buf {
	unsigned char *p;
	size_t len, cap;
};

static int buf_grow(struct buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : RECORD;
	while (cap < b->len + more)
		cap *= 2;
	unsigned char *p = realloc(b->p, cap);
	if (!p)
		return -1;
	b->p = p;
	b->cap = cap;
	return 0;
}

static int octal(char *field, size_t width, unsigned long long v)
{
	/* width-1 digits and a NUL, as GNU tar writes small values */
	char tmp[32];
	if (v >> (3 * (width - 1)))
		return -1;
	snprintf(tmp, sizeof(tmp), "%0*llo", (int)(width - 1), v);
	memcpy(field, tmp, width - 1);
	field[width - 1] = 0;
	return 0;
}

/* One header (and the data of a regular file); -1: not for us (too long, too big). */
static int add_entry(struct buf *ar, const char *name, const struct stat *st, const char *link, int fd)
{
	unsigned char *h;
	unsigned sum = 0;
	char type;
	size_t nlen = strlen(name), i;
	unsigned long long size = 0;

	if (nlen >= 100 || (link && strlen(link) >= 100))
		return -1;
	if (S_ISDIR(st->st_mode))
		type = '5';
	else if (S_ISLNK(st->st_mode))
		type = '2';
	else if (S_ISCHR(st->st_mode))
		type = '3';
	else if (S_ISBLK(st->st_mode))
		type = '4';
	else if (S_ISFIFO(st->st_mode))
		type = '6';
	else if (S_ISREG(st->st_mode)) {
		type = '0';
		size = st->st_size;
		/* hard links and possibly sparse files: GNU tar has its own forms for them */
		if (size > MAX_FILE || (unsigned long long)st->st_blocks * 512 < size)
			return -1;
	} else
		return -1; /* sockets: GNU tar skips them, saying so */
	if (type != '5' && st->st_nlink > 1)
		return -1; /* hard links: GNU tar writes the second name as a link */
	if (st->st_mtim.tv_sec < 0)
		return -1;
	if (ar->len + BLOCK + ((size + BLOCK - 1) / BLOCK) * BLOCK + RECORD > MAX_ARCHIVE)
		return -1; /* much content: real tar streams it */
	if (buf_grow(ar, BLOCK + ((size + BLOCK - 1) / BLOCK) * BLOCK))
		return -1;
	h = ar->p + ar->len;
	memset(h, 0, BLOCK);
	memcpy(h, name, nlen);
	if (octal((char *)h + 100, 8, st->st_mode & 07777) || octal((char *)h + 108, 8, st->st_uid) ||
	    octal((char *)h + 116, 8, st->st_gid) || octal((char *)h + 124, 12, size) ||
	    octal((char *)h + 136, 12, st->st_mtim.tv_sec))
		return -1;
	h[156] = type;
	if (link)
		memcpy(h + 157, link, strlen(link));
	memcpy(h + 257, "ustar  ", 8); /* GNU magic and version: "ustar  \0" */
	if (type == '3' || type == '4') {
		if (octal((char *)h + 329, 8, major(st->st_rdev)) || octal((char *)h + 337, 8, minor(st->st_rdev)))
			return -1;
	}
	memset(h + 148, ' ', 8);
	for (i = 0; i < BLOCK; i++)
		sum += h[i];
	snprintf((char *)h + 148, 8, "%06o", sum); /* then NUL, then the space left */
	h[155] = ' ';
	ar->len += BLOCK;
	if (size) {
		size_t got = 0;
		while (got < size) {
			ssize_t r = pread(fd, ar->p + ar->len + got, size - got, got);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				return -1; /* changed under us: let real tar say so */
			got += r;
		}
		memset(ar->p + ar->len + size, 0, ((size + BLOCK - 1) / BLOCK) * BLOCK - size);
		ar->len += ((size + BLOCK - 1) / BLOCK) * BLOCK;
	}
	return 0;
}

/* Add the content of directory DFD (named PREFIX in the archive, with its '/'); -1: not for us. */
static int add_dir(struct buf *ar, int dfd, const char *prefix, dev_t dev, int depth, int *count)
{
	DIR *d;
	struct dirent *e;
	int ret = 0;

	if (depth > MAX_DEPTH)
		return -1;
	d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return -1;
	}
	while (!ret && (errno = 0, e = readdir(d))) {
		char name[PATH_MAX], link[PATH_MAX];
		struct stat st;
		int fd = -1;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (++*count > MAX_ENTRIES || fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) ||
		    st.st_dev != dev) {
			ret = -1;
			break;
		}
		if (snprintf(name, sizeof(name), "%s%s%s", prefix, e->d_name, S_ISDIR(st.st_mode) ? "/" : "") >=
		    (int)sizeof(name)) {
			ret = -1;
			break;
		}
		if (S_ISLNK(st.st_mode)) {
			ssize_t n = readlinkat(dirfd(d), e->d_name, link, sizeof(link) - 1);
			if (n < 0 || n != st.st_size) {
				ret = -1;
				break;
			}
			link[n] = 0;
			ret = add_entry(ar, name, &st, link, -1);
		} else if (S_ISREG(st.st_mode)) {
			fd = openat(dirfd(d), e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOATIME);
			if (fd < 0)
				fd = openat(dirfd(d), e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
			ret = fd < 0 ? -1 : add_entry(ar, name, &st, NULL, fd);
			if (fd >= 0)
				close(fd);
		} else {
			ret = add_entry(ar, name, &st, NULL, -1);
			if (!ret && S_ISDIR(st.st_mode)) {
				int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
				ret = sub < 0 ? -1 : add_dir(ar, sub, name, dev, depth + 1, count);
			}
		}
	}
	if (errno)
		ret = -1;
	closedir(d);
	return ret;
}

static int create(const char *dir)
{
	struct buf ar = { 0 }, gz = { 0 };
	struct stat st;
	int dfd, count = 0;
	z_stream z = { 0 };

	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fstat(dfd, &st))
		return real_tar(0, NULL, 0);
	if (add_entry(&ar, "./", &st, NULL, -1) ||
	    add_dir(&ar, dup(dfd), "./", st.st_dev, 0, &count))
		return real_tar(0, NULL, 0); /* nothing written yet */
	close(dfd);
	/* two zero blocks at least, up to a whole record */
	size_t total = ((ar.len + 2 * BLOCK + RECORD - 1) / RECORD) * RECORD;
	if (buf_grow(&ar, total - ar.len))
		return real_tar(0, NULL, 0);
	memset(ar.p + ar.len, 0, total - ar.len);
	ar.len = total;

	if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK ||
	    buf_grow(&gz, deflateBound(&z, ar.len)))
		return real_tar(0, NULL, 0);
	z.next_in = ar.p;
	z.avail_in = ar.len;
	z.next_out = gz.p;
	z.avail_out = gz.cap;
	if (deflate(&z, Z_FINISH) != Z_STREAM_END)
		return real_tar(0, NULL, 0);
	gz.len = gz.cap - z.avail_out;
	deflateEnd(&z);
	if (write_all(1, gz.p, gz.len)) {
		fprintf(stderr, "tar: cannot write the archive: %s\n", strerror(errno));
		return 2;
	}
	return 0;
}

/* --- extract ------------------------------------------------------------------------- */

struct entry {
	const unsigned char *h;
	const char *path; /* relative to the directory, "." for the root */
	const unsigned char *data;
	unsigned long long size, mtime;
	unsigned mode, uid, gid, major, minor;
	char type;
	char link[101];
};

static int parse_octal(const unsigned char *f, size_t width, unsigned long long *out)
{
	size_t i = 0;
	unsigned long long v = 0;

	while (i < width && f[i] == ' ')
		i++;
	if (i == width || f[i] < '0' || f[i] > '7')
		return -1;
	for (; i < width && f[i] >= '0' && f[i] <= '7'; i++)
		v = v * 8 + (f[i] - '0');
	for (; i < width; i++)
		if (f[i] != 0 && f[i] != ' ')
			return -1;
	*out = v;
	return 0;
}

/* A path we extract without surprises: relative, and no empty, "." or ".." component. */
static int plain_path(const char *p)
{
	const char *c = p;

	for (;;) {
		const char *end = strchrnul(c, '/');
		size_t n = end - c;

		if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
			return -1; /* "/x", "a//b", "./a/./b", "../x": each has its own rules in GNU tar */
		if (!*end)
			return 0;
		c = end + 1;
	}
}

/*
 * GNU tar's test of whether directory D (a name as in the archive, trailing slashes taken off) is
 * an ancestor of F: a directory's owner, mode and time are set once an entry outside it comes.
 */
static int gnu_ancestor(const char *d, const char *f)
{
	size_t dl = strlen(d), fl = strlen(f);

	return dl < fl && f[dl] && (f[dl] == '/' || d[dl - 1] == '/') && !memcmp(f, d, dl);
}

/* Parse the archive; 1: not for us (real tar), -1: damaged (real tar says how). */
static int parse(const unsigned char *ar, size_t len, struct entry *es, int *n)
{
	size_t off = 0;
	/* directories whose owner, mode and time GNU tar has not set yet, latest last; and those it
	 * set already (an entry outside them came), where a later entry would change their time */
	static int open_dirs[MAX_ENTRIES];
	static char closed[MAX_ENTRIES];
	int depth = 0;

	*n = 0;
	while (off + BLOCK <= len) {
		const unsigned char *h = ar + off;
		struct entry *e;
		unsigned long long v, sum;
		unsigned s = 0, i;
		static char names[MAX_ENTRIES][101];

		for (i = 0; i < BLOCK && !h[i]; i++)
			;
		if (i == BLOCK)
			return 0; /* the end */
		if (*n >= MAX_ENTRIES)
			return 1;
		e = &es[*n];
		memset(e, 0, sizeof(*e));
		for (i = 0; i < BLOCK; i++)
			s += (i >= 148 && i < 156) ? ' ' : h[i];
		if (parse_octal(h + 148, 8, &sum) || sum != s)
			return 1;
		if (memcmp(h + 257, "ustar  ", 8) && memcmp(h + 257, "ustar\0" "00", 8))
			return 1;
		if (h[265] || h[297] || h[345]) /* user/group names, a ustar prefix: real tar */
			return 1;
		if (h[99]) /* no room for the NUL: a name of exactly 100 bytes */
			return 1;
		memcpy(names[*n], h, 100);
		names[*n][100] = 0;
		if (h[256])
			return 1;
		memcpy(e->link, h + 157, 100);
		e->type = h[156] ? h[156] : '0';
		if (!strchr("025346", e->type))
			return 1; /* hard links, GNU and pax extensions, sparse files */
		if (parse_octal(h + 100, 8, &v) || v > 07777)
			return 1;
		e->mode = v;
		if (parse_octal(h + 108, 8, &v) || v > UINT32_MAX - 1)
			return 1;
		e->uid = v;
		if (parse_octal(h + 116, 8, &v) || v > UINT32_MAX - 1)
			return 1;
		e->gid = v;
		if (parse_octal(h + 124, 12, &e->size) || parse_octal(h + 136, 12, &e->mtime))
			return 1;
		if (e->type == '3' || e->type == '4') {
			if (parse_octal(h + 329, 8, &v) || v > 0xfff)
				return 1;
			e->major = v;
			if (parse_octal(h + 337, 8, &v) || v > 0xfffff)
				return 1;
			e->minor = v;
		}
		if (e->type != '0' && e->size)
			return 1;
		off += BLOCK;
		if (e->size > len - off)
			return -1;
		e->data = ar + off;
		off += ((e->size + BLOCK - 1) / BLOCK) * BLOCK;

		/* "./x/" -> "x"; "./" -> "." */
		char *p = names[*n];
		size_t l = strlen(p);
		if (l > 1 && p[l - 1] == '/' && e->type != '5')
			return 1; /* GNU tar makes a directory of it */
		while (l > 1 && p[l - 1] == '/')
			p[--l] = 0;
		if (!strcmp(p, ".") || !strcmp(p, "./"))
			p = ".";
		else if (!strncmp(p, "./", 2))
			p += 2;
		if (strcmp(p, ".") && plain_path(p))
			return 1;
		if (!strcmp(p, ".") && e->type != '5')
			return 1;
		/* a path given twice (a directory, then a link in its place...): GNU tar's rules */
		for (int j = 0; j < *n; j++)
			if (!strcmp(es[j].path, p))
				return 1;
		e->path = p;
		/* GNU tar sets the owner, mode and time of the directories this entry is not in now */
		while (depth && !gnu_ancestor(names[open_dirs[depth - 1]], names[*n]))
			closed[open_dirs[--depth]] = 1;
		/* the parent must be the root or a directory extracted before (GNU tar would make it),
		 * still open: an entry in a directory whose time GNU tar has set changes it again */
		char *slash = strrchr(p, '/');
		int parent = -1;
		for (int j = 0; j < *n && parent < 0; j++)
			if (slash ? es[j].type == '5' && strlen(es[j].path) == (size_t)(slash - p) &&
					    !strncmp(es[j].path, p, slash - p)
				  : strcmp(p, ".") && !strcmp(es[j].path, "."))
				parent = j;
		if ((slash && parent < 0) || (parent >= 0 && closed[parent]))
			return 1;
		closed[*n] = 0;
		if (e->type == '5')
			open_dirs[depth++] = *n;
		(*n)++;
	}
	return -1; /* no end marker */
}

static int set_times(int dfd, const char *path, unsigned long long mtime, int flags)
{
	struct timespec ts[2] = { { 0, UTIME_NOW }, { (time_t)mtime, 0 } };
	return utimensat(dfd, path, ts, flags);
}

static int fail(const char *what, const char *path)
{
	fprintf(stderr, "tar: %s: cannot %s: %s\n", path, what, strerror(errno));
	return 2;
}

/* Make way for a non-directory: GNU tar replaces what is there. */
static int make_way(int dfd, const char *path)
{
	struct stat st;

	if (fstatat(dfd, path, &st, AT_SYMLINK_NOFOLLOW))
		return errno == ENOENT ? 0 : -1;
	return unlinkat(dfd, path, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0);
}

/*
 * The directory that holds PATH, opened below ROOT without following any symbolic link (an
 * archive must not reach outside the directory through a link it made), and PATH's last part.
 */
static int at_parent(int root, const char *path, const char **base)
{
	struct open_how how = { .flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC,
				.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH };
	const char *slash = strrchr(path, '/');
	char dir[101];

	if (!slash) {
		*base = path;
		return fcntl(root, F_DUPFD_CLOEXEC, 3);
	}
	memcpy(dir, path, slash - path);
	dir[slash - path] = 0;
	*base = slash + 1;
	return syscall(SYS_openat2, root, dir, &how, sizeof(how));
}

/*
 * fchmodat() that never follows a symbolic link (something may put one in the node's place): the
 * kernel's fchmodat2 with AT_SYMLINK_NOFOLLOW (6.6), else the node opened O_PATH | O_NOFOLLOW and
 * changed through /proc/self/fd (what glibc does for it); a link is refused (ELOOP).
 */
#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif
static int chmod_nofollow(int dfd, const char *base, mode_t mode)
{
	char proc[64];
	struct stat st;
	int fd, ret;

	if (!syscall(SYS_fchmodat2, dfd, base, mode, AT_SYMLINK_NOFOLLOW))
		return 0;
	if (errno != ENOSYS && errno != EINVAL)
		return -1; /* EOPNOTSUPP: a link; or the reason chmod failed */
	fd = openat(dfd, base, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st)) {
		close(fd);
		return -1;
	}
	if (S_ISLNK(st.st_mode)) {
		close(fd);
		errno = ELOOP;
		return -1;
	}
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	ret = chmod(proc, mode);
	close(fd);
	return ret;
}

/* One entry, in the directory DFD under the name BASE; directories get their owner, mode and time later. */
static int extract_one(int dfd, const char *base, const struct entry *e)
{
	const char *p = e->path;
	struct stat st;
	int fd;

	switch (e->type) {
	case '5':
		if (strcmp(p, ".") && mkdirat(dfd, base, 0700) &&
		    (errno != EEXIST || fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) || !S_ISDIR(st.st_mode)))
			return fail("make directory", p);
		return 0;
	case '0':
		if (make_way(dfd, base))
			return fail("replace", p);
		fd = openat(dfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0)
			return fail("create", p);
		if (write_all(fd, e->data, e->size) || fchown(fd, e->uid, e->gid) || fchmod(fd, e->mode)) {
			close(fd);
			return fail("write", p);
		}
		close(fd);
		break;
	case '2':
		if (make_way(dfd, base) || symlinkat(e->link, dfd, base))
			return fail("make symbolic link", p);
		if (fchownat(dfd, base, e->uid, e->gid, AT_SYMLINK_NOFOLLOW))
			return fail("set the owner of", p);
		break;
	default: { /* '3' '4' '6' */
		mode_t kind = e->type == '3' ? S_IFCHR : e->type == '4' ? S_IFBLK : S_IFIFO;
		if (make_way(dfd, base) || mknodat(dfd, base, kind | 0600, makedev(e->major, e->minor)))
			return fail("make node", p);
		if (fchownat(dfd, base, e->uid, e->gid, AT_SYMLINK_NOFOLLOW) || chmod_nofollow(dfd, base, e->mode))
			return fail("set the owner and mode of", p);
	}
	}
	if (set_times(dfd, base, e->mtime, AT_SYMLINK_NOFOLLOW))
		return fail("set the time of", p);
	return 0;
}

/* A directory's owner, mode and time, once its content is in. */
static int finish_dir(int dfd, const char *base, const struct entry *e)
{
	struct timespec ts[2] = { { 0, UTIME_NOW }, { (time_t)e->mtime, 0 } };
	int fd = openat(dfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return fail("open", e->path);
	if (fchown(fd, e->uid, e->gid) || fchmod(fd, e->mode))
		ret = fail("set the owner and mode of", e->path);
	else if (futimens(fd, ts))
		ret = fail("set the time of", e->path);
	close(fd);
	return ret;
}

/* FN on entry E, in the directory that holds it (opened without following links). */
static int at(int root, const struct entry *e, int (*fn)(int, const char *, const struct entry *))
{
	const char *base;
	int dfd = at_parent(root, e->path, &base), ret;

	if (dfd < 0)
		return fail("open the directory of", e->path);
	ret = fn(dfd, base, e);
	close(dfd);
	return ret;
}

static int extract_entries(int root, const struct entry *es, int n)
{
	int ret = 0;

	for (int i = 0; i < n && !ret; i++)
		ret = at(root, &es[i], extract_one);
	/* directories last, deepest (latest) first, as GNU tar's delayed set-stat */
	for (int i = n - 1; i >= 0 && !ret; i--)
		if (es[i].type == '5')
			ret = at(root, &es[i], finish_dir);
	return ret;
}

static int extract(const char *dir)
{
	static unsigned char in[MAX_GZ_INPUT];
	static struct entry es[MAX_ENTRIES];
	off_t start = lseek(0, 0, SEEK_CUR);
	size_t len = 0;
	unsigned char *ar;
	z_stream z = { 0 };
	int n, r, dfd;

	for (;;) {
		ssize_t got = read(0, in + len, sizeof(in) - len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return real_tar(start, in, len);
		if (got == 0)
			break;
		len += got;
		if (len == sizeof(in))
			return real_tar(start, in, len); /* large: real tar streams it */
	}
	ar = malloc(MAX_ARCHIVE);
	if (!ar || inflateInit2(&z, 15 + 16) != Z_OK)
		return real_tar(start, in, len);
	z.next_in = in;
	z.avail_in = len;
	z.next_out = ar;
	z.avail_out = MAX_ARCHIVE;
	r = inflate(&z, Z_FINISH);
	/* one gzip member, all of the input, nothing left over */
	if (r != Z_STREAM_END || z.avail_in)
		return real_tar(start, in, len);
	r = parse(ar, MAX_ARCHIVE - z.avail_out, es, &n);
	if (r)
		return real_tar(start, in, len);
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return real_tar(start, in, len); /* real tar says why */
	{
		struct open_how how = { .flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC, .resolve = RESOLVE_BENEATH };
		int probe = syscall(SYS_openat2, dfd, ".", &how, sizeof(how));
		if (probe < 0) /* a kernel without openat2 (< 5.6): GNU tar */
			return real_tar(start, in, len);
		close(probe);
	}
	umask(0);
	return extract_entries(dfd, es, n);
}

/* --- main ---------------------------------------------------------------------------- */

/* ARGV (after argv[0]) is exactly WANT, with the directory where WANT has DIR_ARG. */
static int args_are(int argc, char **argv, const char *const *want, const char **dir)
{
	int i;

	for (i = 0; want[i]; i++) {
		if (i + 1 >= argc)
			return 0;
		if (want[i] == DIR_ARG)
			*dir = argv[i + 1];
		else if (strcmp(argv[i + 1], want[i]))
			return 0;
	}
	return i + 1 == argc && *dir;
}

int main(int argc, char **argv)
{
	const char *dir = NULL, *off = getenv("FASTCKPT_TAR_SHIM");

	g_argv = argv;
	if (off && !strcmp(off, "0"))
		return real_tar(0, NULL, 0);
	if (args_are(argc, argv, CREATE_ARGS, &dir))
		return create(dir);
	if (args_are(argc, argv, EXTRACT_ARGS, &dir))
		return extract(dir);
	return real_tar(0, NULL, 0);
}
