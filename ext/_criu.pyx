# cython: language_level=3, boundscheck=False, wraparound=False
"""fastckpt._criu: a thin Cython binding of libcriu's criu_local_* API (libcriu only).

It marshals: an :class:`Opts` owns one ``criu_opts`` (and the service socket
handed to it), its setters map 1:1 onto libcriu's, and :meth:`Opts.run`
releases the GIL around the CRIU call.  What can go wrong here is raised as
fastckpt's own errors, made by ``fastckpt.errors`` (the one translation): a
value libcriu cannot take is a ``UsageError``, a CRIU operation that failed
gives back libcriu's ``(ret, errno)`` for the caller to classify with CRIU's log
(``fastckpt.errors.CriuError``).
"""
import os

from libc.errno cimport errno, EBADF, ENOMEM
from cpython.pythread cimport PyThread_get_thread_ident
from libc.limits cimport INT_MAX, UINT_MAX
from posix.unistd cimport close

from fastckpt.errors import CriuError, UsageError, libcriu_error

cimport libcriu as c

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


# CRIU's operations, by name (Opts.run(name))
cdef enum _Op:
    _OP_DUMP, _OP_PRE_DUMP, _OP_RESTORE, _OP_RESTORE_CHILD, _OP_CHECK, _OP_VERSION

OPERATIONS = ("dump", "pre_dump", "restore", "restore_child", "check", "version")
cdef dict _OPS = {"dump": _OP_DUMP, "pre_dump": _OP_PRE_DUMP, "restore": _OP_RESTORE,
                  "restore_child": _OP_RESTORE_CHILD, "check": _OP_CHECK, "version": _OP_VERSION}


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


cdef bytes _path(value, str what):
    """A str or bytes (path, name, key) as libcriu's C string: os.fsencode, no NUL inside."""
    try:
        b = os.fsencode(value)
    except TypeError:
        raise UsageError(f"{what} must be a string, not {type(value).__name__}") from None
    if b"\0" in b:
        raise UsageError(f"{what} {value!r} contains a NUL byte")
    return b


