"""What a checkpoint holds, read from its images: ``fastckpt inspect`` and :func:`inspect`.

checkpointctl's view of an image directory made by fastckpt, by ``runc
checkpoint`` or by podman (its ``checkpoint/`` directory, with podman's
``config.dump`` and ``spec.dump`` beside it): the container, when and how it
was checkpointed and with which CRIU, its process tree (pid, command,
threads), each process's memory, open files and sockets, the TCP connections,
mounts, network interfaces and addresses, and CRIU's statistics of the dump.
Everything is decoded by :mod:`fastckpt.images` (CRIU's own schemas); the
result is a plain dict (JSON as it is), :func:`render` draws it as a tree.

An archive is inspected by unpacking it into a temporary directory first:
:func:`inspect_path` dispatches on directory or file.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import stat
import struct

from . import images
from .errors import ImageError

FORMAT = 1
META_FILE = "fastckpt.json"  # imagedir.META_FILE (not imported: imagedir loads the libcriu binding)
DESCRIPTORS_FILE = "descriptors.json"  # runc.DESCRIPTORS_FILE
PODMAN_FILES = ("config.dump", "spec.dump")

# linux/tcp_states.h
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}
PROTOS = {6: "tcp", 17: "udp", 136: "udplite", 0: ""}
# CRIU's task states (criu/include/pstree.h: TASK_ALIVE ...)
TASK_STATES = {1: "alive", 2: "dead", 3: "stopped", 6: "zombie"}
MAP_SHARED = 0x01
# vma_entry.status (CRIU's criu/include/image.h)
VMA_ANON_SHARED = 1 << 8
VMA_AREA_MEMFD = 1 << 14
IFF_UP = 0x1
IFADDR_MAGIC = 0x47361222  # `ip addr save`'s header (iproute2), what CRIU's ifaddr-*.img holds
RTM_NEWADDR = 20
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL = 1, 2, 3


def inspect_path(path: str) -> dict:
    """:func:`inspect` of an image directory, or of a checkpoint archive (a file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{path} does not exist", path=path, errno=errno.ENOENT) from None
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}", path=path, errno=e.errno) from None
    if stat.S_ISDIR(st.st_mode):
        return inspect(path)
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{path} is neither a checkpoint directory nor a checkpoint archive", path=path)
    return _inspect_archive(path)


