"""Where a short pretraining run's host memory goes: resident memory (RSS) phase by phase.

Usage::

    python benchmarks/run_memory.py --preset xxlarge --vocab-size 5000 --batch-size 2 --seq-len 128
    python benchmarks/run_memory.py --preset xxlarge --vocab-size 5000 --batch-size 2 --seq-len 128 \
        --sync-checkpointing

Runs `training.pretrain.run` in this process (a fresh WORKDIR, the embedded corpus, a vocabulary
trained on it; two steps, checkpoints at both (orbax also saves a run's first step), one evaluation
batch, the final summary) while a thread
samples the process's RSS every `--interval` seconds. The run's phases are marked by wrapping the
functions that do them (vocabulary and token cache, state init, resume check, train steps,
evaluation, checkpoint saves, summary) and by JAX's compile events. Each train step is waited for,
so that its memory is counted in its own phase rather than in whatever follows the asynchronous
dispatch. Prints one row per phase (RSS at its start and end, the peak sampled inside it) and, last,
one JSON object. On an accelerator RSS is host memory only. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, REPO)  # this checkout's albert_jax and configs

_T0 = time.perf_counter()
MIN_SEGMENT_SECONDS = 0.05
MIN_COMPILE_SECONDS = 0.5  # programs that compile faster are counted in the phase that asked for them
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class Sampler(threading.Thread):
    """(seconds since start, RSS bytes) every `interval` seconds until `stop()`."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval, self.samples = interval, [(time.perf_counter() - _T0, rss_bytes())]
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.samples.append((time.perf_counter() - _T0, rss_bytes()))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.samples.append((time.perf_counter() - _T0, rss_bytes()))


class Timeline:
    """Labelled spans (start, end, label); a span that starts inside another is nested in it."""

    def __init__(self):
        self.spans: list[tuple[float, float, str]] = []
        self._lock = threading.Lock()

    def add(self, start: float, end: float, label: str) -> None:
        with self._lock:
            self.spans.append((start, end, label))

    @contextlib.contextmanager
    def span(self, label: str):
        start = time.perf_counter() - _T0
        try:
            yield
        finally:
            self.add(start, time.perf_counter() - _T0, label)

    def wrap(self, owner: Any, name: str, label: str, wait: bool = False) -> None:
        """Replaces `owner.name` (a module function or a class's method) by one that records a span;
        `wait`: the span lasts until the arrays it returns are computed."""
        setattr(owner, name, self.spanned(getattr(owner, name), label, wait))

    def spanned(self, fn: Callable, label: str, wait: bool = False) -> Callable:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with self.span(label):
                out = fn(*args, **kwargs)
                import jax  # imported in main's "imports" phase

                return jax.block_until_ready(out) if wait else out

        return wrapped

    def segments(self, end: float) -> list[tuple[float, float, str]]:
        """The run cut at every span boundary, each piece named by the innermost span over it
        (the latest started); neighbours with the same name are merged."""
        cuts = sorted({0.0, end, *(t for s, e, _ in self.spans for t in (s, e))})
        out: list[tuple[float, float, str]] = []
        for a, b in itertools.pairwise(cuts):
            mid = (a + b) / 2
            inside = [(s, label) for s, e, label in self.spans if s <= mid < e]
            label = max(inside)[1] if inside else "outside the run (start, cleanup)"
            if b - a < MIN_SEGMENT_SECONDS and out:  # a boundary artefact: part of the previous piece
                label = out[-1][2]
            if out and out[-1][2] == label:
                out[-1] = (out[-1][0], b, label)
            else:
                out.append((a, b, label))
        return out


def _rss_at(samples: list[tuple[float, int]], t: float) -> int:
    before = [r for s, r in samples if s <= t]
    return before[-1] if before else samples[0][1]


def phase_table(samples: list[tuple[float, int]], segments: list[tuple[float, float, str]]) -> list[dict]:
    rows = []
    for a, b, label in segments:
        inside = [r for s, r in samples if a <= s <= b]
        start, end = _rss_at(samples, a), _rss_at(samples, b)
        rows.append(
            {
                "phase": label,
                "start_s": round(a, 1),
                "seconds": round(b - a, 1),
                "rss_start_gib": start / 2**30,
                "rss_end_gib": end / 2**30,
                "delta_gib": (end - start) / 2**30,
                "peak_gib": max(inside + [start, end]) / 2**30,
            }
        )
    return rows


