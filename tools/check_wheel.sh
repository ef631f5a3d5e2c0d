#!/usr/bin/env bash
# Install a cnncore wheel the way a user would, on a "fresh machine", and smoke-test it:
#
#   tools/check_wheel.sh WHEEL|DIR        (DIR: the one cnncore-*.whl of the running Python)
#
# - a brand-new virtual environment in a temporary directory;
# - no compiler reachable: PATH holds only the venv's bin/ (CC/CXX point nowhere), and pip
#   may use wheels only (--only-binary=:all:), for cnncore and for numpy/scipy/threadpoolctl;
# - run from an empty directory, with PYTHONPATH unset, so the source tree is not importable
#   (tools/wheel_smoke_test.py asserts that cnncore comes from the venv);
# - tools/wheel_smoke_test.py --no-compiler: conv forward/backward vs the NumPy reference
#   (float32, float64), a few training steps, show_config(); then the README's main job.
# Set CNNCORE_KEEP_VENV=1 to keep the temporary venv (its path is printed), and
# CNNCORE_WHEEL_WITH_TORCH=VERSION to also install that PyTorch and check both libraries in
# one process (each wheel brings its own libgomp).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
t0=$(date +%s)

arg=${1:?usage: tools/check_wheel.sh WHEEL|DIR}
if [[ -d "$arg" ]]; then
    tag=$("$python" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
    shopt -s nullglob
    wheels=("$arg"/cnncore-*-"$tag"-*.whl)
    shopt -u nullglob
    if [[ ${#wheels[@]} -ne 1 ]]; then
        echo "check_wheel.sh: expected one $tag cnncore wheel in $arg, found ${#wheels[@]}" >&2
        exit 2
    fi
    wheel=${wheels[0]}
else
    wheel=$arg
fi
wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
echo "== wheel: $(basename "$wheel") ($(( $(stat -c %s "$wheel") / 1024 )) kB)"

work=$(mktemp -d)
if [[ -n "${CNNCORE_KEEP_VENV:-}" ]]; then
    echo "   (keeping $work)"
else
    trap 'rm -rf "$work"' EXIT
fi
# A venv from the base interpreter (not from whatever venv runs this script).
base=$("$python" -c "import sys; print(getattr(sys, '_base_executable', sys.executable))")
"$base" -m venv "$work/venv"
mkdir -p "$work/run"
cp "$here/wheel_smoke_test.py" "$work/run/"

# The user's shell, minus compilers: only the venv on PATH.
run() {
    (cd "$work/run" && env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP -u VIRTUAL_ENV \
        PATH="$work/venv/bin" CC=/nonexistent/cc CXX=/nonexistent/c++ "$@")
}
echo "== pip install --only-binary=:all: (fresh venv, no compiler on PATH)"
run python -m pip install --quiet --only-binary=:all: "$wheel"
run python -m pip check
run python -m pip list --format=freeze | grep -iE "^(cnncore|numpy|scipy|threadpoolctl)=" \
    | sed 's/^/   /'
smoke_args=(--no-compiler)
if [[ -n "${CNNCORE_WHEEL_WITH_TORCH:-}" ]]; then  # PyTorch's wheel beside ours (CI sets it)
    echo "== pip install torch==${CNNCORE_WHEEL_WITH_TORCH} (for the two-libgomp check)"
    run python -m pip install --quiet --only-binary=:all: "torch==${CNNCORE_WHEEL_WITH_TORCH}"
    smoke_args+=(--with-torch)
fi
echo "== tools/wheel_smoke_test.py ${smoke_args[*]}"
run python wheel_smoke_test.py "${smoke_args[@]}"
echo "== python -m cnncore.examples.conv_relu_pool (the README's main job)"
run python -m cnncore.examples.conv_relu_pool | tail -n 5 | sed 's/^/   /'
echo "== wheel check passed in $(( $(date +%s) - t0 )) s"
