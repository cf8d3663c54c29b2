"""The checkpoint flow: a runc container or a process tree, and a :class:`CheckpointOptions`, to
CRIU's images.

Checks the target and the options before anything is frozen, makes the image directories, freezes
the container (and thaws it whatever happens), runs CRIU's dump, writes the manifest, and turns a
failure into an error that says what the target was left as.
"""
from __future__ import annotations

import errno
import json
import os
import time

from ._record import Record, factory
from . import cgroups, criu_proc, locks, manifest, migration, netimages, pscork, runc, signals
from .constants import CgroupMode
from .criu import apply_common, apply_config_file, criu_binary, features, new_opts, run_op
from .criu_failures import disk_full, raise_criu_failure
from .errors import (ContainerStateError, CriuError, DiskFull, Error, ImageDirError, Interrupted, ProcessNotFound,
                     UsageError)
from .externals import container_external_mounts, container_externals, container_netns
from .imagedir import discard_partial_images, list_images, make_private_dirs, open_dir_fd, write_meta, write_private
from .options import NETNS_HOST, CheckpointOptions
from .privileges import require_privileges
from .proctree import tree_members, wait_ids_free

DUMP_LOG = "dump.log"


class CheckpointResult(Record):
    """What a checkpoint made: where its images and CRIU's log are, what was checkpointed
    (``pid``, and ``container_id`` for a container), whether it was left running, how long it took
    (``wall_time``, and ``frozen_time`` when fastckpt froze the container itself) and the image
    files with their sizes (``files``). ``stats()`` decodes CRIU's statistics of the dump."""

    image_path: str
    work_path: str
    log_path: str
    pid: int
    container_id: str | None = None
    leave_running: bool = False
    wall_time: float = 0.0  # seconds, from the call to its return
    # seconds the container spent frozen by fastckpt (from its freeze to its thaw, or
    # to the end of the dump when CRIU killed it); None when fastckpt did not freeze it
    frozen_time: float | None = None
    files: dict[str, int] = factory(dict)  # image file -> size in bytes
    archive: object = None  # with --export: the archive.ExportResult

    def stats(self) -> dict[str, object]:
        """CRIU's statistics of this dump and fastckpt's wall time, as ``--print-stats`` prints them:
        ``{"criu": {...}, "wall_time_ms": ..., "frozen_time_ms": ...}`` (CRIU's times in microseconds,
        counts in pages; frozen_time_ms only when fastckpt froze a container itself).

        Decoded from ``stats-dump`` in ``work_path`` at each call; nothing is paid until then.
        """
        from .images import stats_report

        return stats_report(self.work_path, "dump", self.wall_time, self.frozen_time)


def load_checkpointable(container_id: str, root: str) -> tuple[runc.Container, str]:
    ct = runc.load(container_id, root)
    cgroups.require_supported()  # before anything is frozen
    status = ct.status()
    if status == runc.CREATED:
        raise ContainerStateError("Container cannot be checkpointed in created state")
    if status == runc.STOPPED:
        raise ContainerStateError(f"container {container_id!r} is stopped: there is nothing to checkpoint")
    return ct, status


# --- checkpoint ----------------------------------------------------------------

def _check_pid(pid) -> None:
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise UsageError(f"pid must be an integer, not {type(pid).__name__} {pid!r}")
    if pid <= 1:
        raise UsageError(f"cannot checkpoint pid {pid}")
    if pid == os.getpid():
        raise UsageError("cannot checkpoint fastckpt's own process")
    if runc.proc_start_time(pid) is None:
        raise ProcessNotFound(f"no running process with pid {pid}")


