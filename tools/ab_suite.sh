#!/usr/bin/env bash
# A/B two source trees on some of the suite's rows, in alternating processes on one machine start
# (machine starts differ by up to 3x, so variants are only compared within one run):
#   AB_OLD=ab-old REPS=3 FUNCTIONS=rolling_vol,percentiles MAX_N=1e3 bash tools/ab_suite.sh
# AB_OLD: a folder holding the other variant's autooffload package (its C extensions are copied
# from src/ after gpu_run.sh built them). Each process gets a fresh cache dir (no history carried
# over), with the shipped profile of $MACHINE and with none. Results: $OUT/ab/<variant>-<profile>-<rep>/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
MACHINE=${MACHINE:-h200}
bash tools/gpu_run.sh > /dev/null  # builds the extensions and installs the carried wheels: no steps
cp src/autooffload/*.so "$AB_OLD/autooffload/" 2>/dev/null
export PYTHONUNBUFFERED=1
for rep in $(seq 1 "${REPS:-2}"); do
    for variant in new old; do
        for prof in shipped noprofile; do
            src=$PWD/src; [ "$variant" = old ] && src=$PWD/$AB_OLD
            if [ "$prof" = shipped ]; then profile_env="AUTOOFFLOAD_PROFILE=$PWD/src/autooffload/_profiles/shipped/$MACHINE.json"
            else profile_env="AUTOOFFLOAD_SHIPPED=0"; fi
            name=$variant-$prof-$rep
            env PYTHONPATH="/tmp/site:$src" AUTOOFFLOAD_CACHE_DIR="/tmp/ab-cache-$name" $profile_env \
                python3 benchmarks/suite.py --no-plot ${AB_ARGS:-} --out "$OUT/ab" --machine "$name" \
                --max-elements "${MAX_N:-1e3}" --functions "${FUNCTIONS:-rolling_vol,black_scholes,percentiles,bessel_i0}" \
                > "$OUT/ab-$name.log" 2>&1
            echo "$name: $(grep -c '' "$OUT/ab-$name.log") lines, $(grep '^SUMMARY' "$OUT/ab-$name.log" | head -1 | cut -c1-120)"
        done
    done
done
