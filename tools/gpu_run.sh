#!/usr/bin/env bash
# One call on the lent GPU machine (see ../shared/gpu/README.md): build the C extensions for its
# Python, install the carried wheels, then the steps named (tests, overhead, suite-quick, suite,
# seed, transfer, stream-tests, streaming, decisions, calibrate, calibrate-quick, suite-profile (the profile calibrate just made),
# suite-shipped (the shipped profile of $MACHINE), suite-noprofile (no profile matched: the probe); issue 14:
# transfer-tuned (transfer.py with the copy tuning of the profile calibrate or calibrate-quick made), diag (tools/transfer_diag.py),
# transfer-tests; streaming-unpinned (pinning on reuse off); pinned-results, streaming-pinned, streaming-register: the copy engine's kept results pinned
# on reuse, and chunks pinned in place, against the profile's tuning); issue 12 diagnostics: diag-decisions, gaps-sparse
# (tools/gpu_gaps.py 4 with no profile), diag-noprofile (the no-profile suite's worst rows, every decision logged);
# focus (suite rows FUNCTIONS to MAX_N, both profiles);
# device-path (tools/profile_device_path.py: the overhead rows on device data, floors and cProfile); timeline (tools/stream_timeline.py: a streamed call's CUDA events against the no-wait pipeline), staged-probe
# (tools/staged_probe.py: a first copy's halves alone and under each other), gaps-result (tools/gpu_gaps.py 5);
# each logged under $OUT/<step>.log with its wall time. $OUT returns at most 8 files: tar the logs when a run makes more.
#   once per checkout: bash tools/prepare_wheels.sh (the .whl folder, dask's wheels included)
#   device tool: command "bash tools/gpu_run.sh tests overhead", carry [".whl"]
#   checking a session's changes in one call (~520 s): BUDGET=100 MAX_N=1e8 bash tools/gpu_run.sh tests overhead three-way suite-shipped suite-noprofile
#   the copy engine and streaming (~480 s): BUDGET=120 MIN_BYTES=16MiB bash tools/gpu_run.sh tests transfer streaming suite-shipped
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
MACHINE=${MACHINE:-h200}
mkdir -p "$OUT"
python3 setup.py build_ext --inplace -q > "$OUT/build.log" 2>&1 || tail -5 "$OUT/build.log"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
export AUTOOFFLOAD_CACHE_DIR=${AUTOOFFLOAD_CACHE_DIR:-/tmp/ao-cache}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc;
  python3 -c "import numpy, cupy; print('numpy', numpy.__version__, 'cupy', cupy.__version__)"; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
