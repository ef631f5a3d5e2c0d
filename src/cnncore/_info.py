"""``cnncore.show_config()``: what this build is and how it will run."""

import platform
import sys
from typing import Any, Dict, List, Optional, TextIO, Union

from ._config import get_num_threads
from ._version import __version__


def _blas_info() -> List[str]:
    from threadpoolctl import threadpool_info
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS so threadpoolctl can see it)
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    scipy_libs = [i for i in libs if "/scipy" in (i.get("filepath") or "")] or libs
    return [f"{i.get('internal_api')} {i.get('version')} ({i.get('threading_layer', '?')} "
            f"threading, {i.get('architecture', '?')}, {i.get('filepath')})"
            for i in scipy_libs]


#: What :func:`config` returns: strings, booleans, ints, lists of strings and dicts.
ConfigValue = Union[str, bool, int, List[str], Dict[str, Any]]


def config() -> Dict[str, ConfigValue]:
    """The build and runtime configuration as a dict (what :func:`show_config` prints)."""
    from . import _kernels
    from ._kernels._openmp_helpers import openmp_enabled, openmp_max_threads
    try:
        from . import _build_info as build
        flags: List[str] = list(build.COMPILE_ARGS)
        compiler: str = build.COMPILER
    except ImportError:  # built by a tool that skipped setup.py's build-info step
        flags, compiler = [], "unknown"
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "openmp": bool(openmp_enabled()),
        "openmp_max_threads": int(openmp_max_threads()),
        "default_threads": get_num_threads(),
        "omp_wait_policy": dict(_kernels.WAIT_POLICY),
        "blas": _blas_info(),
        "compiler": compiler,
        "compile_flags": flags,
    }


def _wait_policy_line(policy: Any) -> str:
    if policy["requested"] is None:
        return f"set by {policy['source']}"
    line = (f"{policy['requested']} (CNNCORE_OMP_WAIT_POLICY; OMP_WAIT_POLICY or "
            "GOMP_SPINCOUNT override it)")
    if policy["applied"] is False:
        line += ": NOT applied, the OpenMP runtime was loaded before cnncore"
    return line


def show_config(file: Optional[TextIO] = None) -> None:
    """Print the version, OpenMP on/off, BLAS in use, default thread count and compiler flags."""
    c = config()
    lines = [
        f"cnncore {c['version']} (Python {c['python']}, {c['platform']})",
        f"  OpenMP:          {'on' if c['openmp'] else 'off (serial build)'}"
        + (f", runtime max threads {c['openmp_max_threads']}" if c["openmp"] else ""),
        f"  default threads: {c['default_threads']} (cnncore.set_num_threads / "
        "CNNCORE_NUM_THREADS)",
        "  wait policy:     " + _wait_policy_line(c["omp_wait_policy"]),
        "  BLAS:            " + ("\n                   ".join(_strings(c["blas"]))
                                 or "not found"),
        f"  compiler:        {c['compiler']} {' '.join(_strings(c['compile_flags']))}",
    ]
    print("\n".join(lines), file=file or sys.stdout)


def _strings(value: ConfigValue) -> List[str]:
    return list(value) if isinstance(value, list) else [str(value)]
