"""Build of the C extension fastckpt._criu (Cython over libcriu).

Metadata lives in pyproject.toml; this file only declares the extension,
located with pkg-config (criu.pc, as installed by scripts/provision.sh).
"""
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        sys.exit("fastckpt: pkg-config is not installed (run `make deps` or scripts/provision.sh)")
    except subprocess.CalledProcessError as e:
        sys.exit(
            "fastckpt: libcriu (criu.pc, CRIU >= 4.1) was not found by pkg-config:\n  "
            + e.stderr.strip()
            + "\nRun `make deps` (scripts/provision.sh builds and installs CRIU), "
            "or set PKG_CONFIG_PATH to the directory holding criu.pc."
        )
    return shlex.split(out)


def criu_extension():
    pkg_config("--atleast-version=4.1", "criu")
    cflags = pkg_config("--cflags", "criu", "libprotobuf-c")
    libs = pkg_config("--libs", "criu")
    libdirs = [f[2:] for f in libs if f.startswith("-L")]
    return Extension(
        "fastckpt._criu",
        sources=["ext/_criu.pyx"],
        depends=["ext/warm.h", "ext/libcriu.pxd", "ext/tar_shim.c"],
        include_dirs=["ext"] + [f[2:] for f in cflags if f.startswith("-I")],
        library_dirs=libdirs,
        runtime_library_dirs=libdirs,
        libraries=[f[2:] for f in libs if f.startswith("-l")],
    )


def build_ext_with_tar_shim():
    """build_ext that also builds ext/tar_shim.c into the executable fastckpt/libexec/tar,
    the `tar` fastckpt gives CRIU (see the file). Linked statically when libz.a allows:
    it starts in a third of the time."""
    from setuptools.command.build_ext import build_ext

    class BuildExt(build_ext):
        def run(self):
            super().run()
            if self.inplace:
                out_dir = os.path.join("src", "fastckpt", "libexec")
            else:
                out_dir = os.path.join(self.build_lib, "fastckpt", "libexec")
            os.makedirs(out_dir, exist_ok=True)
            objects = self.compiler.compile(["ext/tar_shim.c"], output_dir=self.build_temp,
                                            extra_postargs=["-O2", "-Wall"])
            try:
                self.compiler.link_executable(objects, "tar", output_dir=out_dir, libraries=["z"],
                                              extra_postargs=["-static"])
            except Exception:  # no static libz: a dynamic one
                self.compiler.link_executable(objects, "tar", output_dir=out_dir, libraries=["z"])

    return BuildExt


def build_scripts_launcher():
    """build_scripts whose one script, the `fastckpt` command, is ext/launch.c compiled: it blocks
    Ctrl-C, SIGTERM and SIGHUP before it execs this interpreter on fastckpt.cli.run(), so that one
    that comes while Python starts waits for fastckpt to handle it (see the file)."""
    from distutils.command.build_scripts import build_scripts
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

    class BuildScripts(build_scripts):
        def copy_scripts(self):
            self.mkpath(self.build_dir)
            out = os.path.join(self.build_dir, "fastckpt")
            compiler = new_compiler()
            customize_compiler(compiler)
            python = sys.executable.replace("\\", "\\\\").replace('"', '\\"')
            objects = compiler.compile(["ext/launch.c"], output_dir=os.path.join(self.build_dir, ".launch"),
                                       macros=[("FASTCKPT_PYTHON", f'"{python}"')],
                                       extra_postargs=["-O2", "-Wall"])
            try:  # static: it starts in a fraction of a millisecond, before any signal can kill it
                compiler.link_executable(objects, "fastckpt", output_dir=self.build_dir,
                                         extra_postargs=["-static", "-s"])
            except Exception:
                compiler.link_executable(objects, "fastckpt", output_dir=self.build_dir, extra_postargs=["-s"])
            self.rmtree_launch_objects()
            return [out], [out]

        def rmtree_launch_objects(self):
            import shutil

            shutil.rmtree(os.path.join(self.build_dir, ".launch"), ignore_errors=True)

    return BuildScripts


if __name__ == "__main__":
    from Cython.Build import cythonize

    setup(
        ext_modules=cythonize([criu_extension()], include_path=["ext"], language_level=3),
        cffi_modules=["ext/_libc_build.py:ffibuilder"],
        cmdclass={"build_ext": build_ext_with_tar_shim(), "build_scripts": build_scripts_launcher()},
        scripts=["ext/launch.c"],  # built into the `fastckpt` command (build_scripts above)
    )