step() {  # step NAME COMMAND...
    local name=$1; shift
    local start=$EPOCHREALTIME
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    awk -v n="$name" -v rc="$rc" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "== %s: rc=%s wall=%.1fs\n", n, rc, b - a }'
    tail -n "${TAIL:-6}" "$OUT/$name.log"
}
for s in "$@"; do
    case $s in
        tests) TAIL=25 step tests python3 -m pytest -m gpu -q -p no:cacheprovider -W ignore::DeprecationWarning ;;
        overhead) step overhead python3 benchmarks/overhead.py --machine "$MACHINE" ;;
        suite-quick) AUTOOFFLOAD_LOG="$OUT/suite-decisions.jsonl" step suite-quick python3 benchmarks/suite.py --quick --machine "$MACHINE-quick" ;;
        suite) step suite python3 benchmarks/suite.py --machine "$MACHINE" ;;
        seed) step seed python3 benchmarks/seed_article.py --machine "$MACHINE" --budget-s "${BUDGET:-200}" ;;
        three-way) TAIL=30 step three-way python3 tools/three_way.py --max-elements "${MAX_N:-1e8}" ;;
        stream-tests) TAIL=20 step stream-tests python3 -m pytest -m gpu -q -p no:cacheprovider -s tests/test_stream_gpu.py ;;
        streaming) TAIL=30 step streaming python3 benchmarks/streaming.py --machine "$MACHINE" --budget-s "${BUDGET:-100}" --chunks "${CHUNKS:-32e6,128e6,256e6}" ;;
        transfer) step transfer python3 benchmarks/transfer.py --machine "$MACHINE" --min-bytes "${MIN_BYTES:-4KiB}" --max-bytes "${MAX_BYTES:-4GiB}" ;;
        decisions) step decisions sh -c "python3 tools/decision_table.py > $OUT/decision-table.jsonl" ;;
        calibrate) step calibrate python3 -m autooffload calibrate --output "$OUT/$MACHINE.json"
                   step show python3 -m autooffload show "$OUT/$MACHINE.json" ;;
        calibrate-quick) step calibrate-quick python3 -m autooffload calibrate --quick --output "$OUT/$MACHINE-quick.json"
                         step show-quick python3 -m autooffload show "$OUT/$MACHINE-quick.json" ;;
        transfer-tuned) tuned="$OUT/$MACHINE.json"; [ -f "$tuned" ] || tuned="$OUT/$MACHINE-quick.json"
                        AUTOOFFLOAD_PROFILE="$tuned" step transfer-tuned python3 benchmarks/transfer.py --machine "$MACHINE" --min-bytes "${MIN_BYTES:-4KiB}" ;;
        transfer-tune) step transfer-tune python3 benchmarks/transfer.py --machine "$MACHINE-tune" --min-bytes "${MIN_BYTES:-4KiB}" --tune "$TUNE" ;;  # the profile's tuning with $TUNE over it
        diag) step diag timeout "${DIAG_S:-90}" python3 tools/transfer_diag.py --out "$OUT/transfer-diag.json" ;;
        probe-test) TAIL=25 step probe-test python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_probe_gpu.py ;;
        transfer-tests) TAIL=15 step transfer-tests python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_transfer_gpu.py ;;
        suite-profile) AUTOOFFLOAD_PROFILE="$OUT/$MACHINE.json" step suite-profile python3 benchmarks/suite.py --machine "$MACHINE" --budget-s "${BUDGET:-150}" ;;
        suite-shipped) AUTOOFFLOAD_PROFILE="$PWD/src/autooffload/_profiles/shipped/$MACHINE.json" AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-shipped \
                       step suite-shipped python3 benchmarks/suite.py --machine "$MACHINE" --budget-s "${BUDGET:-150}" ;;
        suite-noprofile) AUTOOFFLOAD_SHIPPED=0 AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-noprofile step suite-noprofile python3 benchmarks/suite.py --machine "$MACHINE-noprofile" --budget-s "${BUDGET:-150}" ;;
        diag-decisions) # every decision of the suite's worst rows and of three_way, logged, with the histories they left
                        AUTOOFFLOAD_LOG="$OUT/suite-decisions.jsonl" AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-diag \
                        step diag-suite python3 benchmarks/suite.py --machine "$MACHINE-diag" --budget-s "${BUDGET:-60}" \
                            --functions "${FUNCTIONS:-normal_eqs,bessel_i0,percentiles,min_var_weights,pairwise_dist,rolling_vol}" --max-elements "${MAX_N:-1e7}"
                        AUTOOFFLOAD_LOG="$OUT/three-way-decisions.jsonl" AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-diag-tw \
                        step diag-three-way python3 tools/three_way.py --max-elements "${MAX_N:-1e7}"
                        TAIL=3 step gaps python3 tools/gpu_gaps.py 2
                        tar czf "$OUT/diag-histories.tgz" /tmp/ao-cache-diag /tmp/ao-cache-diag-tw 2>/dev/null ;;
        gaps-sparse) # issue 12: is an exploring GPU call (between NumPy calls) slower than back to back? No profile, fresh history.
                     AUTOOFFLOAD_SHIPPED=0 AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-sparse TAIL=12 step gaps-sparse python3 tools/gpu_gaps.py 4 ;;
        diag-noprofile) # issue 12: every decision of the no-profile suite's worst rows, logged
                        AUTOOFFLOAD_SHIPPED=0 AUTOOFFLOAD_LOG="$OUT/noprofile-decisions.jsonl" AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-diag-np \
                        step diag-noprofile python3 benchmarks/suite.py --machine "$MACHINE-diag-noprofile" --budget-s "${BUDGET:-60}" \
                            --functions "${FUNCTIONS:-fft_convolve,var_es_sort,panel_recur,asian_mc,black_scholes}" --max-elements "${MAX_N:-1e6}" ;;
        focus) # issue 12: the suite's named rows up to MAX_N, shipped profile and none (FUNCTIONS, BUDGET per run)
               AUTOOFFLOAD_PROFILE="$PWD/src/autooffload/_profiles/shipped/$MACHINE.json" AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-focus \
               TAIL=30 step focus-shipped python3 benchmarks/suite.py --machine "$MACHINE-focus" --budget-s "${BUDGET:-80}" \
                   --functions "${FUNCTIONS:-column_disp,panel_recur}" --max-elements "${MAX_N:-1e7}"
               cp -r benchmarks/results/$MACHINE-focus "$OUT/focus-shipped" 2>/dev/null
               AUTOOFFLOAD_SHIPPED=0 AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-focus-np \
               TAIL=30 step focus-noprofile python3 benchmarks/suite.py --machine "$MACHINE-focus-noprofile" --budget-s "${BUDGET:-80}" \
                   --functions "${FUNCTIONS:-column_disp,panel_recur}" --max-elements "${MAX_N:-1e7}"
               cp -r benchmarks/results/$MACHINE-focus-noprofile "$OUT/focus-noprofile" 2>/dev/null ;;
        state-probe) TAIL=40 step state-probe python3 tools/suite_state_probe.py ;;  # issue 12: small device calls in a fresh process and after the suite's other functions
        device-path) TAIL=80 step device-path python3 tools/profile_device_path.py ;;
        pieces) TAIL=12 step pieces python3 tools/transfer_diag.py --pieces --out "$OUT/transfer-pieces.json" ;;
        both-ways) TAIL=6 step both-ways python3 tools/transfer_diag.py --both-ways --out "$OUT/transfer-both-ways.json" ;;
        streaming-unpinned) # the engine before the pin-down cache: nothing pinned on reuse (the A/B of _pincache.py)
                            TAIL=30 step streaming-unpinned python3 benchmarks/streaming.py --machine "$MACHINE-unpinned" --budget-s "${BUDGET:-100}" \
                                --knobs pin_reused_min=0,pin_results_min=0 ;;
        streaming-pinned) TAIL=30 step streaming-pinned python3 benchmarks/streaming.py --machine "$MACHINE-pinned" --budget-s "${BUDGET:-100}" --knobs pin_results_min=1 ;;
        streaming-register) TAIL=30 step streaming-register python3 benchmarks/streaming.py --machine "$MACHINE-register" --budget-s "${BUDGET:-100}" \
                            --knobs h2d_register_min=1,d2h_register_min=1,register_chunk_bytes=33554432 ;;
        pinned-results) TAIL=6 step pinned-results python3 tools/transfer_diag.py --pinned-results --out "$OUT/transfer-pinned-results.json" ;;
        suite-some) AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-some step suite-some python3 benchmarks/suite.py --machine "$MACHINE-some" \
                        --budget-s "${BUDGET:-60}" --functions "${FUNCTIONS:-normal_eqs,bessel_i0,min_var_weights,pairwise_dist}" --max-elements "${MAX_N:-1e7}" ;;
        timeline) # issue 15: where a streamed call's time goes, against the same pipeline issued with no host waits
                  TAIL=60 step timeline python3 tools/stream_timeline.py --n "${TIMELINE_N:-1e8}" --out "$OUT/stream-timeline.json" ;;
        stream-setup) TAIL=14 step stream-setup python3 tools/stream_setup.py ;;  # issue 15: a streamed call's steps before its first copy and after its last
        diag-rows) # issue 12: the shipped-profile suite's rows above 1.5 in session 8, every decision logged
                   AUTOOFFLOAD_LOG="$OUT/rows-decisions.jsonl" AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-rows \
                   step diag-rows python3 benchmarks/suite.py --machine "$MACHINE-rows" --budget-s "${BUDGET:-60}" \
                       --functions "${FUNCTIONS:-panel_recur,bessel_i0,normal_eqs}" --max-elements "${MAX_N:-1e6}" --no-plot ;;
        staged-probe) # issue 14: a staged first copy's host copy and DMA, alone, together, and each under the other
                      TAIL=12 step staged-probe python3 tools/staged_probe.py ;;
        gaps-parts) # issue 12: the small-call device path by variant (bessel at 1e2-1e4, x*2+1), driver primitives, cProfile
                    TAIL=12 step gaps-parts python3 tools/gpu_gaps.py 3 ;;
        suite-knobs) # the suite's $FUNCTIONS on the shipped profile with the copy knobs $KNOBS (k=v,k=v; bytes as integers) over its tuning
                     python3 -c "import json, sys; p = json.load(open(sys.argv[1])); k = p['backends']['cupy']['copy_tuning']['knobs']
