#!/usr/bin/env bash
# The GPU machine's one run: the preflight, then the measurement, everything written into OUTDIR,
# in at most GPU_RUN_TOTAL_S seconds (default 360; the machine's start not included), so that a
# second try fits in 15 GPU minutes. From the repository root, on the machine's own stack (Python
# 3.12, torch 2.11, torchvision 0.26, triton 3.6; nothing to install):
#
#   benchmarks/gpu_run.sh OUTDIR
#
# OUTDIR gets preflight.txt, gpu.log (the measurement's output, its plan with each row's estimate
# first), gpu-<device>-<date>.json (rewritten after every row: a run cut short keeps its rows),
# gpu-<device>-<date>.md (the tables) and summary.txt. The order of the rows is benchmarks/gpu.py's
# plan: the headline rows first (the compiled paper net, then the same without LRN, then
# `alexnet train` itself), nvJPEG's after the reference recipe's. `benchmarks/gpu.py --plan
# --device cuda` prints the plan and its estimates on any machine.
set -u
OUT=${1:?usage: benchmarks/gpu_run.sh OUTDIR}
TOTAL=${GPU_RUN_TOTAL_S:-360}
PREFLIGHT_S=${GPU_RUN_PREFLIGHT_S:-150}   # at most; it takes ~1 minute, most of it the Inductor compile
PY=${PYTHON:-python3}
# GPU_RUN_ARGS: more gpu.py options, after the script's own (the last of an option wins), e.g. for
# the CPU smoke test: GPU_RUN_ARGS="--device cpu --tiny".
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: the script runs from the repository root
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

# 1. Versions, /dev/shm, the GPU, the LRN op and one compiled step at batch 256 (its kernels stay in
#    Inductor's on-disk cache: the measurement's first row compiles the same graph).
timeout -k 5 "$PREFLIGHT_S" "$PY" benchmarks/gpu.py --preflight 2>&1 | tee "$OUT/preflight.txt"
preflight=${PIPESTATUS[0]}

# 2. The measurement, under an outer timeout: what is left of TOTAL, less 10 s for the tables. Its
#    own deadline is 15 s earlier (rows that would end later are skipped); each row has 120 s.
left=$(( TOTAL - ($(date +%s) - start) - 10 ))
if [ "$left" -gt 60 ]; then
  timeout -k 10 "$left" "$PY" benchmarks/gpu.py --out "$OUT" --deadline $(( left - 15 )) --row-timeout 120 \
    --images 16384 --time-budget 3 --compile-estimate 60 ${GPU_RUN_ARGS:-} 2>&1 | tee "$OUT/gpu.log"
  measurement=${PIPESTATUS[0]}
else
  echo "gpu_run.sh: only ${left} s left after the preflight; no measurement" | tee "$OUT/gpu.log"
  measurement=124
fi

# 3. The tables of what was measured (also after a timeout: the results file is complete up to its last row).
for f in "$OUT"/gpu-*.json; do
  [ -e "$f" ] && "$PY" benchmarks/gpu.py --markdown "$f" > "${f%.json}.md"
done
echo "preflight exit ${preflight}, measurement exit ${measurement} (124: the outer timeout), $(( $(date +%s) - start )) s in all" \
  | tee "$OUT/summary.txt"
[ "$preflight" -eq 0 ] && [ "$measurement" -eq 0 ]
