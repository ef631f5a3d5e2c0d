#!/usr/bin/env bash
# Build cnncore's extensions with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch
# copy of the source tree and run the test suite against that build (OpenMP at 2 threads).
#
#   tools/sanitize.sh [pytest arguments...]      # default: the whole suite, -x -q
#
# How it works (to do it by hand):
#   CNNCORE_SANITIZE=address,undefined python setup.py build_ext --inplace   # or pip install -e .
#   LD_PRELOAD=$(gcc -print-file-name=libasan.so) \
#   ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 PYTHONMALLOC=malloc \
#   CNNCORE_NUM_THREADS=2 python -m pytest
# libasan must be loaded before the python executable's own allocations (LD_PRELOAD), since
# python itself is not instrumented; detect_leaks=0 because CPython keeps objects alive at
# exit on purpose (interned strings, module state) and LeakSanitizer would report them all.
# PYTHONMALLOC=malloc routes Python's small objects through malloc so that ASan sees them too.
# The script fails if any sanitizer report appears in the output, even from a subprocess.
set -euo pipefail
[ $# -gt 0 ] || set -- -x -q
src="$(cd "$(dirname "$0")/.." && pwd)"
work="${CNNCORE_SANITIZE_DIR:-$(mktemp -d)}"
cc="${CC:-gcc}"
libasan="$($cc -print-file-name=libasan.so)"
[ -f "$libasan" ] || { echo "sanitize.sh: $cc has no libasan.so" >&2; exit 2; }

if [ -e "$work/.sanitized-build" ]; then  # CNNCORE_SANITIZE_DIR of an earlier run: reuse it
    echo "sanitize.sh: reusing the build in $work"
else
    echo "sanitize.sh: building in $work"
    git -C "$src" ls-files -z | (cd "$src" && xargs -0 cp --parents -t "$work")
    (cd "$work" && CNNCORE_SANITIZE=address,undefined nice -n 19 python setup.py -q build_ext \
        --inplace -j 2 > "$work/build.log" 2>&1) || { tail -50 "$work/build.log"; exit 1; }
    touch "$work/.sanitized-build"
fi

# matplotlib's ft2font throws C++ exceptions that trip ASan's __cxa_throw interceptor
# ("CHECK failed", exit 1, no report) when libasan is preloaded into an uninstrumented
# python: under the sanitizers it is made unimportable, so the tests that need it skip.
mkdir -p "$work/no_matplotlib/matplotlib"
echo 'raise ImportError("matplotlib is disabled under tools/sanitize.sh (its C++ exceptions trip ASan)")' \
    > "$work/no_matplotlib/matplotlib/__init__.py"
pypath="$work/no_matplotlib:$work/src"

log="$work/pytest.log"
where=$(cd "$work" && PYTHONPATH="$work/src" LD_PRELOAD="$libasan" ASAN_OPTIONS=detect_leaks=0 \
    python -c "import cnncore; print(cnncore.__file__)")
case "$where" in "$work"/*) ;; *) echo "sanitize.sh: imports $where, not the build" >&2; exit 2 ;; esac
set +e
(cd "$work" && PYTHONPATH="$pypath" LD_PRELOAD="$libasan" PYTHONMALLOC=malloc \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1" \
    UBSAN_OPTIONS="print_stacktrace=1" CNNCORE_NUM_THREADS=2 OMP_NUM_THREADS=2 \
    nice -n 19 python -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$log")
status=${PIPESTATUS[0]}
set -e
if grep -qE "runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer" "$log"; then
    echo "sanitize.sh: sanitizer reports in $log" >&2
    grep -nE -A5 "runtime error:|ERROR: AddressSanitizer" "$log" | head -60 >&2
    exit 1
fi
echo "sanitize.sh: no sanitizer report (pytest exit status $status; log $log)"
exit "$status"
