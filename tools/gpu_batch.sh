#!/usr/bin/env bash
# One batch on the lent GPU machine (see ../shared/gpu/README.md): install the carried wheels,
# then run the requested steps, logging each under $OUT. Steps:
#   tests      the tests marked gpu
#   quick      `autooffload calibrate --quick` (wall time logged), then `show`
#   default    `autooffload calibrate` (wall time logged), then `show`
#   quickstart examples/quickstart.py with the profile just measured
#   overhead   benchmarks/overhead.py
#   bench      benchmarks/suite.py and benchmarks/seed_article.py
#   transfer   benchmarks/transfer.py
#   small      tools/small_d2h.py (small device->host copies against cupy.asnumpy, interleaved)
# Usage: bash tools/gpu_batch.sh tests quick overhead      (device tool: carry [".whl"], and the
# C extension built for the machine's Python, e.g. src/autooffload/_native.cpython-312-*.so)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
export AUTOOFFLOAD_CACHE_DIR=${AUTOOFFLOAD_CACHE_DIR:-/tmp/ao-cache}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; python3 -c "import numpy, cupy; print('numpy', numpy.__version__, 'cupy', cupy.__version__)"; } > "$OUT/machine.txt" 2>&1

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, print the wall time and the tail
    local name=$1; shift
    local start=$EPOCHREALTIME
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    awk -v n="$name" -v rc="$rc" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "== %s: rc=%s wall=%.1fs\n", n, rc, b - a }'
    tail -n "${TAIL:-15}" "$OUT/$name.log"
}

for s in "$@"; do
    case $s in
        tests) step tests python3 -m pytest -m gpu -q -p no:cacheprovider -W ignore::DeprecationWarning ;;
        quick) step quick python3 -m autooffload calibrate --quick --output "$OUT/h100-quick.json"
               step show-quick python3 -m autooffload show "$OUT/h100-quick.json" ;;
        default) step default python3 -m autooffload calibrate --output "$OUT/h100.json"
                 step show-default python3 -m autooffload show "$OUT/h100.json" ;;
        quickstart) AUTOOFFLOAD_PROFILE=${AUTOOFFLOAD_PROFILE:-$OUT/h100.json} step quickstart python3 examples/quickstart.py ;;
        overhead) step overhead python3 benchmarks/overhead.py --machine h100 ;;
        bench) step suite python3 benchmarks/suite.py --machine h100
               step seed python3 benchmarks/seed_article.py --machine h100 ;;
        transfer) step transfer python3 benchmarks/transfer.py --machine h100 ;;
        small) TAIL=30 step small python3 tools/small_d2h.py ;;
        *) echo "unknown step $s" ;;
    esac
done
# Results of the benchmarks come back in one file (the device tool returns at most 8).
tar czf "$OUT/results.tgz" benchmarks/results 2>/dev/null || true
