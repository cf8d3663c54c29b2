/*
 * fastckpt's iptables-save/-restore for CRIU: the answers CRIU asks for on every dump, without the execs.
 *
 * On every dump of a network namespace CRIU (criu/util.c, get_legacy_iptables_bin) runs
 * `iptables-save -V`, `iptables-legacy-save -V` and the ip6tables pair to learn which backend the
 * tools use, then `iptables-legacy-save` and `ip6tables-legacy-save` (through `sh -c`) inside the
 * namespace; on every restore the four `-restore -V`. Each exec of these dynamically linked xtables
 * multi-binaries costs 1.3-3 ms. fastckpt puts the directory of this program (installed under each
 * of those names) first on the PATH of the CRIU it runs, and it answers two exact questions itself:
 *
 * - NAME -V: the real tool's output and exit status, replayed from a cache keyed by the real
 *   tool's identity (the PATH entry it is found at, its resolved path, device, inode, size, mtime
 *   and ctime; the name and argv[0] it was run with; and the identity of /etc/ld.so.cache, which
 *   ldconfig rewrites whenever a library is installed or changed; with LD_PRELOAD, LD_LIBRARY_PATH
 *   or /etc/ld.so.preload, which choose libraries otherwise, nothing is cached). A miss runs the real
 *   tool, passes its output on, and stores it.
 * - iptables-legacy-save / ip6tables-legacy-save without arguments, in a network namespace with no
 *   legacy table (/proc/net/ip_tables_names, resp. ip6_tables_names, which is all the tool reads
 *   then, present and empty): what the real tool did in that state, cached the same way, and only
 *   when it printed nothing at all (a tool that wrote a header, a date, a warning is always run).
 *
 * A result is cached only when the real tool exited (no signal) and wrote nothing on stderr; the
 * cache is /run/fastckpt/xtables (root's, 0700; a directory of another owner or writable by
 * others is not used), one file per key, written atomically, the whole key inside and compared.
 *
 * CRIU runs the legacy saves as `sh -c iptables-legacy-save`: installed as `sh` too, this program
 * answers exactly that command line from the cache when the shell would run this program for it
 * (the first of that name on PATH) and the cache has the answer; the shell's own start-up is saved.
 * Any other shell command line, or no cached answer, is the real shell's (the next `sh` on PATH),
 * with the same argv: a user's action scripts, run by their own path, never come here.
 *
 * Anything else -- other arguments, tables loaded, no cache -- execs the real tool (the next of
 * that name on PATH that is not this program) with the same argv (argv[0] too: the multi-binaries
 * choose what to be from it) and the same input. Set FASTCKPT_XTABLES_SHIM=0 to always do that.
 *
 * Build: cc -O2 -o xtables-shim xtables_shim.c (setup.py does, into fastckpt/libexec/xtables, and
 * links the names to it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shim_io.h"

#define CACHE_PARENT "/run/fastckpt"
#define CACHE_DIR CACHE_PARENT "/xtables"
#define CACHE_MAGIC "fastckpt-xtables-cache 1\n"
#define MAX_OUT 8192 /* a -V answer is one line; more is not cached */

static const char *const NAMES[] = { "iptables-save", "ip6tables-save", "iptables-legacy-save",
				     "ip6tables-legacy-save", "iptables-restore", "ip6tables-restore",
				     "iptables-legacy-restore", "ip6tables-legacy-restore", NULL };

static char **g_argv;
static const char *g_name; /* the name we were run as (the file exec'd), e.g. "iptables-save" */
static char g_real[PATH_MAX]; /* the real tool, once found */

/* --- the real tool ------------------------------------------------------------------- */

/* The next directory of PATH (*REST: what is left of a copy of it), as execvp() and the shell take
 * them: an empty entry is the working directory. NULL past the last. */
static char *next_dir(char **rest)
{
	char *d = strsep(rest, ":");

	return d && !*d ? "." : d;
}

/* The next g_name on PATH that is not this program (not in its directory, not the same file). */
static int find_real(void)
{
	char self[PATH_MAX], *path, *rest, *d;
	struct stat self_st, dir_st, self_dir_st, st;
	ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (g_real[0])
		return 0;
	if (len <= 0)
		return -1;
	self[len] = 0;
	if (stat(self, &self_st))
		return -1;
	*strrchr(self, '/') = 0;
	if (stat(*self ? self : "/", &self_dir_st))
		return -1;
	path = strdup(getenv("PATH") ? getenv("PATH") : "/usr/local/bin:/usr/bin:/bin");
	if (!path)
		return -1;
	for (rest = path; (d = next_dir(&rest));) {
		if (stat(d, &dir_st) || (dir_st.st_dev == self_dir_st.st_dev && dir_st.st_ino == self_dir_st.st_ino))
			continue;
		if ((size_t)snprintf(g_real, sizeof(g_real), "%s/%s", d, g_name) >= sizeof(g_real))
			continue;
		if (stat(g_real, &st) || !S_ISREG(st.st_mode) || access(g_real, X_OK) ||
		    (st.st_dev == self_st.st_dev && st.st_ino == self_st.st_ino))
			continue;
		free(path);
		return 0;
	}
	free(path);
	g_real[0] = 0;
	return -1;
}

