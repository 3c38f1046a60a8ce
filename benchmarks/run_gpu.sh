#!/usr/bin/env bash
# One GPU session, prepared to run unattended inside a fixed time budget: the GPU figures in
# benchmarks/README.md and README.md come from this script.
#
#   OUT=dir NOPROP_DATA_DIR=/path/to/mnist bash benchmarks/run_gpu.sh [budget_seconds]
#
# Stages, most important first; each has its own time limit, clipped so that the whole script
# ends inside the budget, and a failing stage does not stop the next:
#   1. environment (nvidia-smi, JAX devices);
#   2. epoch_time.py: one MNIST-sized epoch (469 steps, batch 128) of DT and backprop, float32
#      and bfloat16, through the CLI's loop with one call per step (host) and with a tenth of an
#      epoch per call (host-scan), with batches on the device (device), and as one compiled
#      scan (scan);
#   3. train_throughput.py: every DT strategy, CT, FM and backprop at batch 128 (ms/step, FLOP/s
#      against an 8192² matmul in the same run, memory);
#   4. MNIST training on real data, four runs at once on the one GPU: DT one-hot float32 and
#      bfloat16 (the accuracy effect of bf16), DT prototype, backprop for longer;
#   5. torch_reference.py on CUDA.
# Everything lands in $OUT/gpu.tgz (results/ and runs/ without checkpoints) and $OUT/log.txt.
# QUICK=1 shrinks every stage to seconds (a dry run on CPU).
set -u
START=$(date +%s)
BUDGET=${1:-540}
W=${WORK:-/tmp/noprop-gpu}
mkdir -p "$W/results" "$W/runs" "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=$W/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
LOG=$OUT/log.txt
PY=${PYTHON:-python3}
Q=${QUICK:-0}

left() { echo $((BUDGET - ($(date +%s) - START))); }
pack() { tar czf "$OUT/gpu.tgz" -C "$W" --exclude='*.eqx' results runs 2>/dev/null || true; }
stage() { # stage NAME LIMIT_S COMMAND...: run COMMAND under a limit clipped to the budget
  local name=$1 limit=$2
  shift 2
  local l
  l=$(left)
  ((limit > l - 30)) && limit=$((l - 30))
  if ((limit < 15)); then
    echo "== skip $name: $(left) s left" | tee -a "$LOG"
    return
  fi
  echo "== $name (limit ${limit}s, $(date -u +%T))" | tee -a "$LOG"
  TLIMIT=$((limit - 10)) timeout "$limit" bash -c '"$@"' _ "$@" 2>&1 | tee -a "$LOG"
  echo "== $name: rc ${PIPESTATUS[0]} at $(($(date +%s) - START)) s" | tee -a "$LOG"
  pack
}

env_info() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  $PY -c "import jax, jaxlib, equinox, optax, diffrax; print(jax.__version__, jaxlib.__version__, \
equinox.__version__, optax.__version__, diffrax.__version__, jax.devices())"
}

train() { # train NAME ARGS...: one CLI run (cut at $TLIMIT s), its log beside the run
  local name=$1
  shift
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.15 timeout "$TLIMIT" $PY -m noprop_eqx train --no-progress \
    --results "$W/results/mnist-h200-$name.json" "$@" >"$W/runs/$name.log" 2>&1
  echo "$name: rc $?"
}

trainings() { # four runs at once on the one GPU
  local e_dt=8 e_bp=20 extra=()
  if ((Q)); then e_dt=1 e_bp=1 extra=(--limit-train 256 --limit-test 256); fi
  local common=(--lr-schedule cosine --seed 0 "${extra[@]}")
  train DT-f32 --variants DT --epochs $e_dt --out "$W/runs/f32" "${common[@]}" &
  train DT-bf16 --variants DT --epochs $e_dt --compute-dtype bfloat16 --out "$W/runs/bf16" \
    "${common[@]}" &
  train DT-prototype --variants DT --embedding prototype --epochs $e_dt --out "$W/runs/f32" \
    "${common[@]}" &
  train BP --variants BP --epochs $e_bp --out "$W/runs/f32" "${common[@]}" &
  wait
  tail -n 3 "$W"/runs/*.log
}
export -f env_info train trainings
export W PY Q

epoch_times() { # DT in every mode and dtype; backprop through the CLI's loop
  local extra=(--repeats 2)
  ((Q)) && extra=(--quick)
  $PY benchmarks/epoch_time.py "${extra[@]}" --variants DT --modes host host-scan device scan \
    --compute-dtypes float32 bfloat16 --out-dir "$W/results" --tag h200-dt
  $PY benchmarks/epoch_time.py "${extra[@]}" --variants BP --modes host \
    --compute-dtypes float32 bfloat16 --out-dir "$W/results" --tag h200-bp
}
export -f epoch_times

if ((Q)); then
  THRU=(--quick) TORCH=(--quick)
else
  THRU=(--networks mnist --batch-sizes 128 --repeats 10 --warmup 2 --matmul-size 8192
    --variants DT-auto DT-blockwise DT-loop DT-vmap DT-scan DT-low backprop CT FM)
  TORCH=(--networks mnist --batch-sizes 128 --repeats 10 --warmup 2)
fi

stage environment 30 env_info
stage epoch_time 170 epoch_times
stage train_throughput 130 $PY benchmarks/train_throughput.py "${THRU[@]}" \
  --out-dir "$W/results" --tag h200
stage mnist_training $(($(left) - 60)) trainings
stage torch_reference 45 $PY benchmarks/torch_reference.py "${TORCH[@]}" \
  --out-dir "$W/results" --tag h200
pack
echo "== done at $(($(date +%s) - START)) s" | tee -a "$LOG"
