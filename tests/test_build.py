"""The build itself: the serial (no-OpenMP) build, the OpenMP fallback, portable flags.

``test_serial_build_*`` compile the extensions once more, with ``CNNCORE_NO_OPENMP=1``, in
a temporary copy of the source tree (``tests/../src``, ``csrc/``, ``setup.py``; about a
minute on two cores), then import that build in a subprocess: it must say it is serial and
give the same bits as the build under test. They skip when there is no source tree next to
the tests, no C compiler or no Cython/setuptools (e.g. in the compiler-less venv of the
wheel check): ``pip install -e ".[dev]"`` brings the Python side.
"""

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cnncore
from cnncore import functional as F

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
BUILD_TIMEOUT = 900

# Fixed problems compared bit for bit between the two builds:
# (x shape, weight shape, stride, padding, dilation, groups)
CONV_CASES = [
    ((4, 3, 13, 12), (8, 3, 3, 3), 1, 1, 1, 1),
    ((3, 4, 15, 15), (6, 2, 5, 3), 2, (2, 1), 1, 2),
    ((2, 8, 9, 9), (8, 8, 1, 1), 1, 0, 1, 1),
    ((5, 6, 10, 10), (6, 1, 3, 3), 1, "same", 2, 6),  # depthwise: the direct kernel
]


def _problems():
    rng = np.random.default_rng(20240611)
    out = {}
    for dtype in (np.float32, np.float64):
        for i, (xs, ws, s, p, d, g) in enumerate(CONV_CASES):
            x = rng.standard_normal(xs).astype(dtype)
            w = rng.standard_normal(ws).astype(dtype)
            b = rng.standard_normal(ws[0]).astype(dtype)
            kw = dict(stride=s, padding=p, dilation=d, groups=g)
            y = F.conv2d(x, w, b, **kw)
            gy = rng.standard_normal(y.shape).astype(dtype)
            key = f"{np.dtype(dtype).name}_conv{i}"
            out.update({f"{key}_x": x, f"{key}_w": w, f"{key}_b": b, f"{key}_gy": gy})
    return out


def _compute(problems, F):
    """conv2d forward/backward, ReLU and max-pooling on the fixed problems."""
    res = {}
    for dtype in ("float32", "float64"):
        for i, (_, _, s, p, d, g) in enumerate(CONV_CASES):
            key = f"{dtype}_conv{i}"
            x, w, b, gy = (problems[f"{key}_{k}"] for k in ("x", "w", "b", "gy"))
            kw = dict(stride=s, padding=p, dilation=d, groups=g)
            res[f"{key}_y"] = F.conv2d(x, w, b, **kw)
            res[f"{key}_gx"], res[f"{key}_gw"], res[f"{key}_gb"] = F.conv2d_backward(
                gy, x, w, **kw)
            res[f"{key}_relu"] = F.relu(x)
            res[f"{key}_relu_bwd"] = F.relu_backward(x, x)
            res[f"{key}_pool"] = F.max_pool2d(x, 2)
    return res


# The subprocess side: imports the serial build, checks it says so, compares the results.
CHILD = textwrap.dedent("""
    import io, json, os, sys
    import numpy as np
    import cnncore
    from cnncore import functional as F
    from cnncore._kernels import _openmp_helpers
    from cnncore import _build_info
    sys.path.insert(0, os.environ["CNNCORE_TEST_DIR"])
    from test_build import _compute

    buf = io.StringIO()
    cnncore.show_config(file=buf)
    problems = dict(np.load(sys.argv[1]))
    expected = dict(np.load(sys.argv[2]))
    got = _compute(problems, F)
    differ = sorted(k for k in expected if not np.array_equal(got[k], expected[k]))
    max_rel = {k: float(np.abs(got[k] - expected[k]).max() / max(1e-30, np.abs(expected[k]).max()))
               for k in differ}
    print(json.dumps({
        "file": cnncore.__file__,
        "openmp_enabled": bool(_openmp_helpers.openmp_enabled()),
        "config_openmp": cnncore.config()["openmp"],
        "openmp_flags": _build_info.OPENMP_FLAGS,
        "compile_args": _build_info.COMPILE_ARGS,
        "show_config": buf.getvalue(),
        "compared": len(expected),
        "differ": differ,
        "max_rel": max_rel,
    }))
""")