def checkpoint(container_id: str | None = None, options: CheckpointOptions | None = None, *,
               pid: int | None = None, root: str = runc.DEFAULT_ROOT, session=None,
               **kwargs) -> CheckpointResult:
    """Checkpoint a runc container (by id) or a process tree (by ``pid``).

    ``options`` or keyword arguments (the fields of :class:`CheckpointOptions`)
    say how; a container is left running only with ``leave_running``.
    ``session``: a :class:`fastckpt.Session` whose warm CRIU does the work.
    """
    t0 = time.monotonic()
    if options is None:
        options = CheckpointOptions(**kwargs)
    elif kwargs:
        options = options.replace(**kwargs)
    if (container_id is None) == (pid is None):
        raise UsageError("give either a container id or a pid")
    if options.export:
        from .archive import checkpoint_export

        return checkpoint_export(container_id, options, pid=pid, root=root, session=session)
    require_privileges("checkpoint")
    if container_id is not None:
        runc.validate_id(container_id)
    else:
        _check_pid(pid)
    result = None
    try:
        lock = locks.container(root, container_id) if container_id is not None else locks.process(pid)
        if session is None:
            criu_proc.prespawn()  # its exec overlaps the set-up below
        # a container dump has CRIU set up cgroups: opted in, that does not wait a grace period
        with lock, cgroups.FastMigrations(container_id is not None and options.fast_migrations):
            result = _checkpoint_locked(container_id, options, pid, root, session, t0)
        return result
    except KeyboardInterrupt:
        # outside _checkpoint_locked (which says what it left): before it (nothing was touched) or after
        # it returned (the checkpoint is complete)
        if result is not None:
            what = f"container {container_id!r}" if container_id is not None else f"process {pid}"
            gone = "was left running" if result.leave_running else "was checkpointed and is gone"
            raise _completed(Interrupted(f"interrupted after the checkpoint completed: images in "
                                         f"{result.image_path}; {what} {gone}"), result.image_path) from None
        raise Interrupted(f"interrupted: nothing was checkpointed; {_untouched(container_id, pid, root)}") \
            from None
    finally:
        criu_proc.discard_spare()  # not used: the checkpoint stopped before CRIU


def _completed(e: Error, image_path: str) -> Error:
    """E, raised once the checkpoint is complete: its images (in IMAGE_PATH) are all there is of the
    checkpointed target now (`e.completed_images`: a caller must not remove them)."""
    e.completed_images = image_path
    return e


def _untouched(container_id: str | None, pid: int | None, root: str) -> str:
    """What a checkpoint interrupted before it began left: its target as it was."""
    if container_id is None:
        return f"process {pid} is running"
    try:
        paused = runc.load(container_id, root).status() == runc.PAUSED
    except Error:
        paused = False
    return f"container {container_id!r} " + ("is paused, as it was" if paused else "is running")


def _checkpoint_locked(container_id, options: CheckpointOptions, pid, root, session, t0) -> CheckpointResult:
    ct: runc.Container | None = None
    was_paused = False
    what = f"container {container_id!r}" if container_id is not None else f"process {pid}"
    image_path = options.resolved_image_path()
    done = False  # the checkpoint is complete: from here on an interruption changes nothing
    try:
        if container_id is not None:
            ct, status = load_checkpointable(container_id, root)
            was_paused = status == runc.PAUSED
            target_pid = ct.init_pid
        else:
            target_pid = int(pid)
        _check_before_freezing(options, ct, image_path)
        work_path = options.resolved_work_path()
        make_private_dirs(image_path, work_path)
        log_path = os.path.join(work_path, DUMP_LOG)
        opts = new_opts(session)
        state = (f"{what} was left running" if options.leave_running or options.pre_dump
                 else f"{what} was checkpointed and is gone")
        manifest_error: Error | None = None
        # the processes a dump that ends the tree leaves as zombies (their ids wanted by a restore)
        # taken before the dump, then again where CRIU holds the whole tree still (its "post-dump", before it
        # kills the tree): a child forked in between (a shell's `sleep`) is dumped too, and its pid wanted
        ends_tree = ct is None and not options.leave_running and not options.pre_dump
        members = tree_members(target_pid) if ends_tree else []
        with signals.deferred():
            try:
                ret, err, known, frozen = _dump(opts, options, ct, was_paused, target_pid, image_path, work_path,
                                                session, members if ends_tree else None)
            except CriuError:  # CRIU stopped by the watchdog: nothing may look like a checkpoint
                discard_partial_images(image_path)
                raise
            if ret < 0:
                full = disk_full(image_path, work_path)  # before the partial images go
                discard_partial_images(image_path)
            else:
                done = True
                if ct is not None and not (options.leave_running or options.pre_dump):
                    ct.destroy()
                try:  # the sizes and checksums that restore checks before CRIU runs
                    netimages.prune(image_path)
                    manifest.write(image_path, known)
                except Error as e:
                    manifest_error = e
        if ret < 0:
            raise_criu_failure("dump", ret, err, log_path, image_path, disk_full=full)
        if manifest_error is not None:
            raise _completed(ImageDirError(f"the checkpoint completed (images in {image_path}; {state}), but its "
                                           f"manifest could not be written: {manifest_error}; a restore can check "
                                           "only the images' structure", errno=manifest_error.errno),
                             image_path) from manifest_error
        wait_ids_free(list(set(members)))
        return CheckpointResult(
            image_path=image_path, work_path=work_path, log_path=log_path, pid=target_pid,
            container_id=container_id, leave_running=options.leave_running,
            wall_time=time.monotonic() - t0, frozen_time=frozen, files=list_images(image_path),
        )
    except KeyboardInterrupt:
        if done:
            raise _completed(Interrupted(f"interrupted after the checkpoint completed: images in {image_path}; "
                                         f"{state}"), image_path) from None
        running = "is running" if not was_paused else "is paused, as it was"
        if not was_paused and ct is not None and ct.is_frozen():
            running = "is paused (by someone else, while the checkpoint ran)"
        raise Interrupted(f"interrupted: nothing was checkpointed; {what} {running}") from None