/* Become the real tool: same argv, same input and output. */
static int exec_real(void)
{
	if (find_real()) {
		fprintf(stderr, "%s: fastckpt's shim found no other %s on PATH\n", g_name, g_name);
		return 127;
	}
	execv(g_real, g_argv);
	fprintf(stderr, "%s: cannot run %s: %s\n", g_name, g_real, strerror(errno));
	return 126;
}

/* --- the cache ------------------------------------------------------------------------ */

struct key {
	char text[3 * PATH_MAX];
	char file[17]; /* FNV-1a 64 of the text, hex */
};

static int id_of(const char *path, char *out, size_t n)
{
	struct stat st;

	if (stat(path, &st))
		return snprintf(out, n, "none") >= (int)n ? -1 : 0;
	return snprintf(out, n, "%llu:%llu:%lld:%lld.%09ld:%lld.%09ld", (unsigned long long)st.st_dev,
			(unsigned long long)st.st_ino, (long long)st.st_size, (long long)st.st_mtim.tv_sec,
			st.st_mtim.tv_nsec, (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec) >= (int)n ? -1 : 0;
}

static int make_key(struct key *k, const char *kind)
{
	char resolved[PATH_MAX], tool_id[128], ld_id[128], preload_id[128];
	const char *preload = getenv("LD_PRELOAD"), *libpath = getenv("LD_LIBRARY_PATH");
	uint64_t h = 0xcbf29ce484222325ULL;

	if (find_real() || !realpath(g_real, resolved) || id_of(resolved, tool_id, sizeof(tool_id)) ||
	    !strcmp(tool_id, "none") || id_of("/etc/ld.so.cache", ld_id, sizeof(ld_id)) ||
	    id_of("/etc/ld.so.preload", preload_id, sizeof(preload_id)))
		return -1;
	/* libraries chosen otherwise than through ld.so.cache: the real tool's answer, every time */
	if ((preload && *preload) || (libpath && *libpath) || strcmp(preload_id, "none"))
		return -1;
	if (strchr(g_argv[0], '\n') || strchr(g_real, '\n') || strchr(resolved, '\n'))
		return -1;
	if ((size_t)snprintf(k->text, sizeof(k->text), "kind=%s\nname=%s\nargv0=%s\ntool=%s\nreal=%s\nid=%s\nld.so.cache=%s\n",
			     kind, g_name, g_argv[0], g_real, resolved, tool_id, ld_id) >= sizeof(k->text))
		return -1;
	for (const unsigned char *p = (const unsigned char *)k->text; *p; p++)
		h = (h ^ *p) * 0x100000001b3ULL;
	snprintf(k->file, sizeof(k->file), "%016llx", (unsigned long long)h);
	return 0;
}

/* The cache directory, if it is root's (ours) alone: made if missing. */
static int open_cache_dir(void)
{
	const char *dirs[] = { CACHE_PARENT, CACHE_DIR };
	struct stat st;
	int fd = -1;

	for (int i = 0; i < 2; i++) {
		if (mkdir(dirs[i], 0700) && errno != EEXIST)
			return -1;
		if (fd >= 0)
			close(fd);
		fd = open(dirs[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return -1;
		if (fstat(fd, &st) || st.st_uid != geteuid() || (st.st_mode & 022)) {
			close(fd);
			return -1;
		}
	}
	return fd;
}

/* A stored answer: 1 and its status and output, or 0. */
static int cache_get(int dfd, const struct key *k, int *status, char *out, size_t *out_len)
{
	static char buf[sizeof(CACHE_MAGIC) + sizeof(k->text) + 64 + MAX_OUT];
	size_t len = 0, head = strlen(CACHE_MAGIC) + strlen(k->text);
	struct stat st;
	int fd = openat(dfd, k->file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), n = 0;
	unsigned long st_len;

	if (fd < 0)
		return 0;
	if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || st.st_size >= (off_t)sizeof(buf)) {
		close(fd);
		return 0;
	}
	for (;;) {
		ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += r;
	}
	close(fd);
	buf[len] = 0;
	if (len < head || memcmp(buf, CACHE_MAGIC, strlen(CACHE_MAGIC)) ||
	    memcmp(buf + strlen(CACHE_MAGIC), k->text, strlen(k->text)))
		return 0;
	/* "status=S\nstdout=N\n" and then exactly N bytes */
	{
		char *p = buf + head, *end;
		long v;

		if (strncmp(p, "status=", 7))
			return 0;
		v = strtol(p + 7, &end, 10);
		if (end == p + 7 || *end != '\n' || v < 0 || v > 255)
			return 0;
		*status = v;
		p = end + 1;
		if (strncmp(p, "stdout=", 7))
			return 0;
		st_len = strtoul(p + 7, &end, 10);
		if (end == p + 7 || *end != '\n' || st_len > MAX_OUT || (size_t)(end + 1 - buf) + st_len != len)
			return 0;
		n = end + 1 - (buf + head);
	}
	memcpy(out, buf + head + n, st_len);
	*out_len = st_len;
	return 1;
}

static void cache_put(int dfd, const struct key *k, int status, const char *out, size_t out_len)
{
	const unsigned char *rnd = (const unsigned char *)getauxval(AT_RANDOM);
	char tmp[64], head[64];
	int fd, bad;

	/* a name no other shim (another pid namespace's too) writes at the same time */
	snprintf(tmp, sizeof(tmp), ".tmp-%d-%02x%02x%02x%02x%02x%02x%02x%02x", (int)getpid(), rnd[0], rnd[1],
		 rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
	fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	snprintf(head, sizeof(head), "status=%d\nstdout=%zu\n", status, out_len);
	bad = write_all(fd, CACHE_MAGIC, strlen(CACHE_MAGIC)) || write_all(fd, k->text, strlen(k->text)) ||
	      write_all(fd, head, strlen(head)) || write_all(fd, out, out_len);
	if (close(fd) || bad || renameat(dfd, tmp, dfd, k->file))
		unlinkat(dfd, tmp, 0);
}

/*
 * Run the real tool as a child, passing its output and errors on as they come; its wait status,
 * its output (up to MAX_OUT; *out_len = MAX_OUT + 1 past it) and whether it wrote errors.
 */
static int run_real(int *wstatus, char *out, size_t *out_len, int *wrote_err)
{
	int po[2], pe[2];
	pid_t pid;
	struct pollfd fds[2];
	int open_fds = 2;

	if (find_real() || pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC))
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		dup2(po[1], 1);
		dup2(pe[1], 2);
		execv(g_real, g_argv);
		fprintf(stderr, "%s: cannot run %s: %s\n", g_name, g_real, strerror(errno));
		_exit(126);
	}
	close(po[1]);
	close(pe[1]);
	*out_len = 0;
	*wrote_err = 0;
	fds[0] = (struct pollfd){ .fd = po[0], .events = POLLIN };
	fds[1] = (struct pollfd){ .fd = pe[0], .events = POLLIN };
	signal(SIGPIPE, SIG_IGN); /* our reader went: the tool still runs to its end, as it would have */
	while (open_fds) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		for (int i = 0; i < 2; i++) {
			char buf[4096];
			ssize_t r;

			if (fds[i].fd < 0 || !fds[i].revents)
				continue;
			r = read(fds[i].fd, buf, sizeof(buf));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				close(fds[i].fd);
				fds[i].fd = -1;
				open_fds--;
				continue;
			}
			write_all(i ? 2 : 1, buf, r);
			if (i) {
				*wrote_err = 1;
			} else if (*out_len + r <= MAX_OUT) {
				memcpy(out + *out_len, buf, r);
				*out_len += r;
			} else {
				*out_len = MAX_OUT + 1;
			}
		}
	}
	for (int i = 0; i < 2; i++)
		if (fds[i].fd >= 0)
			close(fds[i].fd);
	while (waitpid(pid, wstatus, 0) < 0)
		if (errno != EINTR) {
			*wstatus = 1 << 8; /* it ran: not again; a failure, not cached (no stderr: see cached()) */
			*wrote_err = 1;
			break;
		}
	return 0;
}

