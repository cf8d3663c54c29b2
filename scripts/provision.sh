#!/usr/bin/env bash
# Provision a machine for fastckpt: Debian packages, CRIU >= 4.1 (built from
# Debian's own source tarball when the installed one is too old or broken),
# and a virtualenv with fastckpt installed.  Idempotent and cached: a second
# run only checks and returns.
#
#   scripts/provision.sh            everything
#   scripts/provision.sh system     packages + CRIU only
#   scripts/provision.sh venv       the virtualenv only
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${FASTCKPT_CACHE:-/var/cache/fastckpt}
PREFIX=${FASTCKPT_PREFIX:-/usr/local}
VENV=${FASTCKPT_VENV:-$ROOT/.venv}
CRIU_MIN=4.1
# Debian suites tried in order for CRIU's source tarball.
CRIU_SUITES=${FASTCKPT_CRIU_SUITES:-"sid trixie"}

step() { STEP=$1; echo "provision: $1" >&2; }
fail() { echo "provision: FAILED at step '$STEP': $*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || echo "provision: FAILED at step '"'"'${STEP:-start}'"'"' (exit $rc)" >&2' EXIT

[ "$(id -u)" -eq 0 ] || { STEP=check-root; fail "must run as root (installs packages and CRIU)"; }

APT_PACKAGES=(
  # CRIU's build dependencies, as Debian 12 names them
  build-essential pkgconf libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev
  libnl-3-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev
  python3-protobuf xz-utils
  # runtime: containers, their network lock, and the demo rootfs
  runc busybox-static iptables nftables iproute2
  # podman (its conmon; runc is its runtime here): archives both ways in the tests
  podman
  # the virtualenv
  python3-venv
  # musl-gcc: the iptables tools fastckpt gives CRIU (ext/xtables_shim.c), static with musl, start without
  # glibc's start-up CPU probe (~0.3 ms of cpuid instructions, each trapping to the hypervisor in a VM)
  musl-tools
)

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

criu_ok() {
  # $1: criu binary.  True when it is >= CRIU_MIN and `criu check` passes.
  local bin=$1 v
  [ -x "$bin" ] || return 1
  v=$("$bin" --version 2>/dev/null | awk '/^Version:/{print $2}')
  [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" || return 1
  "$bin" check >/dev/null 2>&1 || return 1
  return 0
}

libcriu_ok() {
  PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH} \
    pkg-config --atleast-version="$CRIU_MIN" criu 2>/dev/null
}

install_packages() {
  step apt-packages
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "provision: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || fail "apt-get install ${missing[*]}"
}

debian_mirror() {
  # The machine's own Debian mirror, read from its apt configuration.
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ]; then
    uri=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | grep -v security | awk '{for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' | head -n1)
  fi
  [ -n "$uri" ] || fail "no Debian mirror found in the apt configuration"
  echo "$uri"
}