def _inspect_archive(path: str) -> dict:
    """An archive (fastckpt's or podman's export) is unpacked, checked as an import checks it, into a
    private temporary directory, inspected there and removed; the result names the archive."""
    import shutil
    import tempfile

    from . import archive

    tmp = tempfile.mkdtemp(prefix="fastckpt-inspect-")
    try:
        archive.unpack(path, tmp)
        info = inspect(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["path"] = os.path.abspath(path)
    info["archive"] = True
    return info


def _images_dir(path: str) -> tuple[str, str | None]:
    """(the directory of CRIU's images, the directory of podman's files or None) for PATH."""
    if os.path.isfile(os.path.join(path, "inventory.img")):
        parent = os.path.dirname(os.path.abspath(path))
        podman = parent if any(os.path.isfile(os.path.join(parent, f)) for f in PODMAN_FILES) else None
        return path, podman
    sub = os.path.join(path, "checkpoint")  # the root of an unpacked podman archive
    if os.path.isfile(os.path.join(sub, "inventory.img")):
        return sub, path
    raise ImageError(f"{path} is not a checkpoint: it holds no CRIU inventory.img", path=path,
                     errno=errno.ENOENT)


def inspect(path: str) -> dict:
    """What the checkpoint in image directory PATH holds, as a dict (see the module's doc).

    Raises :class:`~fastckpt.errors.ImageError` when PATH is not a checkpoint or an image
    it needs is damaged (naming the file).
    """
    img_dir, podman_dir = _images_dir(path)
    try:
        return _inspect(path, img_dir, podman_dir)
    except (ValueError, KeyError, IndexError, struct.error) as e:  # damage the decoder let through
        raise ImageError(f"the checkpoint in {img_dir} is damaged: {type(e).__name__}: {e}", path=img_dir,
                         errno=errno.EBADMSG) from None


def _inspect(path: str, img_dir: str, podman_dir: str | None) -> dict:
    r = _Reader(img_dir)
    inv = r.one("inventory.img", "INVENTORY")
    meta = _json(os.path.join(img_dir, META_FILE))
    podman = {f: _json(os.path.join(podman_dir, f)) for f in PODMAN_FILES} if podman_dir else {}
    made_by = "fastckpt" if meta is not None else ("podman" if podman_dir else "runc")
    tree = r.image("pstree.img", "PSTREE").entries
    files = r.files()
    procs = [_process(r, e, files, inv) for e in tree]
    root_ids = r.ids(tree[0].pid) if tree else None
    sockets = [dict(s, pid=p["pid"], fd=fd["fd"]) for p in procs for fd in p["files"]
               for s in ([fd["socket"]] if "socket" in fd else [])]
    descriptors = _json(os.path.join(img_dir, DESCRIPTORS_FILE))
    container = _container(meta, podman, r, root_ids)
    if isinstance(descriptors, list):  # runc's record of the container's stdio, which a restore reconnects
        container["stdio"] = descriptors
    out = {
        "format": FORMAT,
        "path": os.path.abspath(path),
        "images": img_dir,
        "made_by": made_by,
        "container": container,
        "checkpoint": _checkpoint(img_dir, meta, inv, r),
        "processes": procs,
        "sockets": sockets,
        "tcp_connections": [s for s in sockets if s.get("state") == "ESTABLISHED"],
        "mounts": _mounts(r, root_ids),
        "network": _network(r, root_ids),
        "statistics": _stats(img_dir) if podman_dir is None or r.exists("stats-dump") else _stats(podman_dir),
    }
    return out


# --- reading -----------------------------------------------------------------------------

class _Reader:
    """The images of one directory, each read once."""

    def __init__(self, d: str):
        self.dir = d
        self._cache: dict[str, images.Image | None] = {}
        self.page_size = os.sysconf("SC_PAGE_SIZE")

    def image(self, name: str, kind: str, optional: bool = False) -> images.Image | None:
        if name not in self._cache:
            try:
                self._cache[name] = images.read_image(os.path.join(self.dir, name), kind)
            except ImageError as e:
                if optional and e.errno == errno.ENOENT:
                    self._cache[name] = None
                else:
                    raise
        return self._cache[name]

    def one(self, name: str, kind: str, optional: bool = False):
        img = self.image(name, kind, optional)
        if img is None or not img.entries:
            if optional:
                return None
            raise images.damaged(os.path.join(self.dir, name), "truncated: it holds no entry")
        return img.entries[0]

    def ids(self, pid: int):
        """task_kobj_ids_entry of PID (ids-<pid>.img, or its core's)."""
        e = self.one(f"ids-{pid}.img", "IDS", optional=True)
        if e is None:
            core = self.one(f"core-{pid}.img", "CORE", optional=True)
            e = core.ids if core is not None and core.HasField("ids") else None
        return e

    def files(self) -> dict:
        """file_entry by id (files.img)."""
        img = self.image("files.img", "FILES", optional=True)
        return {f.id: f for f in img.entries} if img is not None else {}

    def exists(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.dir, name))


def _json(path: str):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}", path=path,
                         errno=getattr(e, "errno", None) or errno.EBADMSG) from None


# --- the container and the checkpoint -------------------------------------------------------

def _container(meta, podman: dict, r: _Reader, root_ids) -> dict:
    out: dict = {"id": None, "name": None, "image": None, "runtime": None, "created": None, "hostname": None,
                 "args": None}
    if root_ids is not None and root_ids.HasField("uts_ns_id"):
        uts = r.one(f"utsns-{root_ids.uts_ns_id}.img", "UTSNS", optional=True)
        if uts is not None:
            out["hostname"] = uts.nodename
    if meta is not None:
        state = meta.get("state") or {}
        cfg = state.get("config") or {}
        if meta.get("kind") == "container":  # fastckpt.json holds runc's state of the container
            out.update(runtime="runc", id=meta.get("id"), name=meta.get("id"), created=state.get("created"))
        if cfg.get("rootfs"):
            out["rootfs"] = cfg["rootfs"]
        labels = {k: v for k, _, v in (lbl.partition("=") for lbl in cfg.get("labels") or [])}
        if labels.get("bundle"):
            out["bundle"] = labels["bundle"]
    cfg = podman.get("config.dump") or {}
    spec = podman.get("spec.dump") or {}
    if cfg and out["id"] is not None:
        # fastckpt's own archive: the container is the runc one; config.dump is for podman's import
        out["podman_id"] = cfg.get("id")
        out["image"] = cfg.get("rootfsImageName") or cfg.get("rootfsImageID") or None
    elif cfg:
        out["id"] = cfg.get("id") or out["id"]
        out["name"] = cfg.get("name") or out["name"]
        out["image"] = cfg.get("rootfsImageName") or cfg.get("rootfsImageID")
        out["runtime"] = cfg.get("runtime") or cfg.get("OCIRuntime") or out["runtime"]
        out["created"] = cfg.get("createdTime") or out["created"]
        out["engine"] = "podman"
    if spec:
        out["args"] = (spec.get("process") or {}).get("args")
        out["hostname"] = spec.get("hostname") or out["hostname"]
        out["image"] = out["image"] or (spec.get("annotations") or {}).get("io.kubernetes.cri-o.ImageName")
    return out


