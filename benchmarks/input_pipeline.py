"""Pretraining input pipeline throughput (examples/s at seq 512) vs what ALBERT-base consumes.

Usage::

    python benchmarks/input_pipeline.py [--corpus FILE] [--model SPIECE_MODEL] [--examples N]
        [--seq-len 512] [--batch 32] [--workers 0]

Builds (or reuses) the token cache of the corpus (default: the shared Grimm's Fairy Tales text,
else the embedded corpus), then times the full grain pipeline of
``albert_jax.data.loader.pretraining_dataset`` (shuffle, example creation with SOP and n-gram
masking, batching) in this single Python process (``--workers 0``: one core), and prints
examples/s. This is a benchmark, not a test.

What ALBERT-base consumes on a TPU v3-8 (the estimate printed with the result):

* ALBERT-base (H=768, 12 layers, FFN 3072) shares its layer weights (12M parameters), but the
  compute per token is BERT-base's: 12 H^2 = 7.1M multiply-adds per layer in the matmuls,
  times 12 layers = 85M "compute parameters". Training costs ~6 FLOPs per parameter per token:
  6 * 85M = 510 MFLOP/token. Attention scores and values add 6 * 2 * T * H * 12 layers
  = 57 MFLOP/token at T = 512; the embedding projection (128 -> 768) and the MLM head on 20
  positions are a few percent more. Total ~ 580 MFLOP/token, ~ 0.30 TFLOP per 512-token
  example.
* A TPU v3-8 has 4 chips x 123 TFLOP/s (bf16) = 420 TFLOP/s peak. At a typical 40-50% model
  FLOP utilisation for BERT-style models, ~ 190 TFLOP/s, i.e. ~ 650 examples/s (the range 450-900
  covers 30-60% utilisation).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from albert_jax.data.loader import pretraining_dataset
from albert_jax.data.pretraining import PretrainDataConfig, TokenizedCorpus
from albert_jax.data.text import CorpusSpec
from albert_jax.tokenizer import AlbertTokenizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "grimm_tales.txt"
DEFAULT_MODEL = ROOT / "tests" / "fixtures" / "tokenizer" / "spiece.model"

# The estimate derived in the module docstring.
TFLOP_PER_EXAMPLE_512 = 0.30
TPU_V3_8_PEAK_TFLOPS = 420.0
ASSUMED_MFU = 0.45


def tpu_v3_8_examples_per_s(seq_len: int) -> float:
    """ALBERT-base training examples/s on a TPU v3-8 (scaled linearly in tokens from 512)."""
    return TPU_V3_8_PEAK_TFLOPS * ASSUMED_MFU / (TFLOP_PER_EXAMPLE_512 * seq_len / 512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS) if DEFAULT_CORPUS.is_file() else "")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="SentencePiece model")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "albert_jax_bench_cache"))
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-predictions", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    tok = AlbertTokenizer(args.model)
    spec = CorpusSpec(files=args.corpus)
    t0 = time.perf_counter()
    corpus = TokenizedCorpus.build(spec, tok, args.cache_dir)
    build_s = time.perf_counter() - t0
    cfg = PretrainDataConfig(seq_len=args.seq_len, max_predictions=args.max_predictions)
    n_chunks = len(corpus.chunks(cfg, "train", seed=0))
    print(
        f"corpus: {corpus.meta['source']} ({corpus.num_tokens} tokens, vocab {tok.vocab_size}), "
        f"{n_chunks} train examples per epoch at seq {args.seq_len}; cache ready in {build_s:.2f}s"
    )

    ds = pretraining_dataset(
        corpus,
        cfg,
        split="train",
        global_batch_size=args.batch,
        seed=0,
        process_index=0,
        process_count=1,
        worker_count=args.workers,
    )
    it = iter(ds)
    for _ in range(4):  # warm-up (and worker start-up)
        next(it)
    n_batches = max(1, args.examples // args.batch)
    tokens = 0
    t0 = time.perf_counter()
    for _ in range(n_batches):
        batch = next(it)
        tokens += int(batch["attention_mask"].sum())
    elapsed = time.perf_counter() - t0
    if args.workers:
        it.close()

    rate = n_batches * args.batch / elapsed
    need = tpu_v3_8_examples_per_s(args.seq_len)
    where = "one core" if args.workers == 0 else f"{args.workers} worker processes"
    print(
        f"pipeline: {rate:,.0f} examples/s ({tokens / elapsed:,.0f} non-pad tokens/s) on {where}, "
        f"batch {args.batch}, {n_batches * args.batch} examples in {elapsed:.2f}s"
    )
    print(
        f"ALBERT-base on TPU v3-8 consumes ~{need:,.0f} examples/s at seq {args.seq_len} "
        f"(estimate: {TFLOP_PER_EXAMPLE_512 * args.seq_len / 512:.2f} TFLOP/example, "
        f"{TPU_V3_8_PEAK_TFLOPS:.0f} TFLOP/s peak x {ASSUMED_MFU:.0%} utilisation)"
    )
    print(f"ratio pipeline/TPU: {rate / need:.2f}x; cores needed to keep up: {need / rate:.2f}")


if __name__ == "__main__":
    main()
