"""Tokenizer throughput: albert_jax.AlbertTokenizer (batched) vs transformers v5's AlbertTokenizer.

Usage::

    python benchmarks/tokenizer_speed.py [--corpus FILE] [--model SPIECE_MODEL] [--repeat N] [--num-threads N]

Splits the corpus (default: the shared Grimm's Fairy Tales text) into sentences, trains a
vocabulary with ``albert_jax.train_tokenizer`` unless ``--model`` is given, then times, in the same
run and on the same sentences:

* ours, ``encode_batch`` (SentencePiece's batched, multithreaded encode; no special tokens),
* ours, ``tok(sentences)`` (model inputs with [CLS]/[SEP], token_type_ids, attention_mask),
* transformers v5 ``AlbertTokenizer`` (the ``tokenizers`` port), ``tok(sentences)``.

and prints sentences/s for each and the ratio ours/HF. It also reports how many sentences
transformers v5 encodes differently from the original ALBERT tokenization (which ours matches).
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from albert_jax.tokenizer import AlbertTokenizer, train_tokenizer

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus" / "grimm_tales.txt"
if not DEFAULT_CORPUS.is_file():
    DEFAULT_CORPUS = Path("/work/shared/data/corpus/grimm_tales.txt")


def load_sentences(path: Path) -> list[str]:
    """Paragraphs of the text, re-flowed and split after ., ! and ?."""
    text = path.read_text(encoding="utf-8")
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        sentences.extend(s for s in re.split(r"(?<=[.!?])\s+", flat) if s)
    return sentences


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument(
        "--model", type=Path, default=None, help="a spiece .model (default: train one on the corpus)"
    )
    parser.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size when training")
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per tokenizer; the best is reported"
    )
    parser.add_argument(
        "--copies", type=int, default=4, help="the corpus is repeated this many times per run"
    )
    parser.add_argument(
        "--num-threads", type=int, default=-1, help="SentencePiece threads for ours (-1: all)"
    )
    args = parser.parse_args()
    if not args.corpus.is_file():
        print(f"error: corpus not found: {args.corpus}", file=sys.stderr)
        return 1

    import transformers
    from transformers import AlbertTokenizer as HFAlbertTokenizer

    sentences = load_sentences(args.corpus)
    batch = sentences * args.copies
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(
                train_tokenizer(sentences, Path(tmp) / "bench", args.vocab_size, hard_vocab_limit=False)
            )
        ours = AlbertTokenizer(model)
        ours.save_pretrained(Path(tmp) / "hf")
        hf = HFAlbertTokenizer.from_pretrained(Path(tmp) / "hf")

        # Warm up (and check that ours batched equals ours one at a time).
        assert ours.encode_batch(sentences[:500]) == [ours.encode(s) for s in sentences[:500]]
        hf(sentences[:500])

        timings = {
            "ours encode_batch": best_time(
                lambda: ours.encode_batch(batch, num_threads=args.num_threads), args.repeat
            ),
            "ours __call__": best_time(lambda: ours(batch), args.repeat),
            "transformers __call__": best_time(lambda: hf(batch), args.repeat),
        }
        ours_ids = ours(sentences)["input_ids"]
        hf_ids = hf(sentences)["input_ids"]
        differ = sum(a != b for a, b in zip(ours_ids, hf_ids))

    print(
        f"corpus: {args.corpus} ({len(sentences)} sentences, x{args.copies} per run), vocab {ours.vocab_size}"
    )
    print(f"cpus: {os.cpu_count()}, transformers {transformers.__version__}, best of {args.repeat}")
    for name, seconds in timings.items():
        print(f"{name:>24}: {len(batch) / seconds:12,.0f} sentences/s")
    hf_rate = len(batch) / timings["transformers __call__"]
    for name in ("ours encode_batch", "ours __call__"):
        print(f"ratio {name} / transformers: {len(batch) / timings[name] / hf_rate:.2f}x")
    print(
        f"transformers v5 ids differ from the original ALBERT tokenization on {differ}/{len(sentences)} sentences "
        f"({differ / len(sentences):.1%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
