#!/usr/bin/env bash
# Every GPU A/B of the train step in one call of at most 8 minutes (one H100/H200): the kernels' GPU tests
# (cuDNN attention, the Pallas kernels on Triton), the kernels alone against XLA, then the ALBERT-large
# seq-512 bf16 step (MFU): the baseline against HF PyTorch on the same card, each XLA flag, each kernel
# switch, the remat policies, scanned against unrolled and the scan unrolled by 2 and 4, with a
# jax.profiler trace of the baseline in $OUT/step.xplane.pb.gz. Runs that would pass the deadline are
# skipped and say so. Results: one JSON line per run in ${OUT:-.}/gpu_results.jsonl, each with its
# "label" and "xla_flags".
#
#   bash benchmarks/gpu.sh            # PYTHON=python3, DEADLINE_S=470 by default
#   STEP_ARGS="--preset base --layers 2 --seq-len 32 --batch-size 2 --steps 1" bash benchmarks/gpu.sh  # smoke
set -uo pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-.}
DEADLINE_S=${DEADLINE_S:-470}
results="$OUT/gpu_results.jsonl"
: >"$results"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false # torch shares the card in --compare runs
start=$SECONDS

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
"$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
timeout 90 "$PY" -m pytest -q -p no:cacheprovider --tb=short tests/test_attention_gpu.py tests/test_kernels.py -k "gpu or Gpu" 2>&1 |
  grep -E "Error|assert|passed|failed|^E " | head -20
timeout 60 "$PY" benchmarks/kernels_micro.py --rows 16384 --hidden 1024 --intermediate 4096 2>&1 | tail -1 |
  grep '^{' | sed 's/^{/{"label": "kernels_micro", /' >>"$results"

run() { # run LABEL LIMIT_S XLA_FLAGS ARGS...
  local label=$1 limit=$2 flags=$3
  shift 3
  if ((SECONDS - start + limit > DEADLINE_S)); then
    echo "== $label: skipped (would pass the ${DEADLINE_S} s deadline)"
    return
  fi
  echo "== $label: train_step $* ${flags:+XLA_FLAGS=$flags}"
  local log="$OUT/last.log"
  XLA_FLAGS="$flags" timeout "$limit" "$PY" benchmarks/train_step.py "$@" >"$log" 2>&1
  local rc=$?
  grep -v '^{' "$log" | grep -v -i 'warning' | tail -3
  tail -1 "$log" | grep '^{' | sed "s|^{|{\"label\": \"$label\", \"xla_flags\": \"$flags\", |" >>"$results" ||
    echo "   (exit $rc, no result)"
}
L=${STEP_ARGS:-"--preset large --seq-len 512 --dtype bfloat16 --batch-size 32 --steps 5 --warmup 2 --attention cudnn --no-ceiling"}
run baseline 90 "" $L --compare hf-torch --profile "$OUT/profile"
run unrolled 60 "" $L --unrolled
run remat-none 45 "" $L --remat none
run unroll-2 50 "" $L --scan-unroll 2
run fused-kernels 45 "" $L --fused-kernels
run fused-qkv 45 "" $L --fused-qkv
run fused-all 45 "" $L --fused-kernels --fused-qkv
run unrolled-fused 60 "" $L --unrolled --fused-kernels --fused-qkv
run cudnn-layer-norm 45 "--xla_gpu_enable_cudnn_layer_norm=true" $L
run while-double-buffer 45 "--xla_gpu_enable_while_loop_double_buffering=true" $L
run dynamic-slice-fusion 45 "--xla_gpu_enable_dynamic_slice_fusion=true" $L
run remat-dots-no-batch 45 "" $L --remat dots_with_no_batch_dims
run unroll-4 50 "" $L --scan-unroll 4
find "$OUT/profile" -name '*.xplane.pb' -exec sh -c 'gzip -c "$1" >"$2"' _ {} "$OUT/step.xplane.pb.gz" \; 2>/dev/null
rm -rf "$OUT/profile"

echo "== summary (tokens/s, MFU, peak GiB; $((SECONDS - start)) s)"
"$PY" - "$results" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "tokens_per_sec" not in r:
        print(r.get("label"), {k: v for k, v in r.items() if k.endswith(("_ms", "speedup"))})
        continue
    hf = f"  HF torch x{r['speedup_vs_hf_torch']:.2f}" if r.get("speedup_vs_hf_torch") else ""
    print(
        f"{r['label']:22} {r['tokens_per_sec']:>9,.0f} tok/s  MFU {r['mfu'] or 0:.1%}  "
        f"peak {r['peak_memory_bytes'] / 2**30:.1f} GiB  compile {r['compile_time_s']:.1f} s  "
        f"scan stacks {r.get('scan_stacks')} ({(r.get('scan_stack_bytes') or 0) / 2**30:.2f} GiB){hf}"
    )
EOF