cdef long long _int(value, str what, long long lo, long long hi) except? -1:
    """An integer in [LO, HI] for a C int argument (bool is not taken for a number)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = value.__index__()
        except AttributeError:
            raise UsageError(f"{what} must be an integer, not {type(value).__name__}") from None
    if not lo <= value <= hi:
        raise UsageError(f"{what} {value} is out of range ({lo}-{hi})")
    return value


cdef inline const char *_cstr(bytes b):
    return NULL if b is None else <const char *>b


cdef inline int _check(int r, str what, value) except -1:
    if r < 0:
        raise libcriu_error(what, r, value)
    return 0


cdef class Opts:
    """One ``criu_opts``; freed with the object.

    A service socket given to :meth:`set_service_fd` belongs to the object:
    libcriu closes it at the end of the next operation, and the object closes
    it when no operation took it (:meth:`close_service_fd`, or when it is freed).
    """
    cdef c.criu_opts *_o
    cdef object _notify
    cdef int _service_fd       # the socket handed over and not yet used, or -1
    cdef bint _service_fd_used  # the last one was used up: libcriu closed it
    cdef public object notify_error

    def __cinit__(self):
        self._service_fd = -1
        if c.criu_local_init_opts(&self._o) < 0:
            self._o = NULL
            raise libcriu_error("options", -ENOMEM, None)

    def __dealloc__(self):
        self._close_service_fd()
        if self._o is not NULL:
            c.criu_local_free_opts(self._o)
            self._o = NULL

    # --- where CRIU runs
    def set_service_address(self, path):
        self.close_service_fd()
        self._service_fd_used = False
        _check(c.criu_local_set_service_address(self._o, _path(path, "the criu service address")),
               "the criu service address", path)

    def set_service_fd(self, fd):
        """Hand over FD, a connected socket of `criu swrk`: this object owns it from now on."""
        cdef int n = <int>_int(fd, "the criu service fd", 0, INT_MAX)
        if n != self._service_fd:
            self.close_service_fd()
        self._service_fd = n
        self._service_fd_used = False
        c.criu_local_set_service_fd(self._o, n)

    def close_service_fd(self):
        """Close the service socket handed over, if no operation used it (idempotent)."""
        self._close_service_fd()

    cdef void _close_service_fd(self) noexcept:
        if self._service_fd >= 0:
            close(self._service_fd)
            self._service_fd = -1
            self._service_fd_used = True  # the number is no longer ours to use

    def set_service_binary(self, path):
        self.close_service_fd()
        self._service_fd_used = False
        _check(c.criu_local_set_service_binary(self._o, _path(path, "the criu binary")), "the criu binary", path)

    # --- what and where
    def set_pid(self, pid): c.criu_local_set_pid(self._o, <int>_int(pid, "pid", 1, INT_MAX))
    def set_images_dir_fd(self, fd):
        c.criu_local_set_images_dir_fd(self._o, <int>_int(fd, "the image directory fd", 0, INT_MAX))
    def set_work_dir_fd(self, fd):
        c.criu_local_set_work_dir_fd(self._o, <int>_int(fd, "the work directory fd", 0, INT_MAX))
    def set_parent_images(self, path):
        _check(c.criu_local_set_parent_images(self._o, _path(path, "the parent images path")),
               "the parent images path", path)
    def set_log_file(self, name):
        _check(c.criu_local_set_log_file(self._o, _path(name, "the log file")), "the log file", name)
    def set_log_level(self, level): c.criu_local_set_log_level(self._o, <int>_int(level, "the log level", 0, 4))
    def set_root(self, path): _check(c.criu_local_set_root(self._o, _path(path, "the root")), "the root", path)
    def set_timeout(self, seconds):
        c.criu_local_set_timeout(self._o, <unsigned int>_int(seconds, "the timeout", 0, UINT_MAX))
    def set_config_file(self, path):
        _check(c.criu_local_set_config_file(self._o, _path(path, "the CRIU config file")), "the CRIU config file",
               path)

    # --- behaviour flags
    def set_leave_running(self, bint v): c.criu_local_set_leave_running(self._o, v)
    def set_tcp_established(self, bint v): c.criu_local_set_tcp_established(self._o, v)
    def set_tcp_skip_in_flight(self, bint v): c.criu_local_set_tcp_skip_in_flight(self._o, v)
    def set_tcp_close(self, bint v): c.criu_local_set_tcp_close(self._o, v)
    def set_ext_unix_sk(self, bint v): c.criu_local_set_ext_unix_sk(self._o, v)
    def add_unix_sk(self, inode):
        _check(c.criu_local_add_unix_sk(self._o, <unsigned int>_int(inode, "the unix socket inode", 0, UINT_MAX)),
               "the unix socket inode", inode)
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
    def set_pre_dump_mode(self, mode):
        cdef int m = <int>_int(mode, "the pre-dump mode", c.CRIU_PRE_DUMP_SPLICE, c.CRIU_PRE_DUMP_READ)
        _check(c.criu_local_set_pre_dump_mode(self._o, <c.criu_pre_dump_mode>m), "the pre-dump mode", mode)

    # --- security modules (restore)
    def set_lsm_profile(self, name):
        _check(c.criu_local_set_lsm_profile(self._o, _path(name, "the LSM profile")), "the LSM profile", name)
    def set_lsm_mount_context(self, ctx):
        _check(c.criu_local_set_lsm_mount_context(self._o, _path(ctx, "the LSM mount context")),
               "the LSM mount context", ctx)

    # --- cgroups
    def set_manage_cgroups(self, bint v): c.criu_local_set_manage_cgroups(self._o, v)
    def set_manage_cgroups_mode(self, mode):
        cdef int m = <int>_int(mode, "the manage cgroups mode", c.CRIU_CG_MODE_IGNORE, c.CRIU_CG_MODE_DEFAULT)
        c.criu_local_set_manage_cgroups_mode(self._o, <c.criu_cg_mode>m)
    def set_freeze_cgroup(self, path):
        _check(c.criu_local_set_freeze_cgroup(self._o, _path(path, "the freeze cgroup")), "the freeze cgroup", path)
    def set_cg_yard(self, path):
        _check(c.criu_local_add_cg_yard(self._o, _path(path, "the cgroup yard")), "the cgroup yard", path)
    def add_cg_root(self, ctrl, path):
        cdef bytes bctrl = _path(ctrl, "the cgroup controller") if ctrl is not None else None  # "": cgroup v2
        _check(c.criu_local_add_cg_root(self._o, _cstr(bctrl), _path(path, "the cgroup root")),
               "the cgroup root", path)
    def add_cg_dump_controller(self, name):
        _check(c.criu_local_add_cg_dump_controller(self._o, _path(name, "the cgroup dump controller")),
               "the cgroup dump controller", name)

    # --- mounts, namespaces, externals
    def add_ext_mount(self, key, val):
        _check(c.criu_local_add_ext_mount(self._o, _path(key, "the external mount key"),
                                          _path(val, "the external mount value")), "the external mount", key)
    def set_auto_ext_mnt(self, bint v): c.criu_local_set_auto_ext_mnt(self._o, v)
    def set_ext_sharing(self, bint v): c.criu_local_set_ext_sharing(self._o, v)
    def set_ext_masters(self, bint v): c.criu_local_set_ext_masters(self._o, v)
    def add_skip_mnt(self, path):
        _check(c.criu_local_add_skip_mnt(self._o, _path(path, "the skipped mount")), "the skipped mount", path)
    def add_external(self, key):
        _check(c.criu_local_add_external(self._o, _path(key, "the external")), "the external", key)
    def add_inherit_fd(self, fd, key):
        _check(c.criu_local_add_inherit_fd(self._o, <int>_int(fd, "the inherited fd", 0, INT_MAX),
                                           _path(key, "the inherited fd's key")), "the inherited fd", key)
    def add_veth_pair(self, inside, outside):
        _check(c.criu_local_add_veth_pair(self._o, _path(inside, "the veth name inside"),
                                          _path(outside, "the veth name outside")), "the veth pair", inside)
    def set_empty_ns(self, mask): c.criu_local_set_empty_ns(self._o, <int>_int(mask, "the empty namespaces", 0, INT_MAX))
    def join_ns_add(self, ns, ns_file, extra_opt=None):
        cdef bytes bextra = _path(extra_opt, "the join-ns option") if extra_opt else None
        _check(c.criu_local_join_ns_add(self._o, _path(ns, "the namespace to join"),
                                        _path(ns_file, "the namespace file"), _cstr(bextra)), "the namespace to join", ns)
    def set_network_lock(self, method):
        cdef int m = <int>_int(method, "the network lock method", 0, INT_MAX)
        _check(c.criu_local_set_network_lock(self._o, <c.criu_network_lock_method>m), "the network lock method", method)
    def set_page_server(self, address, port):
        # libcriu (up to 4.2 at least) returns -ENOMEM from this setter even when it
        # succeeded, so its return value says nothing: it is not checked.
        cdef int p = <int>_int(port, "the page server port", 1, 65535)
        c.criu_local_set_page_server_address_port(self._o, _path(address, "the page server address"), p)

    # --- notifications (CRIU's action scripts): handler(action: str, pid: int) -> int
    def set_notify(self, handler):
        if handler is not None and not callable(handler):
            raise UsageError(f"the notify handler must be callable, not {type(handler).__name__}")
        self._notify = handler
        if handler is None:
            c.criu_local_set_notify_cb(self._o, NULL)
        else:
            c.criu_local_set_notify_cb(self._o, _notify_trampoline)

    # --- the pty master CRIU sent with its 'orphan-pts-master' notification (-1: none yet);
    # valid in the notify handler of that action (libcriu keeps it in one global)
    @staticmethod
    def orphan_pts_master_fd(): return c.criu_get_orphan_pts_master_fd()

    # --- operations
    def run(self, str op):
        """Run CRIU's operation OP (one of OPERATIONS), the GIL released meanwhile.

        Returns libcriu's ``(ret, errno)``: ret >= 0 is success (restore_child:
        the pid, version: the version number), a negative one a failure the
        caller classifies with CRIU's log (fastckpt.criu_failures.raise_criu_failure).
        """
        cdef int code
        cdef int ret = 0, err = 0
        cdef long tid = PyThread_get_thread_ident()
        try:
            code = _OPS[op]
        except KeyError:
            raise UsageError(f"unknown CRIU operation {op!r} (one of {', '.join(OPERATIONS)})") from None
        if self._service_fd_used:
            raise CriuError(op, -EBADF, EBADF, detail="the criu service socket was used up by an earlier operation "
                                              "(libcriu closes it after each request): hand over a new one")
        if self._service_fd >= 0:  # libcriu closes it, whatever happens
            self._service_fd = -1
            self._service_fd_used = True
        self.notify_error = None
        _running[tid] = self
        try:
            with nogil:
                errno = 0
                if code == _OP_DUMP:
                    ret = c.criu_local_dump(self._o)
                elif code == _OP_PRE_DUMP:
                    ret = c.criu_local_pre_dump(self._o)
                elif code == _OP_RESTORE:
                    ret = c.criu_local_restore(self._o)
                elif code == _OP_RESTORE_CHILD:
                    ret = c.criu_local_restore_child(self._o)
                elif code == _OP_CHECK:
                    ret = c.criu_local_check(self._o)
                else:
                    ret = c.criu_local_get_version(self._o)
                err = errno
        finally:
            del _running[tid]
        return ret, err

    def feature_check(self):
        """The kernel features CRIU found: {'mem_track': bool, 'lazy_pages': bool, 'pidfd_store': bool};
        a CriuError when CRIU could not say."""
        cdef c.criu_feature_check f
        cdef int ret, err
        if self._service_fd_used:
            raise CriuError("feature-check", -EBADF, EBADF, detail="the criu service socket was used up by an earlier "
                                                           "operation: hand over a new one")
        if self._service_fd >= 0:
            self._service_fd = -1
            self._service_fd_used = True
        f.mem_track = True
        f.lazy_pages = True
        f.pidfd_store = True
        with nogil:
            errno = 0
            ret = c.criu_local_feature_check(self._o, &f, sizeof(f))
            err = errno
        if ret < 0:
            raise CriuError("feature-check", ret, err)
        return {"mem_track": bool(f.mem_track), "lazy_pages": bool(f.lazy_pages),
                "pidfd_store": bool(f.pidfd_store)}
