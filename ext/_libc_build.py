"""cffi build script (out-of-line, API mode) for fastckpt._libc_cffi.

The few system calls Python's os module lacks.  Compiled at install time, so
importing it costs no C parsing at run time.
"""
from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("""
int mount(const char *source, const char *target, const char *filesystemtype,
          unsigned long mountflags, const void *data);
int umount2(const char *target, int flags);
int setns(int fd, int nstype);
int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
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
""")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
