"""The `fastckpt page-server` and `fastckpt migrate` commands (their parsers and what they run)."""
from __future__ import annotations

import json
import sys


def add_page_server(sub, full: bool = True) -> None:
    p = sub.add_parser("page-server", help="receive the pages of one checkpoint made with --page-server",
                       description="A one-shot CRIU page server: it writes the pages of one dump into the "
                                   "image directory and exits when that dump is done.")
    p.set_defaults(func=cmd_page_server)
    if not full:
        return
    p.add_argument("--image-path", required=True, help="directory for the pages (made if missing; must hold "
                                                       "no checkpoint)")
    p.add_argument("--address", default="", help="address to listen on (default: all)")
    p.add_argument("--port", type=int, required=True, help="port to listen on (0: any, printed)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="give up when no dump connected and finished within this time (default 600)")
    p.add_argument("--stop-on-eof", action="store_true",
                   help="stop when standard input closes (for a controller such as `fastckpt migrate`)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_migrate(sub, full: bool = True) -> None:
    p = sub.add_parser("migrate", help="move a running container to another host (memory sent directly)",
                       description="Live-migrate a runc container: the destination is driven through "
                                   "--remote (e.g. 'ssh host'); the source container goes only once the "
                                   "destination has restored it.")
    p.set_defaults(func=cmd_migrate)
    if not full:
        return
    p.add_argument("container_id", metavar="CONTAINER_ID")
    p.add_argument("--remote", default="", metavar="PREFIX",
                   help="command prefix that runs a command on the destination, e.g. 'ssh host' "
                        "(default: none, run here)")
    p.add_argument("--address", required=True, help="the destination's address (its page server listens there)")
    p.add_argument("--port", type=int, default=0, help="the page server's port (default: any free one)")
    p.add_argument("-b", "--bundle", required=True, help="the bundle on the destination")
    p.add_argument("--dest-root", default=None, metavar="DIR", help="runc root on the destination")
    p.add_argument("--dest-id", default=None, help="container id on the destination (default: the same)")
    p.add_argument("--dest-image-path", default=None, metavar="DIR",
                   help="image directory on the destination (default: a new one in /var/lib/fastckpt/migrate)")
    p.add_argument("--remote-fastckpt", default="fastckpt", metavar="PATH", help="fastckpt on the destination")
    p.add_argument("--leave-running", action="store_true",
                   help="keep the source container running (thawed) after the migration")
    p.add_argument("--keep-images", action="store_true", help="keep the images on the destination")
    p.add_argument("--lazy-pages", action="store_true", help="post-copy: restore at once, pages on demand")
    p.add_argument("--source-address", default=None, metavar="ADDRESS",
                   help="with --lazy-pages: where the destination pulls the pages from (default: this host's "
                        "address on the route to --address)")
    p.add_argument("--tcp-established", action="store_true", help="allow open tcp connections")
    p.add_argument("--ext-unix-sk", action="store_true", help="allow external unix sockets")
    p.add_argument("--file-locks", action="store_true", help="handle file locks, for safety")
    p.add_argument("--manage-cgroups-mode", default=None, metavar="MODE")
    p.add_argument("--network-lock", default=None, metavar="METHOD")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="bound of each step")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_page_server(args) -> int:
    from . import pageserver

    def ready(address: str, port: int) -> None:
        print(f"{pageserver_ready_line(address, port)}", flush=True)

    stop_fd = None
    if args.stop_on_eof:
        import os

        stop_fd = sys.stdin.fileno()
        os.set_blocking(stop_fd, False)
    res = pageserver.serve(args.image_path, args.port, args.address, timeout=args.timeout, ready=ready,
                           stop_fd=stop_fd)
    if args.json:
        print(json.dumps({**res.asdict(), "bytes": res.bytes}, indent=2))
    else:
        print(f"received {res.bytes} bytes of pages from {res.peer} in {res.wall_time:.3f} s into {res.image_path}")
    return 0


def pageserver_ready_line(address: str, port: int) -> str:
    from .migrate import READY_PREFIX

    return f"{READY_PREFIX}{address}:{port}"


def cmd_migrate(args) -> int:
    from . import migrate, runc

    res = migrate.migrate(
        args.container_id, address=args.address, bundle=args.bundle, remote=args.remote,
        remote_fastckpt=args.remote_fastckpt, port=args.port, root=args.root or runc.DEFAULT_ROOT,
        dest_root=args.dest_root, dest_id=args.dest_id, dest_image_path=args.dest_image_path,
        leave_running=args.leave_running, tcp_established=args.tcp_established, ext_unix_sk=args.ext_unix_sk,
        file_locks=args.file_locks, manage_cgroups_mode=args.manage_cgroups_mode,
        network_lock=args.network_lock, keep_images=args.keep_images, lazy_pages=args.lazy_pages,
        source_address=args.source_address, timeout=args.timeout)
    if args.json:
        print(json.dumps(res.asdict(), indent=2))
    else:
        print(f"container {res.container_id!r} runs on the destination as {res.dest_id!r} (pid {res.pid}); "
              f"downtime {res.downtime * 1000:.0f} ms, total {res.total_time:.2f} s, "
              f"{res.pages_bytes >> 20} MiB of pages "
              + (f"pulled in {res.pull_time:.2f} s after the restore" if res.lazy else "sent"))
    return 0