def _checkpoint(img_dir: str, meta, inv, r: _Reader) -> dict:
    try:
        st = os.stat(os.path.join(img_dir, "inventory.img"))
        when = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).isoformat()
    except OSError:
        when = None
    size = n = 0
    with os.scandir(img_dir) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                size += e.stat(follow_symlinks=False).st_size
                n += 1
    options: dict = {"tcp_established": any(name.startswith("tcp-stream-") for name in os.listdir(img_dir))}
    if inv.HasField("tcp_close"):
        options["tcp_close"] = inv.tcp_close
    if inv.HasField("network_lock_method"):
        lock = images.message_class("criu_opts").DESCRIPTOR.fields_by_name["network_lock"].enum_type
        v = lock.values_by_number.get(inv.network_lock_method)
        if v is not None:
            options["network_lock"] = v.name.lower()
    if meta is not None:
        options["network_lock"] = meta.get("network_lock", options.get("network_lock"))
        options["network"] = meta.get("netns")
        options["kind"] = meta.get("kind")
    options["manifest"] = r.exists("fastckpt-manifest.json")
    return {"created": when, "criu_version": _criu_version(img_dir), "image_version": inv.img_version,
            "files": n, "size_bytes": size, "options": options}


def _criu_version(img_dir: str) -> str | None:
    """CRIU's version, from its dump log when it is beside the images."""
    try:
        with open(os.path.join(img_dir, "dump.log"), "rb") as f:
            head = f.read(4096).decode(errors="replace")
    except OSError:
        return None
    for line in head.splitlines():
        if ") Version: " in line:
            return line.split(") Version: ", 1)[1].split()[0]
    return None


def _stats(img_dir: str) -> dict | None:
    try:
        return images.read_stats(img_dir, "dump")
    except ImageError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


# --- processes ---------------------------------------------------------------------------------

def _process(r: _Reader, e, files: dict, inv) -> dict:
    pid = e.pid
    core = r.one(f"core-{pid}.img", "CORE", optional=True)
    tc = core.tc if core is not None and core.HasField("tc") else None
    p: dict = {"pid": pid, "ppid": e.ppid, "pgid": e.pgid, "sid": e.sid,
               "command": tc.comm if tc is not None else None, "cmdline": None,
               "state": TASK_STATES.get(tc.task_state, str(tc.task_state)) if tc is not None else None,
               "threads": len(e.threads) or 1, "tids": list(e.threads)}
    ids = r.ids(pid)
    mm = r.one(f"mm-{pid}.img", "MM", optional=True) if p["state"] != "zombie" else None
    pm = None
    if r.exists(f"pagemap-{pid}.img"):
        pm = images.read_pagemap(os.path.join(r.dir, f"pagemap-{pid}.img"))
    if mm is not None and pm is not None and mm.mm_arg_end > mm.mm_arg_start:
        raw = images.read_memory(r.dir, pm, mm.mm_arg_start, min(mm.mm_arg_end - mm.mm_arg_start, 65536),
                                 r.page_size)
        if raw is not None:
            p["cmdline"] = [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]
    p["memory"] = _memory(r, mm, pm, files)
    if mm is not None and mm.exe_file_id in files:
        p["exe"] = _describe(files[mm.exe_file_id], r)["path"]
    fs = r.one(f"fs-{pid}.img", "FS", optional=True)
    if fs is not None:
        for key, fid in (("cwd", fs.cwd_id), ("root", fs.root_id)):
            if fid in files:
                p[key] = _describe(files[fid], r).get("path")
    fds = []
    fdinfo = f"fdinfo-{ids.files_id}.img" if ids is not None and inv.fdinfo_per_id else f"fdinfo-{pid}.img"
    img = r.image(fdinfo, "FDINFO", optional=True) if p["state"] != "zombie" else None
    for fe in img.entries if img is not None else []:
        d = {"fd": fe.fd, "type": images.enum_name(fe, "type").lower()}
        f = files.get(fe.id)
        if f is not None:
            d.update(_describe(f, r))
        fds.append(d)
    p["files"] = fds
    return p


