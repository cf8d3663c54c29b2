#!/bin/sh
# Run a command as on a cgroup-v2-only host: in a mount namespace of its own where /sys/fs/cgroup is a
# cgroup2 mount, which is how runc and CRIU tell a unified host (nothing changes outside the namespace).
#   scripts/cgroup2-ns.sh .venv/bin/python -m pytest tests/test_restore.py
#
# The host's v1 hierarchies stay, unseen in the namespace, and the command's processes (and the
# containers they start) are members of them where this shell is: a task at a v1 root has CRIU's dump
# record every cgroup directory of the host below it, and the restore (runc's default cgroup mode,
# "soft") makes them all again: other suites' containers removed meanwhile came back, empty (1,400 of
# them under load). So the command runs in v1 cgroups of its own (fastckpt-ns-PID below this shell's, in
# every v1 hierarchy), removed afterwards; none is made on a host that has no v1 hierarchy.
own="fastckpt-ns-$$"
made=$(awk -v own="$own" '
    FILENAME == "/proc/self/cgroup" { split($0, f, ":"); if (f[2] != "") path[f[2]] = f[3]; next }
    $3 == "cgroup" {
        n = split($4, opts, ","); delete have
        for (i = 1; i <= n; i++) have[opts[i]] = 1
        for (c in path) {
            m = split(c, ctrls, ","); ok = 1
            for (i = 1; i <= m; i++) if (!(ctrls[i] in have)) ok = 0
            if (ok) { p = path[c]; sub("/$", "", p); print $2 p }
        }
    }' /proc/self/cgroup /proc/mounts | sort -u)
for parent in $made; do
    d="$parent/$own"
    mkdir "$d" 2>/dev/null || continue
    for f in cpuset.cpus cpuset.mems; do
        [ -f "$d/$f" ] && cat "$parent/$f" > "$d/$f"
    done
    echo $$ > "$d/cgroup.procs" 2>/dev/null || true
done
unshare -m sh -c 'mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec "$@"' cgroup2-ns "$@"
rc=$?
for parent in $made; do
    [ -d "$parent/$own" ] || continue
    echo $$ > "$parent/cgroup.procs" 2>/dev/null || true
    rmdir "$parent/$own" 2>/dev/null || echo "cgroup2-ns.sh: $parent/$own is not empty: left" >&2
done
exit $rc