k.update({a: int(b) for a, b in (kv.split('=') for kv in sys.argv[2].split(','))}); json.dump(p, open(sys.argv[3], 'w'))" \
                         "src/autooffload/_profiles/shipped/$MACHINE.json" "$KNOBS" /tmp/knobs-profile.json
                     AUTOOFFLOAD_PROFILE=/tmp/knobs-profile.json AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-knobs \
                     step suite-knobs python3 benchmarks/suite.py --machine "$MACHINE-knobs" --budget-s "${BUDGET:-60}" \
                         --functions "${FUNCTIONS:-normal_eqs,min_var_weights,pairwise_dist}" --max-elements "${MAX_N:-1e7}" --no-plot ;;
        numba-threads) # issue 12: the Numba tier's small calls by thread count, back to back and interleaved
                       TAIL=60 step numba-threads python3 tools/numba_small_threads.py ${FUNCTIONS:-black_scholes rolling_vol panel_recur percentiles} \
                           --sizes "${SIZES:-1e2,1e3,1e4,1e5}" --rounds "${ROUNDS:-101}" ;;
        gaps-marginal) TAIL=16 step gaps-marginal python3 tools/gpu_gaps.py 6 ;;  # issue 12: each piece of the small-call device path
        gaps-warmup) TAIL=8 step gaps-warmup python3 tools/gpu_gaps.py 7 ;;  # issue 12: the first GPU calls after NumPy-only work, call by call
        gaps-blocks) TAIL=22 step gaps-blocks python3 tools/gpu_gaps.py 8 ;;  # issue 12: each building block of a small device call, in a loop and inside a call
        gaps-result-noprofile) AUTOOFFLOAD_SHIPPED=0 AUTOOFFLOAD_CACHE_DIR=/tmp/ao-cache-gaps-np TAIL=30 step gaps-result-noprofile python3 tools/gpu_gaps.py 5 ;;  # the same with no profile: the engine's default tuning
        gaps-result) # issue 12 item 8: pairwise_dist at 1e6, @offload on CuPy against CuPy + copies, stage by stage
                     TAIL=40 step gaps-result python3 tools/gpu_gaps.py 5 ;;
        *) echo "unknown step $s" ;;
    esac
done
tar czf "$OUT/results.tgz" benchmarks/results 2>/dev/null || true