def _check_before_freezing(options: CheckpointOptions, ct: runc.Container | None, image_path: str) -> None:
    """What would make the checkpoint fail (or unrestorable), refused while the target runs untouched."""
    if options.parent_path:
        migration.check_parent_path(image_path, options.parent_path)
    if options.status_fd is not None:
        migration.check_status_fd(options.status_fd)
    if options.pre_dump or options.parent_path or options.lazy_pages:
        feats = features()
        if options.pre_dump or options.parent_path:
            migration.require_mem_track(feats, "--pre-dump" if options.pre_dump else "--parent-path")
        if options.lazy_pages:
            migration.require_lazy_pages(feats, criu_binary())


def _notify_handler(options: CheckpointOptions, target_pid: int, members: list | None):
    """CRIU's notifications a checkpoint acts on: "status-ready" (the lazy page server listens): a \\0 to
    --status-fd; "post-dump" (the tree dumped, still whole, about to be ended): its processes added to
    MEMBERS. None when there is nothing to act on (CRIU then sends none)."""
    if options.status_fd is None and members is None:
        return None
    fd = [options.status_fd] if options.status_fd is not None else []

    def handler(action: str, pid: int) -> int:
        if action == "status-ready" and fd:
            migration.write_status(fd.pop())
        elif action == "post-dump" and members is not None:
            members.extend(tree_members(target_pid))
        return 0

    return handler


