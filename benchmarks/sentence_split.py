"""Sentence splitters for raw paragraphs: the old hand-written regex splitter vs sentencex, blingfire, pysbd.

Usage::

    python benchmarks/sentence_split.py [--corpus FILE] [--repeat N] [--show N]

For each splitter, on the same input and in the same run:

* **quality**: the hand-written gold cases in ``tests/fixtures/sentences/gold.json`` (abbreviations,
  initials, numbers, quotes after periods, ``?``/``!`` inside quotes, ellipses): cases split exactly
  right, and boundary precision/recall/F1;
* **speed**: sentences/s (each splitter's own count) and MB/s over every paragraph of the corpus
  (default: the shared Grimm's Fairy Tales), best of ``--repeat`` passes on one core;
* **agreement**: the paragraphs where each splitter differs from the current default; ``--show N``
  prints the first N of them side by side (a fixed, deterministic sample to judge by hand).

This is a benchmark, not a test; ``pysbd`` is skipped when it is not installed.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from albert_jax.data import text

ROOT = Path(__file__).resolve().parents[1]
GOLD = ROOT / "tests" / "fixtures" / "sentences" / "gold.json"
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "grimm_tales.txt"
if not DEFAULT_CORPUS.is_file():
    DEFAULT_CORPUS = Path("/work/shared/data/corpus/grimm_tales.txt")

Splitter = Callable[[str], list[str]]


def splitters() -> dict[str, Splitter]:
    """Every splitter to compare that is installed, each returning stripped, non-empty sentences."""
    out: dict[str, Splitter] = {"regex (ours)": text.split_sentences}
    try:
        import sentencex

        out["sentencex"] = lambda t: [s.strip() for s in sentencex.segment("en", t) if s.strip()]
    except ImportError:
        pass
    try:
        import blingfire

        out["blingfire"] = lambda t: [s for s in blingfire.text_to_sentences(t).split("\n") if s.strip()]
    except ImportError:
        pass
    try:
        import pysbd

        seg = pysbd.Segmenter(language="en", clean=False)
        out["pysbd"] = lambda t: [s.strip() for s in seg.segment(t) if s.strip()]
    except ImportError:
        pass
    if len(out) < 4:
        print("not installed: some splitters to compare (pip install 'albert_jax[bench]')")
    return out


def paragraphs(path: Path) -> list[str]:
    """The corpus's paragraphs as the paragraph reader sees them: Gutenberg header and footer
    stripped, hard-wrapped lines joined, whitespace collapsed."""
    body = "\n".join(text._strip_gutenberg(text._read_lines(str(path))))
    paras = (" ".join(p.split()) for p in re.split(r"\n\s*\n", body))
    return [p for p in paras if p and not text._NOISE_PARAGRAPH.match(p)]


def boundaries(sentences: list[str]) -> set[int]:
    """Character offsets (whitespace removed) where each sentence but the last ends."""
    out, pos = set(), 0
    for s in sentences[:-1]:
        pos += len("".join(s.split()))
        out.add(pos)
    return out


def score_gold(split: Splitter, gold: list[dict]) -> dict[str, float]:
    exact = tp = fp = fn = 0
    for case in gold:
        got, want = split(case["text"]), case["sentences"]
        exact += [" ".join(s.split()) for s in got] == want
        b_got, b_want = boundaries(got), boundaries(want)
        tp += len(b_got & b_want)
        fp += len(b_got - b_want)
        fn += len(b_want - b_got)
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {
        "exact": exact,
        "cases": len(gold),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-9),
    }


def time_splitters(
    split_by: dict[str, Splitter], paras: list[str], repeat: int
) -> dict[str, tuple[float, int]]:
    """(best seconds, sentences) per splitter; the passes are interleaved so that load from other
    processes on the machine hits every splitter alike."""
    best = {name: (float("inf"), 0) for name in split_by}
    for _ in range(repeat):
        for name, split in split_by.items():
            t0 = time.perf_counter()
            count = sum(len(split(p)) for p in paras)
            best[name] = (min(best[name][0], time.perf_counter() - t0), count)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--show", type=int, default=0, help="print the first N disagreements per splitter")
    args = parser.parse_args()

    gold = json.loads(GOLD.read_text(encoding="utf-8"))
    paras = paragraphs(args.corpus)
    size_mb = sum(len(p.encode()) for p in paras) / 1e6
    print(f"corpus: {args.corpus.name}, {len(paras)} paragraphs, {size_mb:.2f} MB; gold: {len(gold)} cases")
    split_by = splitters()
    reference = [text.split_sentences(p) for p in paras]
    print(
        f"{'splitter':<12} {'gold exact':>10} {'boundary P/R/F1':>17} {'sentences':>9} "
        f"{'sent/s':>9} {'MB/s':>6} {'differs from regex':>19}"
    )
    timings = time_splitters(split_by, paras, args.repeat)
    for name, split in split_by.items():
        q = score_gold(split, gold)
        seconds, count = timings[name]
        diff = [i for i, p in enumerate(paras) if split(p) != reference[i]]
        print(
            f"{name:<12} {q['exact']:>4}/{q['cases']:<5} "
            f"{q['precision']:.2f}/{q['recall']:.2f}/{q['f1']:.2f}  {count:>9} {count / seconds:>9.0f} "
            f"{size_mb / seconds:>6.2f} {len(diff):>10} paragraphs"
        )
        for i in diff[: args.show]:
            print(f"  --- paragraph {i}\n  regex: {reference[i]}\n  {name}: {split(paras[i])}")
    for name, split in split_by.items():
        misses = [c for c in gold if [" ".join(s.split()) for s in split(c["text"])] != c["sentences"]]
        print(f"{name} gets wrong: " + " | ".join(c["text"][:40] for c in misses))


if __name__ == "__main__":
    main()
