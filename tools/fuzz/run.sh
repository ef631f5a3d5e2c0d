#!/usr/bin/env bash
# Run the atheris harnesses of tools/fuzz/, one after the other, at low priority.
#
#   tools/fuzz/run.sh smoke            # CI: each target for a few thousand inputs (~1 min)
#   tools/fuzz/run.sh long [SECONDS]   # each target up to 10^6 inputs or SECONDS (default 3600)
#   tools/fuzz/run.sh TARGET [libFuzzer options...]   # one target (idx, load, unpickle, cifar)
#
# Corpora grow in tools/fuzz/corpus/<target> (seeded by the harness on first use; not in git);
# a crashing input is written to $FUZZ_ARTIFACTS (default: a temporary directory) and the
# script exits non-zero. Needs `pip install atheris`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
artifacts="${FUZZ_ARTIFACTS:-$(mktemp -d)}/"
targets=(idx unpickle cifar load)

run() {  # target, libFuzzer options...
    local target=$1
    shift
    echo "== fuzz_$target $*"
    set +e
    nice -n 19 python "$here/fuzz_$target.py" -artifact_prefix="$artifacts" -timeout=20 \
        -print_final_stats=1 "$@" 2>&1 | grep -E "^(INFO: instrumented|Done|stat::number_of_executed_units|stat::peak_rss)|Uncaught|Error|ERROR|Traceback|  File "
    local rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

case "${1:-smoke}" in
    smoke)
        for t in "${targets[@]}"; do
            if [ "$t" = load ]; then run "$t" -runs=3000 -max_total_time=60; else run "$t" -runs=20000 -max_total_time=30; fi
        done ;;
    long)
        for t in "${targets[@]}"; do run "$t" -runs=1000000 -max_total_time="${2:-3600}"; done ;;
    *)
        run "$@" ;;
esac
