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
int fastckpt_overlay_detached(const char *lowerdir);
""")
ffibuilder.set_source("fastckpt._libc_cffi", """
#define _GNU_SOURCE
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <errno.h>
#include <fcntl.h>
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

/* The new mount API (Linux 5.2), by number: glibc 2.36 has wrappers, older ones do not */
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif

/* A read-only overlayfs of LOWERDIR (overlayfs's lowerdir= value) that is never attached to any mount
 * tree, so no mount namespace ever sees it (no mount event, nothing to propagate): an fd of its root
 * directory, which alone keeps it, or -1 with errno. */
static int fastckpt_overlay_detached(const char *lowerdir)
{
    const unsigned int fsopen_cloexec = 1, fsmount_cloexec = 1, mount_attr_rdonly = 1;
    const unsigned int fsconfig_set_string = 1, fsconfig_cmd_create = 6;
    int fs, mnt = -1, dir, e;

    fs = (int)syscall(SYS_fsopen, "overlay", fsopen_cloexec);
    if (fs < 0)
        return -1;
    if (syscall(SYS_fsconfig, fs, fsconfig_set_string, "lowerdir", lowerdir, 0) == 0 &&
        syscall(SYS_fsconfig, fs, fsconfig_cmd_create, NULL, NULL, 0) == 0)
        mnt = (int)syscall(SYS_fsmount, fs, fsmount_cloexec, mount_attr_rdonly);
    e = errno;
    close(fs);
    if (mnt < 0) {
        errno = e;
        return -1;
    }
    dir = openat(mnt, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    e = errno;
    close(mnt);
    errno = e;
    return dir;
}
""", include_dirs=[os.path.dirname(os.path.abspath(__file__))], extra_compile_args=["-pthread"],
                      extra_link_args=["-pthread"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