def _shmem_id(v, files: dict, r: _Reader) -> int | None:
    """The id of the shared memory segment vma_entry V maps (its pagemap-shmem-<id>.img), if any:
    anonymous shared memory, or (as CRIU 4 sees MAP_SHARED|MAP_ANONYMOUS on newer kernels) a memfd."""
    if v.status & VMA_AREA_MEMFD:
        f = files.get(v.shmid)
        if f is None or not f.HasField("memfd"):
            return None
        img = r.image("memfd.img", "MEMFD_INODE", optional=True)
        inode = next((i for i in (img.entries if img else []) if i.inode_id == f.memfd.inode_id), None)
        return inode.shmid if inode is not None else None
    if v.status & VMA_ANON_SHARED:
        return v.shmid
    return None


def _memory(r: _Reader, mm, pm, files: dict) -> dict:
    ps = r.page_size
    out: dict = {"vmas": 0, "virtual_bytes": 0, "pages": 0, "bytes": 0,
                 "private": {"pages": 0, "bytes": 0}, "shared": {"mappings": 0, "virtual_bytes": 0,
                                                                "pages": 0, "bytes": 0}}
    if pm is not None:
        n = pm.stored_pages
        out["private"] = {"pages": n, "bytes": n * ps}
        out["parent_pages"] = sum(run.nr_pages for run in pm.runs if run.flags & images.PE_PARENT)
    if mm is not None:
        out["vmas"] = len(mm.vmas)
        out["virtual_bytes"] = sum(v.end - v.start for v in mm.vmas)
        shmids = set()
        for v in mm.vmas:
            if v.flags & MAP_SHARED:
                out["shared"]["mappings"] += 1
                out["shared"]["virtual_bytes"] += v.end - v.start
                shmid = _shmem_id(v, files, r)
                if shmid is not None:
                    shmids.add(shmid)
        for shmid in sorted(shmids):  # anonymous shared memory, dumped once for all who map it
            name = f"pagemap-shmem-{shmid}.img"
            if r.exists(name):
                spm = images.read_pagemap(os.path.join(r.dir, name))
                out["shared"]["pages"] += spm.stored_pages
        out["shared"]["bytes"] = out["shared"]["pages"] * ps
    out["pages"] = out["private"]["pages"] + out["shared"]["pages"]
    out["bytes"] = out["pages"] * ps
    return out


def _addr(family: int, words) -> str:
    if family == socket.AF_INET6 and len(words) == 4:
        return socket.inet_ntop(socket.AF_INET6, struct.pack("=4I", *words))
    if words:
        return socket.inet_ntop(socket.AF_INET, struct.pack("=I", words[0]))
    return ""


def _endpoint(family: int, words, port: int) -> str:
    a = _addr(family, words)
    return f"[{a}]:{port}" if family == socket.AF_INET6 else f"{a}:{port}"


def _describe(f, r: _Reader) -> dict:
    """What file_entry F is: a path, a socket, a pipe..."""
    t = images.enum_name(f, "type")
    if t == "REG" and f.HasField("reg"):
        d = {"path": f.reg.name, "pos": f.reg.pos, "flags": f.reg.flags}
        if f.reg.HasField("size"):
            d["size"] = f.reg.size
        return d
    if t == "INETSK" and f.HasField("isk"):
        s = f.isk
        fam = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}.get(s.family, str(s.family))
        sk = {"family": fam, "type": SOCK_TYPES.get(s.type, str(s.type)), "protocol": PROTOS.get(s.proto, str(s.proto)),
              "state": TCP_STATES.get(s.state, str(s.state)) if s.proto == 6 else None,
              "local": _endpoint(s.family, list(s.src_addr), s.src_port), "local_port": s.src_port,
              "inode": s.ino}
        if s.state != 10 and (s.dst_port or s.dst_addr):
            sk["remote"] = _endpoint(s.family, list(s.dst_addr), s.dst_port)
            sk["remote_port"] = s.dst_port
        tcp = f"tcp-stream-{s.ino:x}.img"
        if r.exists(tcp):
            e = r.one(tcp, "TCP_STREAM")
            sk["queued_bytes"] = {"in": e.inq_len, "out": e.outq_len}
        return {"path": f"socket:[{s.ino}]", "socket": sk}
    if t == "UNIXSK" and f.HasField("usk"):
        u = f.usk
        name = u.name.decode(errors="replace") if u.name else ""
        if name.startswith("\0"):
            name = "@" + name[1:]
        return {"path": f"socket:[{u.ino}]", "unix": {"type": SOCK_TYPES.get(u.type, str(u.type)),
                                                     "name": name, "peer": u.peer, "inode": u.ino}}
    if t == "PIPE" and f.HasField("pipe"):
        return {"path": f"pipe:[{f.pipe.pipe_id}]"}
    if t == "FIFO" and f.HasField("fifo"):
        return {"path": f"fifo:[{f.fifo.pipe_id}]"}
    if t == "TTY" and f.HasField("tty"):
        return {"path": f"tty:[{f.tty.tty_info_id}]"}
    if t == "EXT" and f.HasField("ext"):
        return {"path": f"external:[{f.ext.id}]"}
    return {"path": f"{t.lower()}:[{f.id}]"}