def _dump(opts, options: CheckpointOptions, ct: runc.Container | None, was_paused: bool, target_pid: int,
          image_path: str, work_path: str, session=None, members: list | None = None
          ) -> tuple[int, int, dict | None, float | None]:
    """Configure OPTS and run CRIU's dump; the container is thawed again whatever happens. MEMBERS: a list
    the tree's processes are added to once CRIU has dumped them (a dump that ends a process tree).

    Returns CRIU's (ret, errno), the pages checksums computed meanwhile and how
    long fastckpt kept the container frozen (None: it did not freeze it)."""
    fds = [open_dir_fd(image_path, "image directory")]
    tmp_yard = None
    try:
        opts.set_images_dir_fd(fds[0])
        if work_path != image_path:
            fds.append(open_dir_fd(work_path, "work directory"))
        opts.set_work_dir_fd(fds[-1])
        opts.set_log_file(DUMP_LOG)
        opts.set_pid(target_pid)
        opts.set_leave_running(options.leave_running)
        if options.page_server is not None and not options.lazy_pages:  # lazy: the config file says it
            opts.set_page_server(options.page_server.address, options.page_server.port)
        netns = container_netns(ct) if ct is not None else NETNS_HOST
        lock = apply_common(opts, options, netns)
        if options.parent_path:
            opts.set_parent_images(options.parent_path)  # relative to the image directory, as CRIU takes it
        if options.pre_dump or options.parent_path:
            opts.set_track_mem(True)
        handler = _notify_handler(options, target_pid, members)
        if handler is not None:
            opts.set_notify(handler)
        if ct is not None or options.lazy_pages:
            apply_config_file(opts, (ct.config.get("labels") or []) if ct is not None else None, work_path,
                              options.lazy_pages, options.page_server)
        if ct is not None:
            opts.set_root(ct.rootfs)
            opts.set_manage_cgroups(True)
            opts.set_orphan_pts_master(True)
            if ct.freeze_cgroup:
                opts.set_freeze_cgroup(ct.freeze_cgroup)
            cgroups.limit_criu_to_v2(opts)
            if os.environ.get("FASTCKPT_CG_YARD") != "0":
                yard = cgroups.dump_yard(target_pid)  # CRIU reads the host's hierarchies instead of mounting its own
                if yard is not None:
                    opts.set_cg_yard(yard[0])
                    tmp_yard = yard[1]
            for key, val in container_external_mounts(ct):
                opts.add_ext_mount(key, val)
            for key in container_externals(ct):
                opts.add_external(key)
        try:
            if ct is not None and not options.pre_dump:
                # runc restore reads how the container's stdio was connected from here
                write_private(os.path.join(image_path, runc.DESCRIPTORS_FILE),
                               json.dumps(ct.external_descriptors).encode())
            if not options.pre_dump:  # a pre-dump is a parent of checkpoints, not one to restore
                write_meta(image_path, ct, netns, lock)
        except OSError as e:
            discard_partial_images(image_path)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"no space left on the disk holding {image_path}: nothing was checkpointed",
                               errno=e.errno) from None
            raise ImageDirError(f"cannot write in image directory {image_path}: {e.strerror}",
                                errno=e.errno) from None
        ret = -1

        frozen_at: list[float] = []

        # CRIU records the v1 freezer state it found as the container's: in the modes whose restore writes
        # cgroup properties back (full, strict) a cgroup frozen here would come back frozen; CRIU freezes it
        restores_props = (options.manage_cgroups_mode in (CgroupMode.FULL, CgroupMode.STRICT)
                          and ct is not None and "freezer" in ct.cgroup_paths)

        def freeze(criu_pid=None):
            # frozen here in ~1 ms (CRIU's own freeze polls every 100 ms), once criu
            # is up and about to get its request: its start is not frozen time
            if ct is not None and not was_paused and ct.freezer_state_file and not restores_props:
                frozen_at.append(time.monotonic())
                ct.freeze_and_wait()

        # a pause by someone else while CRIU works would hang it: the watchdog stops CRIU then
        outside_pause = criu_proc.OutsidePause(ct.is_frozen, image_path) if ct is not None and not was_paused \
            and ct.freezer_state_file else None
        # before the freeze (a session's is made here); only as far as the follower's question needs: the
        # watchdog works out its bound from the whole tree on its own thread, once CRIU runs
        rss = criu_proc.tree_rss(target_pid, enough=manifest.CHUNK_SIZE)
        try:
            if session is not None:
                freeze()
            # checksum the pages images for the manifest while CRIU writes them; a tree whose memory fills
            # no chunk of the manifest's has nothing to follow (its thread would cost the call more than
            # it computes: stopped, it runs at nice 19)
            follower = manifest.Follower(image_path) if options.page_server is None \
                and rss >= manifest.CHUNK_SIZE else None
            try:  # CRIU's last command to a page server would wait 200 ms in its corked socket (pscork)
                with pscork.uncork(options.page_server if session is None and not options.lazy_pages else None):
                    ret, err = run_op(opts, "pre_dump" if options.pre_dump else "dump", session,
                                      log_path=os.path.join(work_path, DUMP_LOG), setup=freeze if session is None
                                      else None, timeout=lambda: criu_proc.dump_bound(target_pid),
                                      watch=outside_pause)
            finally:
                known = follower.stop() if follower else None
        finally:
            if ct is not None and ct.is_frozen():
                # CRIU leaves a cgroup it found frozen frozen: thaw what we froze, and a
                # paused container whose processes CRIU killed (they die once thawed);
                # a paused container that is still there stays paused, as does one
                # paused by someone else meanwhile
                if outside_pause is not None and outside_pause.paused:
                    pass
                elif not was_paused or (ret >= 0 and not (options.leave_running or options.pre_dump)):
                    ct.thaw()
        frozen = time.monotonic() - frozen_at[0] if frozen_at else None
        return ret, err, known, frozen
    finally:
        for fd in fds:
            os.close(fd)
        cgroups.remove_yard(tmp_yard)
