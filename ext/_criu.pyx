# cython: language_level=3, boundscheck=False, wraparound=False
"""fastckpt._criu: a thin Cython binding of libcriu's criu_local_* API.

It only marshals: an :class:`Opts` owns one ``criu_opts``, its setters map
1:1 onto libcriu's, and each operation releases the GIL around the CRIU call
and returns the raw ``(ret, errno)`` pair.  Errors, validation and the
object model live in the Python package (``fastckpt.errors`` et al.).
"""
from libc.errno cimport errno
from cpython.pythread cimport PyThread_get_thread_ident

cimport libcriu as c

cdef extern from "warm.h" nogil:
    int fc_warm_run(const char *procs_path, long period_us, long limit_ms, int user)
    void fc_warm_stop()

# --- constants, exported as plain ints (wrapped as enums by fastckpt.constants)
CLONE_NEWNS = c.CLONE_NEWNS
CLONE_NEWCGROUP = c.CLONE_NEWCGROUP
CLONE_NEWUTS = c.CLONE_NEWUTS
CLONE_NEWIPC = c.CLONE_NEWIPC
CLONE_NEWUSER = c.CLONE_NEWUSER
CLONE_NEWPID = c.CLONE_NEWPID
CLONE_NEWNET = c.CLONE_NEWNET
CLONE_NEWTIME = c.CLONE_NEWTIME

CRIU_CG_MODE_IGNORE = c.CRIU_CG_MODE_IGNORE
CRIU_CG_MODE_NONE = c.CRIU_CG_MODE_NONE
CRIU_CG_MODE_PROPS = c.CRIU_CG_MODE_PROPS
CRIU_CG_MODE_SOFT = c.CRIU_CG_MODE_SOFT
CRIU_CG_MODE_FULL = c.CRIU_CG_MODE_FULL
CRIU_CG_MODE_STRICT = c.CRIU_CG_MODE_STRICT
CRIU_CG_MODE_DEFAULT = c.CRIU_CG_MODE_DEFAULT

CRIU_NETWORK_LOCK_IPTABLES = c.CRIU_NETWORK_LOCK_IPTABLES
CRIU_NETWORK_LOCK_NFTABLES = c.CRIU_NETWORK_LOCK_NFTABLES
CRIU_NETWORK_LOCK_SKIP = c.CRIU_NETWORK_LOCK_SKIP

CRIU_PRE_DUMP_SPLICE = c.CRIU_PRE_DUMP_SPLICE
CRIU_PRE_DUMP_READ = c.CRIU_PRE_DUMP_READ

CRIU_LOG_ERROR = c.CRIU_LOG_ERROR
CRIU_LOG_WARN = c.CRIU_LOG_WARN
CRIU_LOG_INFO = c.CRIU_LOG_INFO
CRIU_LOG_DEBUG = c.CRIU_LOG_DEBUG

# The libcriu this module was compiled against (criu/version.h).
LIBCRIU_VERSION = (c.CRIU_VERSION_MAJOR, c.CRIU_VERSION_MINOR, c.CRIU_VERSION_SUBLEVEL)



def warm_start(procs_path, long period_us=3000, long limit_ms=600000, bint user=True):
    """Keep cgroup migrations fast: rewrite "0" into PROCS_PATH every PERIOD_US (ext/warm.h).

    PROCS_PATH is the cgroup.procs of a cgroup this process is in. Calls nest:
    each one (USER true) needs one warm_stop(), whatever it returned. USER
    false primes it ahead of the operation instead: not
    counted, the thread ends LIMIT_MS from now at the latest, or with the last
    warm_stop() of the users that come meanwhile. Returns 0, or -errno when no
    thread could be started.
    """
    cdef bytes path = procs_path.encode() if isinstance(procs_path, str) else bytes(procs_path)
    cdef const char *p = path
    cdef int ret
    with nogil:
        ret = fc_warm_run(p, period_us, limit_ms, user)
    return ret


def warm_stop():
    """One warm_start() done; the last one stops the thread (waits for it, at most one write)."""
    with nogil:
        fc_warm_stop()


# libcriu's notify callback carries no user data: the operation running in a
# thread is found through this map (thread id -> Opts).
cdef dict _running = {}


