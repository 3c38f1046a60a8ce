#!/usr/bin/env bash
# One GPU session, prepared to run unattended inside a fixed time budget: the GPU figures in
# benchmarks/README.md and README.md come from this script.
#
#   OUT=dir NOPROP_DATA_DIR=/path/to/mnist bash benchmarks/run_gpu.sh [budget_seconds]
#
# Stages, most important first; each has its own time limit, clipped so that the whole script
# ends inside the budget, and a failing stage does not stop the next:
#   1. environment (nvidia-smi, JAX devices);
#   2. MNIST under the paper's protocol on real data, three runs at once on the one GPU, each
#      training seeds 0 1 2 in one compiled step: DT one-hot, DT prototype and backprop, for
#      $PROTOCOL_EPOCHS epochs (default 10; the paper's 100 do not fit one session's budget);
#   3. seeds.py: a step of 1, 3 and 5 seeds, DT and FM (the form the GPU picks);
#   4. torch_reference.py on CUDA, eager and torch.compile;
#   5. train_throughput.py: every DT strategy, CT, FM and backprop at batch 128 (ms/step, FLOP/s
#      against an 8192² matmul in the same run, memory);
#   6. epoch_time.py: one MNIST-sized epoch (469 steps, batch 128), float32 and bfloat16, of DT
#      through the CLI's loop (host, host-scan), with batches on the device and as one scan, and
#      of backprop through the CLI's loop.
# Everything lands in $OUT/gpu.tgz (results/ and runs/ without checkpoints) and $OUT/log.txt.
# QUICK=1 shrinks every stage to seconds (a dry run on CPU).
#
# The data does not travel with the repository: copy the MNIST folder into a folder that git
# ignores (say .gpudata/mnist), carry it, and point NOPROP_DATA_DIR at it.
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

protocol() { # three protocol runs at once on the one GPU, seeds 0 1 2 each
  local e=${PROTOCOL_EPOCHS:-10} extra=()
  # QUICK: SimpleCNN, as three 3-seed compiles of the paper network take many minutes on a CPU
  if ((Q)); then e=1 extra=(--model simple --limit-train 256 --limit-test 256); fi
  local common=(--seeds 0 1 2 --epochs "$e" --lr-schedule cosine "${extra[@]}")
  train DT-protocol --variants DT --out "$W/runs/protocol" "${common[@]}" &
  train DT-prototype-protocol --variants DT --embedding prototype --out "$W/runs/protocol-proto" \
    "${common[@]}" &
  train BP-protocol --variants BP --out "$W/runs/protocol" "${common[@]}" &
  wait
  tail -n 4 "$W"/runs/*.log
}
export -f env_info train protocol
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
  THRU=(--quick) TORCH=(--quick --torch-compile none default) SEEDS=(--quick)
else
  THRU=(--networks mnist --batch-sizes 128 --repeats 10 --warmup 2 --matmul-size 8192
    --variants DT-auto DT-blockwise DT-loop DT-vmap DT-scan DT-low backprop CT FM)
  TORCH=(--networks mnist --batch-sizes 128 --repeats 10 --warmup 2 --torch-compile none default)
  SEEDS=(--variants DT FM --seeds 1 3 5 --repeats 10 --matmul-size 8192)
fi

stage environment 30 env_info
stage protocol $(($(left) - 200)) protocol
stage seeds 60 $PY benchmarks/seeds.py "${SEEDS[@]}" --out-dir "$W/results" --tag h200
stage torch_reference 90 $PY benchmarks/torch_reference.py "${TORCH[@]}" \
  --out-dir "$W/results" --tag h200-compile
stage train_throughput 60 $PY benchmarks/train_throughput.py "${THRU[@]}" \
  --out-dir "$W/results" --tag h200
stage epoch_time 60 epoch_times
pack
echo "== done at $(($(date +%s) - START)) s" | tee -a "$LOG"