fetch_criu_source() {
  # Leaves the path of an unpacked CRIU source tree on stdout.
  step criu-source
  local dl=$CACHE/download mirror suite tarball
  mkdir -p "$dl"
  tarball=$(ls "$dl"/criu_*.orig.tar.xz 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$tarball" ]; then
    mirror=$(debian_mirror)
    for suite in $CRIU_SUITES; do
      rm -rf "$dl/lists"; mkdir -p "$dl/lists/partial"
      echo "deb-src $mirror $suite main" > "$dl/sources.list"
      local aptopts=(-o "Dir::Etc::SourceList=$dl/sources.list" -o Dir::Etc::SourceParts=/dev/null
                     -o "Dir::State::Lists=$dl/lists" -o APT::Sandbox::User=root)
      apt-get "${aptopts[@]}" update -qq >&2 || continue
      # The .debian.tar.xz may 404: only the orig tarball matters, so ignore the exit code.
      (cd "$dl" && apt-get "${aptopts[@]}" source --download-only criu >&2) || true
      tarball=$(ls "$dl"/criu_*.orig.tar.xz 2>/dev/null | sort -V | tail -n1 || true)
      [ -n "$tarball" ] && break
    done
    [ -n "$tarball" ] || fail "could not download CRIU's source tarball (suites: $CRIU_SUITES)"
    # Check the tarball against the checksum in the .dsc when that came too.
    local dsc sum
    dsc=$(ls "$dl"/criu_*.dsc 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$dsc" ]; then
      sum=$(awk -v f="$(basename "$tarball")" '/^Checksums-Sha256:/{s=1;next} s&&/^ /&&$3==f{print $1;exit}' "$dsc")
      if [ -n "$sum" ] && [ "$(sha256sum "$tarball" | cut -d' ' -f1)" != "$sum" ]; then
        rm -f "$tarball"; fail "checksum mismatch for $(basename "$tarball")"
      fi
    fi
  fi
  local ver src
  ver=$(basename "$tarball" | sed -E 's/^criu_(.*)\.orig\.tar\.xz$/\1/')
  src=$CACHE/criu-$ver
  if [ ! -f "$src/Makefile" ]; then
    rm -rf "$src.tmp"; mkdir -p "$src.tmp"
    tar -xJf "$tarball" -C "$src.tmp" --strip-components=1 || fail "unpack $tarball"
    rm -rf "$src"; mv "$src.tmp" "$src"
  fi
  echo "$src"
}

build_criu() {
  local src=$1
  step criu-build
  if [ ! -x "$src/criu/criu" ] || [ ! -f "$src/lib/c/libcriu.so" ] || [ ! -f "$src/.fastckpt-built" ]; then
    echo "provision: building CRIU in $src (about a minute)" >&2
    make -C "$src" -j"$(nproc)" criu lib >"$src/build.log" 2>&1 \
      || { tail -n 30 "$src/build.log" >&2; fail "make criu lib (log: $src/build.log)"; }
    touch "$src/.fastckpt-built"
  fi
  step criu-install
  make -C "$src" install-criu install-lib PREFIX="$PREFIX" LIBDIR="$PREFIX/lib" \
       SKIP_PIP_INSTALL=1 >"$src/install.log" 2>&1 \
    || { tail -n 30 "$src/install.log" >&2; fail "make install-criu install-lib (log: $src/install.log)"; }
  ldconfig
  ln -sfn "$src" "$CACHE/criu-src"
}

criu_source_ok() {
  # What fastckpt's build reads from CRIU's source: its image schemas and magic numbers (setup.py
  # generates fastckpt/_proto from them), and pycriu for the benchmarks.
  compgen -G "$CACHE/criu-src/images/*.proto" >/dev/null && [ -f "$CACHE/criu-src/criu/include/magic.h" ] \
    && [ -e "$CACHE/criu-src/lib/pycriu" ]
}

ensure_criu_source() {
  # A good CRIU may be installed already (by a package, or by an earlier run whose source cache was
  # removed): its source is still needed, unpacked, not built. Debian's newest tarball may be a newer
  # CRIU than the installed one; its schemas read the older images too (CRIU only adds optional fields).
  criu_source_ok && return 0
  local src
  src=$(fetch_criu_source)
  ln -sfn "$src" "$CACHE/criu-src"
  criu_source_ok || fail "CRIU's source in $src lacks images/*.proto, criu/include/magic.h or lib/pycriu"
}

provision_criu() {
  step criu-check
  local path_criu
  path_criu=$(command -v criu || true)
  if [ -n "$path_criu" ] && criu_ok "$path_criu" && libcriu_ok; then
    ensure_criu_source
    return 0
  fi
  local src
  src=$(fetch_criu_source)
  build_criu "$src"
  step criu-verify
  hash -r
  path_criu=$(command -v criu || true)
  [ -n "$path_criu" ] || fail "criu is not on PATH after install (PATH=$PATH)"
  criu_ok "$path_criu" || fail "$path_criu is not CRIU >= $CRIU_MIN or 'criu check' fails: $("$path_criu" check 2>&1 | tail -n3)"
  libcriu_ok || fail "pkg-config does not find criu >= $CRIU_MIN"
  echo "provision: $("$path_criu" --version | head -n1) at $path_criu" >&2
}

venv_install() {
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check --retries 1)
  "${pip[@]}" --upgrade pip setuptools wheel "cython>=3" "cffi>=1.15" || return 1
  FASTCKPT_CRIU_SRC=$CACHE/criu-src "${pip[@]}" --no-build-isolation -e "$ROOT[test]"
}

provision_venv() {
  step venv
  local py=${PYTHON:-python3}
  if [ ! -x "$VENV/bin/python" ]; then
    "$py" -m venv "$VENV" || fail "$py -m venv $VENV"
  fi
  local stamp=$VENV/.fastckpt-stamp want
  # Reinstall when the package's build inputs or the CRIU it links against change.
  # (and fastckpt/_proto, generated from CRIU's image schemas and magic.h)
  want=$( { cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT"/ext/*.pyx "$ROOT"/ext/*.pxd "$ROOT"/ext/*.h "$ROOT"/ext/tar_shim.c "$ROOT"/ext/xtables_shim.c "$ROOT"/ext/launch.c "$ROOT"/ext/*.py \
              "$CACHE"/criu-src/images/*.proto "$CACHE/criu-src/criu/include/magic.h"; \
            pkg-config --modversion criu 2>/dev/null; } | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c 'import fastckpt._criu' 2>/dev/null \
     && [ -x "$ROOT/src/fastckpt/libexec/tar" ] && [ -x "$ROOT/src/fastckpt/libexec/xtables/iptables-save" ] && [ -f "$ROOT/src/fastckpt/_proto/criu.binpb" ] \
     && [ -f "$ROOT/src/fastckpt/_proto/magic.py" ]; then
    return 0
  fi
  step venv-install
  if ! venv_install; then
    # Offline, the index may lack a dependency of the newest releases it has (seen: pytest-benchmark
    # 5.3 needs py-cpuinfo2). The interpreter's own installed packages can stand in: a venv that sees them.
    echo "provision: retrying with the interpreter's own packages visible (--system-site-packages)" >&2
    rm -rf "$VENV"
    "$py" -m venv --system-site-packages "$VENV" || fail "$py -m venv --system-site-packages $VENV"
    venv_install || fail "pip install (build tools, then -e .[test]); see pip's messages above"
  fi
  # pycriu (CRIU's own Python binding, same source) for the side-by-side benchmarks.
  if [ -d "$CACHE/criu-src/lib/pycriu" ]; then
    make -C "$CACHE/criu-src" lib/pycriu/rpc_pb2.py lib/pycriu/images/images.py >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
      "$CACHE/criu-src/lib" >/dev/null 2>&1 || echo "provision: pycriu not installed (benchmarks skip it)" >&2
  fi
  echo "$want" > "$stamp"
}

compile_bytecode() {
  # This environment may set PYTHONDONTWRITEBYTECODE: without .pyc files every
  # start of the CLI compiles its sources again (~30 ms).  Cheap when current.
  step bytecode
  "$VENV/bin/python" -m compileall -q "$ROOT/src/fastckpt" >/dev/null || fail "compileall"
}

coverage_hook() {
  # make test measures the `fastckpt` processes the tests start too: coverage.py starts in every Python
  # process that inherits COVERAGE_PROCESS_CONFIG, and the process writes its data beside COVERAGE_FILE when
  # it ends. This .pth, read just before coverage.py's own (a1_coverage.pth, which then has nothing left to
  # do), starts it itself, with two changes that keep the process saying what it says unmeasured:
  # - a process that cannot write there (a test's uid 65534; a read-only mount) is not measured: coverage
  #   would end it with its traceback ("Couldn't use data file");
  # - os._exit (the CLI's end) ignores SIGINT, SIGTERM, SIGHUP and SIGQUIT while coverage saves its data,
  #   as an unmeasured os._exit cannot be interrupted: a Ctrl-C then would end the CLI in a traceback.
  # Inert without COVERAGE_PROCESS_CONFIG.
  step coverage-hook
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || fail "venv site-packages"
  cat > "$site/a0_fastckpt_coverage.pth.tmp" <<'PTH'
import os; exec("def _fastckpt_coverage():\n    d = os.environ.get('COVERAGE_FILE')\n    if d and not os.access(os.path.dirname(d) or '.', os.W_OK, effective_ids=os.access in os.supports_effective_ids):\n        del os.environ['COVERAGE_PROCESS_CONFIG'], os.environ['COVERAGE_FILE']\n        return\n    try:\n        import coverage\n    except ImportError:\n        return\n    if coverage.process_startup() is None:\n        return\n    import signal\n    save_and_exit = os._exit\n    def _exit(code):\n        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):\n            try:\n                signal.signal(s, signal.SIG_IGN)\n            except (ValueError, OSError):\n                pass\n        save_and_exit(code)\n    os._exit = _exit\nif os.environ.get('COVERAGE_PROCESS_CONFIG'):\n    _fastckpt_coverage()\ndel _fastckpt_coverage")
PTH
  mv "$site/a0_fastckpt_coverage.pth.tmp" "$site/a0_fastckpt_coverage.pth"
}

what=${1:-all}
case "$what" in
  system) install_packages; provision_criu ;;
  venv) provision_venv; coverage_hook; compile_bytecode ;;
  all) install_packages; provision_criu; provision_venv; coverage_hook; compile_bytecode ;;
  *) echo "usage: $0 [all|system|venv]" >&2; exit 2 ;;
esac
STEP=done