cdef int _notify_trampoline(char *action, c.criu_notify_arg_t na) noexcept with gil:
    cdef Opts opts = _running.get(PyThread_get_thread_ident())
    if opts is None or opts._notify is None:
        return 0
    try:
        r = opts._notify(action.decode(), c.criu_notify_pid(na))
        return int(r or 0)
    except BaseException as e:  # handed back to the caller after the CRIU call
        opts.notify_error = e
        return -1


cdef inline bytes _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


cdef inline const char *_cstr(bytes b):
    return NULL if b is None else <const char *>b


cdef inline void _check(int r, str what) except *:
    if r < 0:
        if r == -12:
            raise MemoryError(what)
        raise ValueError(f"libcriu rejected {what} ({r})")


cdef class Opts:
    """One ``criu_opts``; freed with the object."""
    cdef c.criu_opts *_o
    cdef object _notify
    cdef public object notify_error

    def __cinit__(self):
        if c.criu_local_init_opts(&self._o) < 0:
            raise MemoryError("criu_local_init_opts")

    def __dealloc__(self):
        if self._o is not NULL:
            c.criu_local_free_opts(self._o)
            self._o = NULL

    # --- where CRIU runs
    def set_service_address(self, path): _check(c.criu_local_set_service_address(self._o, _b(path)), "service address")
    def set_service_fd(self, int fd): c.criu_local_set_service_fd(self._o, fd)
    def set_service_binary(self, path): _check(c.criu_local_set_service_binary(self._o, _b(path)), "service binary")

    # --- what and where
    def set_pid(self, int pid): c.criu_local_set_pid(self._o, pid)
    def set_images_dir_fd(self, int fd): c.criu_local_set_images_dir_fd(self._o, fd)
    def set_work_dir_fd(self, int fd): c.criu_local_set_work_dir_fd(self._o, fd)
    def set_parent_images(self, path): _check(c.criu_local_set_parent_images(self._o, _b(path)), "parent images")
    def set_log_file(self, name): _check(c.criu_local_set_log_file(self._o, _b(name)), "log file")
    def set_log_level(self, int level): c.criu_local_set_log_level(self._o, level)
    def set_root(self, path): _check(c.criu_local_set_root(self._o, _b(path)), "root")
    def set_timeout(self, unsigned int seconds): c.criu_local_set_timeout(self._o, seconds)

    # --- behaviour flags
    def set_leave_running(self, bint v): c.criu_local_set_leave_running(self._o, v)
    def set_tcp_established(self, bint v): c.criu_local_set_tcp_established(self._o, v)
    def set_tcp_skip_in_flight(self, bint v): c.criu_local_set_tcp_skip_in_flight(self._o, v)
    def set_tcp_close(self, bint v): c.criu_local_set_tcp_close(self._o, v)
    def set_ext_unix_sk(self, bint v): c.criu_local_set_ext_unix_sk(self._o, v)
    def add_unix_sk(self, unsigned int inode): _check(c.criu_local_add_unix_sk(self._o, inode), "unix socket inode")
    def set_shell_job(self, bint v): c.criu_local_set_shell_job(self._o, v)
    def set_file_locks(self, bint v): c.criu_local_set_file_locks(self._o, v)
    def set_orphan_pts_master(self, bint v): c.criu_local_set_orphan_pts_master(self._o, v)
    def set_track_mem(self, bint v): c.criu_local_set_track_mem(self._o, v)
    def set_auto_dedup(self, bint v): c.criu_local_set_auto_dedup(self._o, v)
    def set_link_remap(self, bint v): c.criu_local_set_link_remap(self._o, v)
    def set_evasive_devices(self, bint v): c.criu_local_set_evasive_devices(self._o, v)
    def set_weak_sysctls(self, bint v): c.criu_local_set_weak_sysctls(self._o, v)
    def set_skip_file_rwx_check(self, bint v): c.criu_local_set_skip_file_rwx_check(self._o, v)
    def set_unprivileged(self, bint v): c.criu_local_set_unprivileged(self._o, v)

    # --- cgroups
    def set_manage_cgroups(self, bint v): c.criu_local_set_manage_cgroups(self._o, v)
    def set_manage_cgroups_mode(self, int mode): c.criu_local_set_manage_cgroups_mode(self._o, <c.criu_cg_mode>mode)
    def set_freeze_cgroup(self, path): _check(c.criu_local_set_freeze_cgroup(self._o, _b(path)), "freeze cgroup")
    def add_cg_root(self, ctrl, path):
        cdef bytes bctrl = _b(ctrl) if ctrl is not None else None  # "": the cgroup v2 hierarchy
        _check(c.criu_local_add_cg_root(self._o, _cstr(bctrl), _b(path)), "cgroup root")
    def add_cg_dump_controller(self, name):
        _check(c.criu_local_add_cg_dump_controller(self._o, _b(name)), "cgroup dump controller")

    # --- mounts, namespaces, externals
    def add_ext_mount(self, key, val): _check(c.criu_local_add_ext_mount(self._o, _b(key), _b(val)), "external mount")
    def set_auto_ext_mnt(self, bint v): c.criu_local_set_auto_ext_mnt(self._o, v)
    def set_ext_sharing(self, bint v): c.criu_local_set_ext_sharing(self._o, v)
    def set_ext_masters(self, bint v): c.criu_local_set_ext_masters(self._o, v)
    def add_skip_mnt(self, path): _check(c.criu_local_add_skip_mnt(self._o, _b(path)), "skip mount")
    def add_external(self, key): _check(c.criu_local_add_external(self._o, _b(key)), "external")
    def add_inherit_fd(self, int fd, key): _check(c.criu_local_add_inherit_fd(self._o, fd, _b(key)), "inherit fd")
    def add_veth_pair(self, inside, outside): _check(c.criu_local_add_veth_pair(self._o, _b(inside), _b(outside)), "veth pair")
    def set_empty_ns(self, int mask): c.criu_local_set_empty_ns(self._o, mask)
    def join_ns_add(self, ns, ns_file, extra_opt=None):
        cdef bytes bextra = _b(extra_opt) if extra_opt else None
        _check(c.criu_local_join_ns_add(self._o, _b(ns), _b(ns_file), _cstr(bextra)), "join ns")
    def set_network_lock(self, int method): _check(c.criu_local_set_network_lock(self._o, <c.criu_network_lock_method>method), "network lock")
    def set_page_server(self, address, int port):
        # libcriu (up to 4.2 at least) returns -ENOMEM from this setter even when it
        # succeeded, so its return value says nothing: it is not checked.
        c.criu_local_set_page_server_address_port(self._o, _b(address), port)

    # --- notifications (CRIU's action scripts): handler(action: str, pid: int) -> int
    def set_notify(self, handler):
        self._notify = handler
        if handler is None:
            c.criu_local_set_notify_cb(self._o, NULL)
        else:
            c.criu_local_set_notify_cb(self._o, _notify_trampoline)

    # --- operations: each returns (ret, errno) with the GIL released meanwhile
    cdef tuple _run(self, int op):
        cdef int ret = 0, err = 0
        cdef long tid = PyThread_get_thread_ident()
        self.notify_error = None
        _running[tid] = self
        try:
            with nogil:
                errno = 0
                if op == 0:
                    ret = c.criu_local_dump(self._o)
                elif op == 1:
                    ret = c.criu_local_pre_dump(self._o)
                elif op == 2:
                    ret = c.criu_local_restore(self._o)
                elif op == 3:
                    ret = c.criu_local_restore_child(self._o)
                elif op == 4:
                    ret = c.criu_local_check(self._o)
                elif op == 5:
                    ret = c.criu_local_get_version(self._o)
                err = errno
        finally:
            del _running[tid]
        return ret, err

    def dump(self): return self._run(0)
    def pre_dump(self): return self._run(1)
    def restore(self): return self._run(2)
    def restore_child(self): return self._run(3)
    def check(self): return self._run(4)
    def version(self): return self._run(5)

    def feature_check(self):
        """{'mem_track': bool, 'lazy_pages': bool, 'pidfd_store': bool} or (ret, errno) on failure."""
        cdef c.criu_feature_check f
        cdef int ret, err
        f.mem_track = True
        f.lazy_pages = True
        f.pidfd_store = True
        with nogil:
            errno = 0
            ret = c.criu_local_feature_check(self._o, &f, sizeof(f))
            err = errno
        if ret < 0:
            return ret, err
        return {"mem_track": bool(f.mem_track), "lazy_pages": bool(f.lazy_pages),
                "pidfd_store": bool(f.pidfd_store)}