# --- mounts and network ------------------------------------------------------------------------

def _mounts(r: _Reader, root_ids) -> list:
    names = []
    if root_ids is not None and root_ids.HasField("mnt_ns_id"):
        names.append(f"mountpoints-{root_ids.mnt_ns_id}.img")
    else:
        names = sorted(n for n in os.listdir(r.dir) if n.startswith("mountpoints-") and n.endswith(".img"))
    out = []
    for name in names:
        img = r.image(name, "MNTS", optional=True)
        for m in img.entries if img is not None else []:
            fstype = m.fsname if m.HasField("fsname") and m.fsname else images.enum_name(m, "fstype", "fstype").lower()
            d = {"mountpoint": m.mountpoint, "fstype": fstype, "source": m.source, "root": m.root,
                 "options": m.options, "mnt_id": m.mnt_id, "parent": m.parent_mnt_id}
            if m.HasField("ext_key") or (m.HasField("ext_mount") and m.ext_mount):
                d["external"] = m.ext_key if m.HasField("ext_key") else True
            out.append(d)
    return sorted(out, key=lambda m: (m["mountpoint"], m["mnt_id"]))


def _network(r: _Reader, root_ids) -> dict:
    if root_ids is None or not root_ids.HasField("net_ns_id"):
        return {"interfaces": []}
    ns = root_ids.net_ns_id
    addrs = _ifaddrs(os.path.join(r.dir, f"ifaddr-{ns}.img"))
    img = r.image(f"netdev-{ns}.img", "NETDEV", optional=True)
    out = []
    for nd in img.entries if img is not None else []:
        out.append({"name": nd.name, "index": nd.ifindex, "type": images.enum_name(nd, "type").lower(),
                    "mtu": nd.mtu, "up": bool(nd.flags & IFF_UP), "addresses": addrs.get(nd.ifindex, [])})
    if not out and addrs:  # no netdev image (left out as recording nothing): the addresses alone
        out = [{"name": None, "index": i, "addresses": a} for i, a in sorted(addrs.items())]
    return {"namespace": ns, "interfaces": out}


def _ifaddrs(path: str) -> dict:
    """ifindex -> ["addr/prefix", ...] from an ifaddr image (`ip addr save`'s netlink messages)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    out: dict = {}
    off = 4 if len(data) >= 4 and struct.unpack_from("<I", data)[0] == IFADDR_MAGIC else 0
    while off + 16 + 8 <= len(data):
        length, mtype = struct.unpack_from("<IH", data, off)
        if length < 24 or off + length > len(data):
            raise images.damaged(path, f"truncated: {len(data)} bytes, a netlink message at {off} "
                                       f"needs {length}")
        if mtype == RTM_NEWADDR:
            family, prefix, _flags, _scope, index = struct.unpack_from("<BBBBI", data, off + 16)
            a = off + 24
            local = address = None
            while a + 4 <= off + length:
                alen, atype = struct.unpack_from("<HH", data, a)
                if alen < 4:
                    break
                value = data[a + 4:a + alen]
                if atype in (IFA_ADDRESS, IFA_LOCAL) and family in (socket.AF_INET, socket.AF_INET6):
                    text = socket.inet_ntop(family, value)
                    if atype == IFA_LOCAL:
                        local = text
                    else:
                        address = text
                a += (alen + 3) & ~3
            if local or address:
                out.setdefault(index, []).append(f"{local or address}/{prefix}")
        off += (length + 3) & ~3
    return out


# --- the tree ------------------------------------------------------------------------------------

def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _short(text: str, width: int = 60) -> str:
    """TEXT on one line (control characters as spaces), cut to WIDTH."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text if len(text) <= width else text[:width - 3] + "..."


