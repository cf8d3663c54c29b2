"""cffi build script (out-of-line, API mode) for fastckpt._libc_cffi.

The few system calls Python's os module lacks, and the cgroup warm-up thread
(warm.h).  Compiled at install time, so importing it costs no C parsing at run
time.
"""
import os

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("""
int mount(const char *source, const char *target, const char *filesystemtype,
          unsigned long mountflags, const void *data);
int umount2(const char *target, int flags);
int setns(int fd, int nstype);
int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
int fc_warm_run(const char *procs_path, long period_us, long limit_ms, int user);
void fc_warm_stop(void);
int fastckpt_pidfd_getfd(int pidfd, int targetfd);
long fastckpt_fs_type(const char *path);
long fastckpt_bpf(int cmd, void *attr, unsigned int size);
""")
ffibuilder.set_source("fastckpt._libc_cffi", """
#define _GNU_SOURCE
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "warm.h"
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
static int fastckpt_pidfd_getfd(int pidfd, int targetfd)
{
    return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, 0);
}

/* statfs(2)'s f_type (the filesystem's magic), or -1 with errno */
static long fastckpt_fs_type(const char *path)
{
    struct statfs st;
    return statfs(path, &st) ? -1 : (long)st.f_type;
}

/* bpf(2): glibc has no wrapper */
static long fastckpt_bpf(int cmd, void *attr, unsigned int size)
{
    return syscall(SYS_bpf, cmd, attr, size);
}
""", include_dirs=[os.path.dirname(os.path.abspath(__file__))], extra_compile_args=["-pthread"],
                      extra_link_args=["-pthread"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
