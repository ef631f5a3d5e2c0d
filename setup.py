"""Build the Cython/OpenMP extensions of cnncore.

Environment switches:
- ``CNNCORE_NO_OPENMP=1``: build serially (no -fopenmp) even if the compiler supports it.
- ``CNNCORE_CYTHON_DEBUG=1``: turn bounds/wraparound/initialisation checks back on.
- ``CNNCORE_ANNOTATE=1``: write Cython's annotated HTML next to each .pyx.
- ``CNNCORE_SANITIZE=address,undefined``: build with ``-fsanitize=...`` (and frame pointers)
  for ASan/UBSan runs; see tools/sanitize.sh for running the tests under it.

Compiler flags are portable (``-O3 -fno-math-errno``, never ``-march=native``), so a wheel runs on any CPU
of its platform. OpenMP, as in scikit-learn: ``-fopenmp`` for gcc and clang (checked by
compiling and running a test program), ``/openmp`` for MSVC; Apple clang gets it from the
environment (``CPPFLAGS="-Xpreprocessor -fopenmp"``, ``LDFLAGS="... -lomp"``: see the
cibuildwheel settings in pyproject.toml and "Installing cnncore" in README.md).
"""
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent.resolve()
KERNELS = ["_openmp_helpers", "_blas", "conv", "conv_direct", "conv_rows", "winograd", "pool",
           "activations", "dense", "_memory", "norm", "optim", "lrn", "conv_dense", "reduce"]
# -fno-math-errno: sqrt() and friends need not set errno (nothing here reads it), so their
# loops vectorise (the LRN kernel's square roots ran scalar, 3-4x slower, without it).
OPT_FLAGS = ["-O3", "-fno-math-errno"]


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _compiler():
    return os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"


def _openmp_flags():
    """Compile and run a tiny OpenMP program; return the flags if it works, else []."""
    if _flag("CNNCORE_NO_OPENMP"):
        print("cnncore: CNNCORE_NO_OPENMP is set: building without OpenMP (serial kernels)")
        return []
    if sys.platform == "win32":
        return ["/openmp"]
    flags = ["-fopenmp"]
    if sys.platform == "darwin" and "openmp" in os.environ.get("CPPFLAGS", ""):
        # Apple clang rejects -fopenmp; CPPFLAGS/LDFLAGS enable it and link libomp.
        flags = []
    code = textwrap.dedent("""
        #include <omp.h>
        #include <stdio.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            printf("%d", n > 0);
            return 0;
        }
    """)
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp, "omp.c"), Path(tmp, "omp")
        src.write_text(code)
        try:
            # The compiler as setuptools will call it: $CC may be "ccache gcc", and
            # CPPFLAGS/CFLAGS/LDFLAGS from the environment are added to every compile.
            env_flags = [f for var in ("CPPFLAGS", "CFLAGS", "LDFLAGS")
                         for f in shlex.split(os.environ.get(var, ""))]
            subprocess.run([*shlex.split(_compiler()), *flags, str(src), "-o", str(exe),
                            *env_flags], check=True, capture_output=True, timeout=120)
            ok = subprocess.run([str(exe)], capture_output=True, text=True,
                                timeout=60).stdout == "1"
        except (OSError, subprocess.SubprocessError):
            ok = False
    if not ok:
        warnings.warn("cnncore: the C compiler does not support OpenMP; building the kernels "
                      "serially (correct, but single-threaded)")
        return []
    return flags


def _write_build_info(openmp_flags, compile_args):
    info = HERE / "src" / "cnncore" / "_build_info.py"
    info.write_text(
        '"""Written by setup.py at build time."""\n'
        f"OPENMP_FLAGS = {openmp_flags!r}\n"
        f"COMPILE_ARGS = {compile_args!r}\n"
        f"COMPILER = {_compiler()!r}\n"
    )


def extensions():
    omp = _openmp_flags()
    # MSVC: /std:c11 for the C99/C11 the helpers in csrc/ use (restrict, _Pragma).
    compile_args = OPT_FLAGS + omp if sys.platform != "win32" else ["/O2", "/std:c11"] + omp
    link_args = omp if sys.platform != "win32" else []
    sanitize = os.environ.get("CNNCORE_SANITIZE", "").strip()
    if sanitize:
        flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
        compile_args, link_args = compile_args + flags, link_args + flags[:1]
    _write_build_info(omp, compile_args)
    exts = [
        Extension(
            f"cnncore._kernels.{name}",
            [f"src/cnncore/_kernels/{name}.pyx"],
            depends=sorted(str(h) for h in Path("csrc").glob("*.h")),  # rebuild on C edits
            include_dirs=[np.get_include(), "csrc"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            # NumPy's data-allocator API (PyDataMem_SetHandler, used by _memory) is 1.22+.
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION"),
                           ("NPY_TARGET_VERSION", "NPY_1_22_API_VERSION")],
        )
        for name in KERNELS
    ]
    debug = _flag("CNNCORE_CYTHON_DEBUG")
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": not debug,
        "embedsignature": True,
    }
    return cythonize(exts, compiler_directives=directives, annotate=_flag("CNNCORE_ANNOTATE"),
                     include_path=["src"])


setup(ext_modules=extensions())
