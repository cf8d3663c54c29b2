#!/bin/sh
# Run a command as on a cgroup-v2-only host: in a mount namespace of its own where /sys/fs/cgroup is a
# cgroup2 mount, which is how runc and CRIU tell a unified host (nothing changes outside the namespace).
#   scripts/cgroup2-ns.sh .venv/bin/python -m pytest tests/test_restore.py
exec unshare -m sh -c 'mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec "$@"' cgroup2-ns "$@"