def instrument(timeline: Timeline) -> None:
    """Marks the run's phases: wraps the functions that do them and listens to JAX's compile spans."""
    from albert_jax import checkpoint
    from albert_jax.training import pretrain, summary, trainer
    from albert_jax.training import run as run_lib

    timeline.wrap(pretrain, "resolve", "vocabulary + token cache")
    timeline.wrap(run_lib, "create_train_state", "state init", wait=True)
    timeline.wrap(checkpoint.Checkpointer, "restore_latest", "resume check")
    timeline.wrap(checkpoint.Checkpointer, "save", "checkpoint save (blocking part)")
    timeline.wrap(checkpoint.Checkpointer, "close", "checkpoint finish (async part)")
    timeline.wrap(pretrain, "evaluate", "evaluation")
    timeline.wrap(summary, "print_summary", "summary (fill-mask)")

    jit_train_step = trainer.jit_train_step

    def synchronised_step(*args, **kwargs):
        step_fn = jit_train_step(*args, **kwargs)
        step = timeline.spanned(step_fn, "train step", wait=True)
        step.lower = timeline.spanned(step_fn.lower, "trace + lower train step")
        return step

    trainer.jit_train_step = synchronised_step

    def on_span(event: str, start: float, end: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration" and end - start > MIN_COMPILE_SECONDS:
            # time.time() -> this script's clock
            offset = time.time() - (time.perf_counter() - _T0)
            timeline.add(start - offset, end - offset, f"compile {kwargs.get('fun_name', '?')}")

    import jax

    jax.monitoring.register_event_time_span_listener(on_span)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="xxlarge")
    p.add_argument("--vocab-size", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--interval", type=float, default=0.1, help="seconds between RSS samples")
    p.add_argument("--workdir", default="", help="default: a temporary directory, removed afterwards")
    p.add_argument(
        "--sync-checkpointing",
        action="store_true",
        help="async_checkpointing=false: saves finish before the next step",
    )
    args = p.parse_args()

    sampler = Sampler(args.interval)
    sampler.start()
    timeline = Timeline()
    with timeline.span("imports"):
        import jax  # noqa: F401

        from albert_jax.training import pretrain
        from configs import pretrain as pretrain_configs

    instrument(timeline)
    config = pretrain_configs.get_config(args.preset)
    config.model.vocab_size = args.vocab_size
    config.batch_size = config.eval_batch_size = args.batch_size
    config.seq_len = args.seq_len
    config.total_steps = config.eval_every = config.checkpoint_every = args.steps
    config.eval_steps = 1
    config.progress_bar = False
    config.async_checkpointing = not args.sync_checkpointing
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory())
        config.data.cache_dir = os.path.join(workdir, "token-cache")
        with timeline.span("run: the rest (setup, loop, metrics)"):
            pretrain.run(config, workdir)
    sampler.stop()

    end = sampler.samples[-1][0]
    rows = phase_table(sampler.samples, timeline.segments(end))
    print(f"{'phase':<40} {'start s':>7} {'secs':>6} {'RSS start':>9} {'end':>7} {'delta':>7} {'peak':>7}")
    for r in rows:
        print(
            f"{r['phase'][:40]:<40} {r['start_s']:>7.1f} {r['seconds']:>6.1f} {r['rss_start_gib']:>9.2f} "
            f"{r['rss_end_gib']:>7.2f} {r['delta_gib']:>+7.2f} {r['peak_gib']:>7.2f}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(
        f"peak RSS {peak / 2**30:.2f} GiB (sampled max {max(r for _, r in sampler.samples) / 2**30:.2f} GiB)"
    )
    summary = {
        "preset": args.preset,
        "vocab_size": args.vocab_size,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "peak_rss_gib": round(peak / 2**30, 3),
        "phases": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
