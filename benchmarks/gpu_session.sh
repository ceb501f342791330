#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md ("Next on a GPU") as one call of at most 10 minutes.
#
#   bash benchmarks/device_wheels.sh          # here, once: Keras, namex and optree as wheels in .whl/
#   bash benchmarks/gpu_session.sh            # there (carry .whl); results under $OUT
#   bash benchmarks/gpu_session.sh --quick    # the first two steps at smoke sizes, on any machine
#
# Environment: OUT (default gpu_results/), TOTAL_S, PYTHON (default python3), BACKENDS
# (default: those installed of jax, torch, tensorflow).
#
# The steps run in the order of what is most wanted, each with a share of the time left
# (TOTAL_S seconds in all, default 540, so that a 600-second call ends with its files):
#   1. matcher: the in-graph matcher against SciPy, from the compiled step and as a plain
#      loop, on JAX and PyTorch (issue 29: should `matcher="auto"` pick SciPy on GPUs?);
#   2. detr:    DETR-R50 training at 800 x 1066, the matcher + loss share of the step with
#      both matchers (issue 29: under 3% of the step);
#   3. vit:     ViT-B/16 training and inference, MFU beside transformers and timm, profiled;
#   4. host:    the PyTorch host floor at the published sizes.
# A step that runs out of time is stopped; the next one still gets its share. Each step's
# tables, JSON and log are packed into $OUT/results.tar.gz (traces into $OUT/traces.tar.gz
# when under 15 MB), and the whole log is $OUT/session.log.
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
OUT=${OUT:-gpu_results}
TOTAL_S=${TOTAL_S:-540}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d)
LOG=$OUT/session.log
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }

# The backends this machine has, unless BACKENDS names them (the GPU image has JAX and
# PyTorch, not TensorFlow).
if [ -z "${BACKENDS:-}" ]; then
  BACKENDS=$("$PYTHON" - <<'PY'
import importlib.util
print(",".join(b for b in ("jax", "torch", "tensorflow") if importlib.util.find_spec(b)))
PY
)
fi
# Keras and its small dependencies from the carried wheels, where they are missing.
# (Keras imports TensorFlow unless KERAS_BACKEND names another backend.)
first=${BACKENDS%%,*}
if ! KERAS_BACKEND=$first "$PYTHON" -c "import keras" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    say "keras is not installed and .whl/ holds no wheels: run benchmarks/device_wheels.sh here and carry .whl"
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/keras_vtx_site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/keras_vtx_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
start=$SECONDS
say "== $(date -u +%FT%TZ) $(nvidia-smi -L 2>/dev/null | head -1 || true) backends: $BACKENDS"
KERAS_BACKEND=$first "$PYTHON" -c "import keras, sys; print('python', sys.version.split()[0], 'keras', keras.__version__)" 2>&1 | tee -a "$LOG"

# step NAME SHARE_PERCENT COMMAND...: runs COMMAND with SHARE% of the time left; `BUDGET`
# in its arguments is replaced by 70% of that (benchmarks stop starting new measurements
# then, leaving the rest to the measurement under way).
step() {
  local name=$1 share=$2; shift 2
  local left=$((TOTAL_S - (SECONDS - start)))
  local limit=$((left * share / 100))
  if [ "$limit" -lt 15 ]; then
    say "== $name: not run, ${left}s left"
    return
  fi
  local args=() arg
  for arg in "$@"; do args+=("${arg//BUDGET/$((limit * 7 / 10))}"); done
  say "== $name (${limit}s): ${args[*]}"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "${args[@]}" 2>&1 | tee -a "$LOG" "$WORK/$name.log"
  say "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s"
}

if [ "$QUICK" = 1 ]; then
  step matcher 30 "$PYTHON" benchmarks/matcher_benchmark.py --quick --backends "$BACKENDS" \
    --json "$WORK/matcher.json"
  step detr 50 "$PYTHON" benchmarks/run_benchmarks.py --size tiny --cases detr_r50_train \
    --backends "${BACKENDS%%,*}" --references none --precisions float32 --steps 1 --warmup 0 \
    --repeats 2 --time-budget BUDGET --out "$WORK/detr"
else
  step matcher 25 "$PYTHON" benchmarks/matcher_benchmark.py --backends "$BACKENDS" \
    --repeats 15 --previous none --json "$WORK/matcher.json"
  step detr 60 "$PYTHON" benchmarks/run_benchmarks.py --cases detr_r50_train \
    --backends "$BACKENDS" --precisions bfloat16 --time-budget BUDGET --out "$WORK/detr"
  step vit 70 "$PYTHON" benchmarks/run_benchmarks.py --cases vit_b16_train,vit_b16_infer \
    --backends "$BACKENDS" --precisions bfloat16 --profile "$WORK/traces" \
    --time-budget BUDGET --out "$WORK/vit"
  step host 100 "$PYTHON" benchmarks/run_benchmarks.py --size host --backends torch \
    --time-budget BUDGET --out "$WORK/host"
fi

tar -C "$WORK" --exclude=traces -czf "$OUT/results.tar.gz" .
if [ -d "$WORK/traces" ]; then
  tar -C "$WORK" -czf "$WORK/traces.tar.gz" traces
  if [ "$(stat -c %s "$WORK/traces.tar.gz")" -lt 15000000 ]; then
    mv "$WORK/traces.tar.gz" "$OUT/"
  else
    say "traces.tar.gz is $(stat -c %s "$WORK/traces.tar.gz") bytes: left out (the files limit)"
  fi
fi
say "== done in $((SECONDS - start))s: $(ls "$OUT" | tr '\n' ' ')"
rm -rf "$WORK"
