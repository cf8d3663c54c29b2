/* The 1 GiB process of fastckpt's benchmarks: maps SIZE_MIB MiB of anonymous
 * memory, fills it with a non-zero pattern (every page is dirty and none is
 * the zero page), creates READY_FILE, then sleeps until killed.
 * Built with `gcc -static` at bench time, so that it runs in a busybox rootfs.
 *
 *   bigmem SIZE_MIB READY_FILE
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	size_t size = (size_t)strtoull(argv[1], NULL, 10) << 20;
	uint64_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return 1;
	for (size_t i = 0; i < size / sizeof(*p); i++)
		p[i] = (i * 0x9E3779B97F4A7C15ull) | 1; /* never zero */
	int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return 1;
	close(fd);
	for (;;)
		pause();
}