def _skip_reason():
    if not ((ROOT / "setup.py").is_file() and (SRC / "cnncore" / "_kernels").is_dir()
            and (ROOT / "csrc").is_dir()):
        return f"no source tree next to the tests ({SRC})"
    for module in ("Cython", "setuptools"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[dev]')"
    import setuptools
    if int(setuptools.__version__.split(".")[0]) < 77:
        return f"setuptools {setuptools.__version__} < 77 cannot read pyproject.toml"
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or ""
    if not cc.split() or shutil.which(cc.split()[0]) is None:
        return f"no C compiler ({cc or 'CC unset'}) on PATH"
    return None


def _copy_tree(dest):
    generated = shutil.ignore_patterns("*.so", "*.pyd", "*.c", "*.cpp", "*.html", "*.o",
                                       "__pycache__", "*.egg-info", "_build_info.py")
    shutil.copytree(SRC, dest / "src", ignore=generated)
    shutil.copytree(ROOT / "csrc", dest / "csrc",
                    ignore=shutil.ignore_patterns("__pycache__", "*.o"))
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest / name)


def _build_env(**changes):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CNNCORE_NO_OPENMP", "CNNCORE_CYTHON_DEBUG", "CNNCORE_ANNOTATE",
                        "PYTHONPATH")}
    env.update(changes)
    return env