def render(info: dict) -> str:
    """INFO (what :func:`inspect` returns) as the tree ``fastckpt inspect`` prints."""
    c, k = info["container"], info["checkpoint"]
    lines = [f"{info['path']} ({info['made_by']} checkpoint)"]

    def section(title, items):
        items = [i for i in items if i is not None]
        lines.append(f"├── {title}" if items else f"├── {title}: none")
        for j, item in enumerate(items):
            last = j == len(items) - 1
            for n, text in enumerate(item if isinstance(item, list) else [item]):
                lines.append(("│   " + ("└── " if last else "├── ") if n == 0 else
                              "│   " + ("    " if last else "│   ") + "    ") + text)

    kv = [f"{key}: {c[key]}" for key in ("id", "name", "image", "runtime", "engine", "hostname", "created",
                                         "bundle", "rootfs") if c.get(key)]
    if c.get("args"):
        kv.append("args: " + _short(" ".join(c["args"])))
    if c.get("stdio"):
        kv.append("stdio: " + ", ".join(c["stdio"]))
    section("container", kv)
    opts = ", ".join(f"{a}={b}" for a, b in k["options"].items() if b not in (None, False))
    section("checkpoint", [f"created: {k['created']}", f"CRIU: {k['criu_version'] or 'unknown'}",
                           f"size: {_size(k['size_bytes'])} in {k['files']} files", f"options: {opts or '-'}"])
    children: dict = {}
    for p in info["processes"]:
        children.setdefault(p["ppid"], []).append(p)
    pids = {p["pid"] for p in info["processes"]}
    roots = [p for p in info["processes"] if p["ppid"] not in pids]
    tree: list = []

    def walk(p, prefix, last):
        m = p["memory"]
        cmd = _short(" ".join(p["cmdline"]) if p.get("cmdline") else (p["command"] or "?"))
        tree.append(f"{prefix}{'└── ' if last else '├── '}[{p['pid']}] {cmd}  "
                    f"(threads {p['threads']}, memory {_size(m['bytes'])}: {m['private']['pages']} private + "
                    f"{m['shared']['pages']} shared pages, {m['vmas']} mappings{', ' + p['state'] if p['state'] not in ('alive', None) else ''})")
        sub = prefix + ("    " if last else "│   ")
        kids = children.get(p["pid"], [])
        fds = p["files"]
        for i, fd in enumerate(fds):
            what = fd.get("path", fd["type"])
            if "socket" in fd:
                s = fd["socket"]
                what = f"{s['protocol'] or s['type']} {s['local']}" + (f" -> {s['remote']}" if s.get("remote") else "") \
                    + (f" {s['state']}" if s.get("state") else "")
            elif "unix" in fd:
                what = f"unix {fd['unix']['type']} {fd['unix']['name'] or fd['path']}"
            tree.append(f"{sub}{'└── ' if i == len(fds) - 1 and not kids else '├── '}fd {fd['fd']}: {what}")
        for i, kid in enumerate(kids):
            walk(kid, sub, i == len(kids) - 1)

    for i, p in enumerate(roots):
        walk(p, "│   ", i == len(roots) - 1)
    lines.append(f"├── processes: {len(info['processes'])}")
    lines += tree
    section("TCP connections", [f"{s['local']} -> {s['remote']} (pid {s['pid']}, fd {s['fd']})"
                                for s in info["tcp_connections"]])
    section("mounts", [f"{m['mountpoint']} {m['fstype']} {m['source']}" + (" (external)" if m.get("external") else "")
                       for m in info["mounts"]])
    section("network", [f"{i['name']} ({i.get('type')}, {'up' if i.get('up') else 'down'}): "
                        f"{', '.join(i['addresses']) or 'no address'}" for i in info["network"]["interfaces"]])
    s = info["statistics"]
    lines.append("└── CRIU statistics" + (": none" if not s else ""))
    for j, (key, value) in enumerate((s or {}).items()):
        lines.append(f"    {'└── ' if j == len(s) - 1 else '├── '}{key}: {value}"
                     + (" us" if key.endswith("_time") else ""))
    return "\n".join(lines)
