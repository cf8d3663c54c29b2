# Declarations of libcriu's per-options API (criu/criu.h), criu_local_* only:
# the global criu_* functions share one static options object.
from libc.stddef cimport size_t

cdef extern from "<sched.h>" nogil:
    enum:
        CLONE_NEWNS
        CLONE_NEWCGROUP
        CLONE_NEWUTS
        CLONE_NEWIPC
        CLONE_NEWUSER
        CLONE_NEWPID
        CLONE_NEWNET
        CLONE_NEWTIME

cdef extern from "criu.h" nogil:
    enum:
        CRIU_LOG_UNSET
        CRIU_LOG_MSG
        CRIU_LOG_ERROR
        CRIU_LOG_WARN
        CRIU_LOG_INFO
        CRIU_LOG_DEBUG
        CRIU_VERSION_MAJOR
        CRIU_VERSION_MINOR
        CRIU_VERSION_SUBLEVEL

    enum criu_cg_mode:
        CRIU_CG_MODE_IGNORE
        CRIU_CG_MODE_NONE
        CRIU_CG_MODE_PROPS
        CRIU_CG_MODE_SOFT
        CRIU_CG_MODE_FULL
        CRIU_CG_MODE_STRICT
        CRIU_CG_MODE_DEFAULT

    enum criu_network_lock_method:
        CRIU_NETWORK_LOCK_IPTABLES
        CRIU_NETWORK_LOCK_NFTABLES
        CRIU_NETWORK_LOCK_SKIP

    enum criu_pre_dump_mode:
        CRIU_PRE_DUMP_SPLICE
        CRIU_PRE_DUMP_READ

    ctypedef struct criu_opts:
        pass

    ctypedef struct CriuNotify:
        pass
    ctypedef CriuNotify *criu_notify_arg_t

    struct criu_feature_check:
        bint mem_track
        bint lazy_pages
        bint pidfd_store

    int criu_local_init_opts(criu_opts **opts)
    void criu_local_free_opts(criu_opts *opts)

    int criu_local_set_service_address(criu_opts *opts, const char *path)
    void criu_local_set_service_fd(criu_opts *opts, int fd)
    int criu_local_set_service_binary(criu_opts *opts, const char *path)

    void criu_local_set_pid(criu_opts *opts, int pid)
    void criu_local_set_images_dir_fd(criu_opts *opts, int fd)
    int criu_local_set_parent_images(criu_opts *opts, const char *path)
    void criu_local_set_work_dir_fd(criu_opts *opts, int fd)
    void criu_local_set_leave_running(criu_opts *opts, bint leave_running)
    void criu_local_set_ext_unix_sk(criu_opts *opts, bint ext_unix_sk)
    int criu_local_add_unix_sk(criu_opts *opts, unsigned int inode)
    void criu_local_set_tcp_established(criu_opts *opts, bint tcp_established)
    void criu_local_set_tcp_skip_in_flight(criu_opts *opts, bint tcp_skip_in_flight)
    void criu_local_set_tcp_close(criu_opts *opts, bint tcp_close)
    void criu_local_set_weak_sysctls(criu_opts *opts, bint val)
    void criu_local_set_evasive_devices(criu_opts *opts, bint evasive_devices)
    void criu_local_set_shell_job(criu_opts *opts, bint shell_job)
    void criu_local_set_skip_file_rwx_check(criu_opts *opts, bint skip_file_rwx_check)
    void criu_local_set_unprivileged(criu_opts *opts, bint unprivileged)
    void criu_local_set_orphan_pts_master(criu_opts *opts, bint orphan_pts_master)
    void criu_local_set_file_locks(criu_opts *opts, bint file_locks)
    void criu_local_set_track_mem(criu_opts *opts, bint track_mem)
    void criu_local_set_auto_dedup(criu_opts *opts, bint auto_dedup)
    void criu_local_set_force_irmap(criu_opts *opts, bint force_irmap)
    void criu_local_set_link_remap(criu_opts *opts, bint link_remap)
    void criu_local_set_log_level(criu_opts *opts, int log_level)
    int criu_local_set_log_file(criu_opts *opts, const char *log_file)
    int criu_local_set_root(criu_opts *opts, const char *root)
    void criu_local_set_manage_cgroups(criu_opts *opts, bint manage)
    void criu_local_set_manage_cgroups_mode(criu_opts *opts, criu_cg_mode mode)
    int criu_local_set_freeze_cgroup(criu_opts *opts, const char *name)
    int criu_local_add_cg_yard(criu_opts *opts, const char *path)
    void criu_local_set_timeout(criu_opts *opts, unsigned int timeout)
    void criu_local_set_auto_ext_mnt(criu_opts *opts, bint val)
    void criu_local_set_ext_sharing(criu_opts *opts, bint val)
    void criu_local_set_ext_masters(criu_opts *opts, bint val)
    int criu_local_add_ext_mount(criu_opts *opts, const char *key, const char *val)
    int criu_local_add_veth_pair(criu_opts *opts, const char *inside, const char *outside)
    int criu_local_add_cg_root(criu_opts *opts, const char *ctrl, const char *path)
    int criu_local_add_cg_dump_controller(criu_opts *opts, const char *name)
    int criu_local_add_skip_mnt(criu_opts *opts, const char *mnt)
    int criu_local_add_inherit_fd(criu_opts *opts, int fd, const char *key)
    int criu_local_add_external(criu_opts *opts, const char *key)
    int criu_local_set_page_server_address_port(criu_opts *opts, const char *address, int port)
    int criu_local_set_network_lock(criu_opts *opts, criu_network_lock_method method)
    int criu_local_set_config_file(criu_opts *opts, const char *path)
    int criu_local_set_lsm_profile(criu_opts *opts, const char *name)
    int criu_local_set_lsm_mount_context(criu_opts *opts, const char *name)
    int criu_local_set_pre_dump_mode(criu_opts *opts, criu_pre_dump_mode mode)
    int criu_local_join_ns_add(criu_opts *opts, const char *ns, const char *ns_file, const char *extra_opt)
    void criu_local_set_empty_ns(criu_opts *opts, int namespaces)

    void criu_local_set_notify_cb(criu_opts *opts, int (*cb)(char *action, criu_notify_arg_t na) noexcept)
    int criu_notify_pid(criu_notify_arg_t na)
    int criu_get_orphan_pts_master_fd()

    int criu_local_check(criu_opts *opts)
    int criu_local_dump(criu_opts *opts)
    int criu_local_pre_dump(criu_opts *opts)
    int criu_local_restore(criu_opts *opts)
    int criu_local_restore_child(criu_opts *opts)
    int criu_local_get_version(criu_opts *opts)
    int criu_local_feature_check(criu_opts *opts, criu_feature_check *features, size_t size)
