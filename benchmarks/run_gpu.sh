#!/usr/bin/env bash
# One GPU session, prepared to run unattended inside a fixed time budget: the GPU figures in
# benchmarks/README.md and README.md come from this script.
#
#   OUT=dir NOPROP_DATA_DIR=/path/to/mnist bash benchmarks/run_gpu.sh [budget_seconds]
#
# Stages, most important first; each has its own time limit, clipped so that the whole script
# ends inside the budget, and a failing stage does not stop the next:
#   1. environment (nvidia-smi, JAX devices);
#   1b. CIFAR-10, when $CIFAR_DATA_DIR is set (a folder that `--data-dir` reads: the official
#      tarball or folder, or the HF `save_to_disk` copy with `datasets` importable): the paper's
#      Table 1 DT and backprop rows, three runs at once, seeds 0 1 2 each: DT one-hot, DT
#      prototype, backprop. Each first trains 2 epochs of a $CIFAR_EPOCHS-epoch schedule (default
#      150, the paper's) to measure its epoch time, then resumes if the rest fits its share of the
#      budget, or else starts again with the epochs that fit (the cosine schedule over those);
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
# ignores (say .gpudata/mnist), carry it, and point NOPROP_DATA_DIR at it. For CIFAR-10, copy
# the folder that holds the CIFAR copy (cifar10-jpeg/, cifar-10-python.tar.gz, ...) likewise and
# point CIFAR_DATA_DIR at it; the HF copy needs `datasets`, which a GPU image may lack: carry its
# wheel and those of dill and multiprocess. A stage whose variable is unset is skipped. The
# MNIST gz files and the CIFAR-10 JPEG copy (68 MB together) do not fit one call's 64 MiB, so
# a session with both runs this script twice, with one data set each.
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

cli() { # cli LIMIT_S ARGS...: `noprop-eqx train ARGS` in a share of the GPU's memory, cut at LIMIT_S
  local limit=$1
  shift
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.15 timeout "$limit" $PY -m noprop_eqx train --no-progress "$@"
}

train() { # train NAME ARGS...: one CLI run (cut at $TLIMIT s), its log beside the run
  local name=$1
  shift
  cli "$TLIMIT" --results "$W/results/mnist-h200-$name.json" "$@" >"$W/runs/$name.log" 2>&1
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
cifar_run() { # cifar_run NAME ARGS...: one CIFAR-10 run, sized to fit the stage's time limit
  local name=$1 e=${CIFAR_EPOCHS:-150} extra=()
  shift
  ((Q)) && e=4 extra=(--model simple --limit-train 256 --limit-test 256)
  local common=(--dataset cifar10 --data-dir "$CIFAR_DATA_DIR" --seeds 0 1 2 --lr-schedule cosine
    --results "$W/results/cifar10-h200-$name.json" "${extra[@]}" "$@")
  local out=$W/runs/cifar-$name log=$W/runs/cifar-$name.log
  cli "$TLIMIT" "${common[@]}" --out "$out" --epochs "$e" --stop-after 2 >"$log" 2>&1 ||
    { echo "$name: failed"; return; }
  # one epoch's training and evaluation, measured in epoch 2 (epoch 1 compiles); the records of
  # this leg say epochs 2 of planned_epochs $e, and `mnist_results.py --pool` leaves them out
  local per left_s fit rc=0
  per=$($PY -c "import json, sys, glob
rows = [json.loads(x) for x in open(sorted(glob.glob(sys.argv[1]))[0])]
print(int(rows[-1]['epoch_time_s'] + rows[-1]['eval_time_s']) + 1)" "$out/seed0/*/metrics.jsonl")
  left_s=$((TLIMIT - SECONDS - 60)) # the final read-outs and the write-out
  fit=$((left_s / per))
  echo "$name: $per s an epoch, $left_s s left: $fit epochs fit"
  if ((fit >= e - 2)); then
    cli $((TLIMIT - SECONDS)) "${common[@]}" --out "$out" --epochs "$e" --resume >>"$log" 2>&1
    rc=$?
  elif ((fit >= 2)); then
    echo "$name: $e epochs do not fit; training $fit (cosine over $fit)"
    cli $((TLIMIT - SECONDS)) "${common[@]}" --out "$out-e$fit" --epochs "$fit" >>"$log" 2>&1
    rc=$?
  else
    echo "$name: no time left for more epochs"
  fi
  echo "$name: rc $rc"
}

cifar() { # DT one-hot, DT prototype and backprop at once on the one GPU
  cifar_run DT --variants DT &
  cifar_run DT-prototype --variants DT --embedding prototype &
  cifar_run BP --variants BP &
  wait
  tail -n 3 "$W"/runs/cifar-*.log
}
export -f env_info cli train protocol cifar_run cifar
export W PY Q CIFAR_DATA_DIR=${CIFAR_DATA_DIR:-}

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
if [[ -n ${CIFAR_DATA_DIR:-} ]]; then
  stage cifar $(($(left) - ${CIFAR_RESERVE_S:-120})) cifar
fi
if [[ -n ${NOPROP_DATA_DIR:-} ]]; then
  stage protocol $(($(left) - 200)) protocol
fi
stage seeds 60 $PY benchmarks/seeds.py "${SEEDS[@]}" --out-dir "$W/results" --tag h200
stage torch_reference 90 $PY benchmarks/torch_reference.py "${TORCH[@]}" \
  --out-dir "$W/results" --tag h200-compile
stage train_throughput 60 $PY benchmarks/train_throughput.py "${THRU[@]}" \
  --out-dir "$W/results" --tag h200
stage epoch_time 60 epoch_times
pack
echo "== done at $(($(date +%s) - START)) s" | tee -a "$LOG"