@pytest.fixture(scope="module")
def serial_build(tmp_path_factory):
    """A copy of the source tree with the extensions built in place, without OpenMP."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("serial_build")
    _copy_tree(root)
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace",
           "--parallel", str(max(1, min(4, os.cpu_count() or 1)))]
    proc = subprocess.run(cmd, cwd=root, env=_build_env(CNNCORE_NO_OPENMP="1"),
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"the CNNCORE_NO_OPENMP=1 build failed:\n{log[-6000:]}")
    assert "CNNCORE_NO_OPENMP is set" in log
    assert "-fopenmp" not in log, "a -fopenmp flag reached the serial build"
    return root


@pytest.fixture(scope="module")
def serial_results(serial_build, tmp_path_factory):
    """Run the fixed problems through the build under test here and through the serial
    build in a subprocess; the subprocess's report (see CHILD)."""
    tmp = tmp_path_factory.mktemp("serial_compare")
    problems = _problems()
    expected = _compute(problems, F)  # the build under test (OpenMP on, normally)
    np.savez(tmp / "problems.npz", **problems)
    np.savez(tmp / "expected.npz", **expected)
    script = tmp / "child.py"
    script.write_text(CHILD)
    env = _build_env(PYTHONPATH=str(serial_build / "src"),
                     CNNCORE_TEST_DIR=str(Path(__file__).resolve().parent))
    proc = subprocess.run([sys.executable, str(script), str(tmp / "problems.npz"),
                           str(tmp / "expected.npz")], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["n_expected"] = len(expected)
    return r


def test_serial_build_is_serial_and_matches(serial_build, serial_results):
    r = serial_results
    assert Path(r["file"]).resolve().is_relative_to(serial_build.resolve()), r["file"]
    assert r["openmp_enabled"] is False
    assert r["config_openmp"] is False
    assert r["openmp_flags"] == []
    assert not any("openmp" in flag for flag in r["compile_args"]), r["compile_args"]
    assert "OpenMP:          off" in r["show_config"], r["show_config"]
    assert r["compared"] == r["n_expected"]
    differ = list(r["differ"])
    assert differ == [], (
        f"the serial build differs from the build under test "
        f"(OpenMP {'on' if cnncore.config()['openmp'] else 'off'}) in {differ}; "
        f"max relative differences { {k: r['max_rel'][k] for k in differ} }")


def test_compiler_without_openmp_falls_back(serial_build, tmp_path):
    """A compiler that rejects -fopenmp: setup.py warns and builds serially."""
    root = tmp_path / "tree"
    shutil.copytree(serial_build, root)  # keeps mtimes: cythonize has nothing to redo
    real_cc = shutil.which((os.environ.get("CC") or sysconfig.get_config_var("CC")).split()[0])
    fake = tmp_path / "cc-without-openmp"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        for arg in "$@"; do
            case "$arg" in -fopenmp*) echo "cc: error: unsupported option '$arg'" >&2; exit 1;;
            esac
        done
        exec {real_cc} "$@"
    """))
    fake.chmod(0o755)
    proc = subprocess.run([sys.executable, "setup.py", "--version"], cwd=root,
                          env=_build_env(CC=str(fake)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "does not support OpenMP" in proc.stderr, proc.stderr
    info = (root / "src" / "cnncore" / "_build_info.py").read_text()
    assert "OPENMP_FLAGS = []" in info, info


def test_compile_flags_are_portable():
    """Wheels must run on any CPU of their platform: no -march=native / -mtune=native, and
    (x86-64) no AVX instructions in the compiled kernels, whose baseline is SSE2."""
    try:
        from cnncore import _build_info
        flags = list(_build_info.COMPILE_ARGS)
    except ImportError:
        pytest.skip("cnncore was built without setup.py's build-info step")
    assert not [f for f in flags if f.startswith(("-march", "-mtune", "-mcpu", "/arch"))], flags
    objdump = shutil.which("objdump")
    if (objdump is None or sys.platform == "win32"
            or platform.machine().lower() not in ("x86_64", "amd64")):
        pytest.skip("objdump not available, or not x86-64 Linux/macOS")
    if any(f.startswith(("-march", "-m")) for f in os.environ.get("CFLAGS", "").split()):
        pytest.skip("CFLAGS selects the target CPU: a local build, not a distribution one")
    kernels = sorted(Path(cnncore.__file__).parent.joinpath("_kernels").glob("*.so"))
    assert kernels, "no compiled kernels found"
    # Run-time dispatched clones (gcc target_clones / target("avx2") versions, named
    # foo.avx2.0, foo.arch_x86_64_v3.1, ...) may use AVX: only the ifunc picks them. So may
    # the target("avx2,fma") / target("avx512f") row kernels of csrc/cnncore_conv_rows.h
    # (cnn_cr_row_f_avx2, ..._avx512) and GEMMs of csrc/cnncore_gemm.h (cnn_pgemm_f_avx2,
    # ...) and the LRN tasks of csrc/cnncore_lrn.h, which cnn_cr_isa() picks from the
    # CPU's features.
    clone = re.compile(r"<([^>]*\.(avx|arch_|fma|sse4|default)[^>]*"
                       r"|cnn_(cr|pgemm|lrn)_\w+_avx(2|512)(\.[^>]*)?)>:$")
    for so in kernels:
        asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(so)],
                             capture_output=True, text=True, timeout=120).stdout
        wide, in_clone = [], False
        for line in asm.splitlines():
            if line.endswith(">:"):
                in_clone = bool(clone.search(line))
            elif not in_clone and ("%ymm" in line or "%zmm" in line):
                wide.append(line.strip())
        assert not wide, f"{so.name} uses AVX registers (built for this CPU only?): {wide[:3]}"


def test_version_is_single_sourced():
    """pyproject's dynamic version comes from cnncore/_version.py."""
    try:
        dist = importlib.metadata.distribution("cnncore")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("cnncore is not installed (imported from a source tree)")
    installed = Path(str(dist.locate_file("cnncore"))).resolve()
    if Path(cnncore.__file__).resolve().parent != installed:
        pytest.skip("the cnncore under test is not the installed distribution")
    assert dist.version == cnncore.__version__