/* End as the real tool ended. */
static int end_as(int wstatus)
{
	if (WIFSIGNALED(wstatus)) {
		signal(WTERMSIG(wstatus), SIG_DFL);
		raise(WTERMSIG(wstatus));
		return 128 + WTERMSIG(wstatus);
	}
	return WEXITSTATUS(wstatus);
}

/* The answer of the real tool to this command line, from the cache or from running it. ONLY_EMPTY:
 * cache it only if it printed nothing; STILL_TRUE: the state it was asked in still holds after it.
 * HIT_ONLY: from the cache or not at all (-1). */
static int cached(const char *kind, int only_empty, int (*still_true)(void), int hit_only)
{
	static char out[MAX_OUT + 1];
	struct key k;
	size_t out_len;
	int dfd, status, wstatus, wrote_err;

	if (make_key(&k, kind))
		return hit_only ? -1 : exec_real();
	dfd = open_cache_dir();
	if (dfd < 0)
		return hit_only ? -1 : exec_real();
	if (cache_get(dfd, &k, &status, out, &out_len)) {
		if (write_all(1, out, out_len))
			return 1;
		return status;
	}
	if (hit_only) {
		close(dfd);
		return -1;
	}
	if (run_real(&wstatus, out, &out_len, &wrote_err))
		return exec_real(); /* nothing of it ran */
	if (WIFEXITED(wstatus) && !wrote_err && out_len <= MAX_OUT && (!only_empty || !out_len) &&
	    (!still_true || still_true()))
		cache_put(dfd, &k, WEXITSTATUS(wstatus), out, out_len);
	close(dfd);
	return end_as(wstatus);
}

