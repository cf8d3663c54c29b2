/*
 * What fastckpt's helper programs for CRIU (ext/tar_shim.c, ext/xtables_shim.c) share.
 */
#ifndef FASTCKPT_SHIM_IO_H
#define FASTCKPT_SHIM_IO_H

#include <errno.h>
#include <stddef.h>
#include <unistd.h>

/* LEN bytes of BUF to FD, across partial writes and EINTR: 0, or -1 (errno set, or 0 if write() wrote nothing). */
static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		len -= w;
	}
	return 0;
}

#endif
