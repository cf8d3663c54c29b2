/* The memory of fastckpt's migration tests: maps SIZE_MIB MiB of anonymous
 * memory, fills it with a pattern that depends on every word's offset (a page
 * moved, lost or zeroed shows), creates READY_FILE and sleeps.  On SIGUSR1 it
 * checks the whole pattern and writes "ok WORDS" or "bad OFFSET" to
 * RESULT_FILE.  Built with `gcc -static`, so that it runs in a busybox rootfs.
 *
 *   patmem SIZE_MIB READY_FILE RESULT_FILE
 */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t check;

static void on_usr1(int sig) { (void)sig; check = 1; }

static uint64_t pattern(size_t i) { return (i * 0x9E3779B97F4A7C15ull) ^ 0x5DEECE66Dull; }

int main(int argc, char **argv)
{
	if (argc != 4)
		return 2;
	size_t size = (size_t)strtoull(argv[1], NULL, 10) << 20;
	uint64_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return 1;
	size_t n = size / sizeof(*p);
	for (size_t i = 0; i < n; i++)
		p[i] = pattern(i);
	signal(SIGUSR1, on_usr1);
	int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return 1;
	close(fd);
	for (;;) {
		pause();
		if (!check)
			continue;
		check = 0;
		char out[64];
		size_t i;
		for (i = 0; i < n && p[i] == pattern(i); i++)
			;
		if (i == n)
			snprintf(out, sizeof(out), "ok %zu\n", n);
		else
			snprintf(out, sizeof(out), "bad %zu\n", i * sizeof(*p));
		char tmp[4096];
		snprintf(tmp, sizeof(tmp), "%s.tmp", argv[3]);
		fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			continue;
		if (write(fd, out, strlen(out)) < 0) {
		}
		close(fd);
		rename(tmp, argv[3]);
	}
}