/* --- what CRIU asks ------------------------------------------------------------------- */

static const char *g_tables_names; /* what the legacy save reads without arguments */

/* No legacy table in this network namespace: the names file is there and empty. */
static int no_legacy_tables(void)
{
	char c;
	ssize_t r;
	int fd = open(g_tables_names, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	while ((r = read(fd, &c, 1)) < 0 && errno == EINTR)
		;
	close(fd);
	return r == 0;
}

/* The first NAME on PATH is this program: what `sh -c NAME` would run. */
static int first_on_path_is_self(const char *name)
{
	char self[PATH_MAX], cand[PATH_MAX], *path, *rest, *d;
	struct stat self_st, st;
	ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
	int found = 0;

	if (len <= 0)
		return 0;
	self[len] = 0;
	if (stat(self, &self_st) || !getenv("PATH") || !(path = strdup(getenv("PATH"))))
		return 0;
	for (rest = path; (d = next_dir(&rest));) {
		if ((size_t)snprintf(cand, sizeof(cand), "%s/%s", d, name) >= sizeof(cand))
			continue;
		if (stat(cand, &st) || !S_ISREG(st.st_mode) || access(cand, X_OK))
			continue;
		found = st.st_dev == self_st.st_dev && st.st_ino == self_st.st_ino;
		break;
	}
	free(path);
	return found;
}

/* A legacy save without arguments: from the cache when the namespace has no legacy table. */
static int legacy_save(int hit_only)
{
	g_tables_names = g_name[2] == '6' ? "/proc/net/ip6_tables_names" : "/proc/net/ip_tables_names";
	if (no_legacy_tables())
		return cached("no-tables", 1, no_legacy_tables, hit_only);
	return hit_only ? -1 : exec_real();
}

static int is_legacy_save(const char *name)
{
	return !strcmp(name, "iptables-legacy-save") || !strcmp(name, "ip6tables-legacy-save");
}

int main(int argc, char **argv)
{
	const char *off = getenv("FASTCKPT_XTABLES_SHIM"), *execfn = (const char *)getauxval(AT_EXECFN);
	int known = 0;

	g_argv = argv;
	g_name = execfn && *execfn ? execfn : argv[0];
	if (strrchr(g_name, '/'))
		g_name = strrchr(g_name, '/') + 1;
	for (int i = 0; NAMES[i]; i++)
		known |= !strcmp(g_name, NAMES[i]);
	if (!strcmp(g_name, "sh") && !(off && !strcmp(off, "0")) && argc == 3 && !strcmp(argv[1], "-c") &&
	    is_legacy_save(argv[2]) && first_on_path_is_self(argv[2])) {
		/* CRIU's `sh -c iptables-legacy-save`: the shell would run the first of that name on PATH,
		 * this program, as argv {NAME}; its answer from the cache, or else the shell after all */
		int ret;

		g_name = argv[2];
		g_argv = argv + 2;
		ret = legacy_save(1);
		if (ret >= 0)
			return ret;
		g_name = "sh";
		g_argv = argv;
		g_real[0] = 0;
	}
	if (!known || (off && !strcmp(off, "0")))
		return exec_real();
	if (argc == 2 && !strcmp(argv[1], "-V"))
		return cached("-V", 0, NULL, 0);
	if (argc == 1 && is_legacy_save(g_name))
		return legacy_save(0);
	return exec_real();
}
