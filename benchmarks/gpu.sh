#!/usr/bin/env bash
# GPU checks and MFU in one go (about 6 minutes on one H100/H200): cuDNN attention against XLA's, then the
# ALBERT-large seq-512 bf16 train step (MFU; vs HF PyTorch on the same card; XLA vs cuDNN attention; scanned
# vs unrolled layers; a larger batch; LAMB), with a jax.profiler trace of the first run's steps in
# $OUT/step.xplane.pb.gz. Results: one JSON line per run in ${OUT:-.}/gpu_results.jsonl.
#
#   bash benchmarks/gpu.sh            # PYTHON=python3 by default
set -uo pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-.}
results="$OUT/gpu_results.jsonl"
: >"$results"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch shares the card in --compare runs

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
"$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
timeout 240 "$PY" -m pytest -q -s -p no:cacheprovider --tb=short tests/test_attention_gpu.py 2>&1 |
  grep -E "Error|assert|passed|failed|^E |^\{" | head -20

run() {  # run LIMIT_S ARGS...
  local limit=$1
  shift
  echo "== train_step $*"
  local log="$OUT/last.log"
  timeout "$limit" "$PY" benchmarks/train_step.py "$@" >"$log" 2>&1
  local rc=$?
  grep -v '^{' "$log" | grep -v -i 'warning' | tail -4
  tail -1 "$log" | grep '^{' >>"$results" || echo "   (exit $rc, no result)"
}
L="--preset large --seq-len 512 --dtype bfloat16 --steps 10 --warmup 3"
run 180 $L --batch-size 32 --attention cudnn --compare hf-torch --profile "$OUT/profile"
run 120 $L --batch-size 32 --attention xla
run 150 $L --batch-size 32 --attention cudnn --unrolled
run 150 $L --batch-size 64 --attention cudnn --unrolled
run 150 $L --batch-size 64 --attention cudnn --unrolled --optimizer lamb
run 120 $L --batch-size 64 --attention cudnn
find "$OUT/profile" -name '*.xplane.pb' -exec sh -c 'gzip -c "$1" >"$2"' _ {} "$OUT/step.xplane.pb.gz" \; 2>/dev/null
rm -rf "$OUT/profile"

echo "== summary (tokens/s, MFU, peak GiB)"
"$PY" - "$results" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    hf = "  unrolled" if not r.get("scan_layers", True) else ""
    hf += f"  HF torch x{r['speedup_vs_hf_torch']:.2f}" if r.get("speedup_vs_hf_torch") else ""
    print(
        f"{r['preset']:6} B{r['batch_size']:<3} S{r['seq_len']} {r['optimizer']:5} attn {r['attention']:5} "
        f"{r['tokens_per_sec']:>9,.0f} tok/s  MFU {r['mfu'] or 0:.1%}  peak {r['peak_memory_bytes'] / 2**30:.1f} GiB"
        f"  compile {r['compile_time_s']:.1f} s{hf}"
    )
EOF
