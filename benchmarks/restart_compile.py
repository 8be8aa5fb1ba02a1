"""Restart cost with and without WORKDIR's persistent compilation cache.

Usage::

    python benchmarks/restart_compile.py [--preset tiny] [--seq-len 128] [--batch-size 8] [--vocab-size 2000]

Runs `pretrain.py` as a user does. The first start trains two steps (checkpoints at 1 and 2), then
checkpoint 2 is removed, as if the run had been killed after saving step 1. The same command is
restarted twice from there: once with WORKDIR's compilation cache emptied (cold: everything
compiles, as before the cache existed) and once with it as the first start left it (warm). Both
restarts do the same work (restore, train step 2, save, a one-batch evaluation), so their
difference is compilation. Prints each start's wall time and the programs it compiled or loaded
(JAX's monitoring events). The vocabulary is a fixed one (tests/fixtures, 2000 pieces); the model
otherwise has the preset's shape. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
VOCAB = os.path.join(REPO, "tests", "fixtures", "tokenizer", "spiece.model")

# pretrain.py, with a count of the programs XLA compiled and those loaded from the persistent cache.
_COUNTING = """
import atexit, collections, runpy, sys
import jax.monitoring
from jax._src import dispatch
seen = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **_: seen.update([event]))
jax.monitoring.register_event_duration_secs_listener(lambda event, _secs, **__: seen.update([event]))
atexit.register(lambda: print("programs", seen[dispatch.BACKEND_COMPILE_EVENT],
                              "cache_hits", seen["/jax/compilation_cache/cache_hits"], file=sys.stderr))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _start(args: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _COUNTING, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"pretrain.py failed:\n{proc.stderr[-3000:]}")
    counts = proc.stderr.strip().splitlines()[-1].split()
    return seconds, int(counts[1]), int(counts[3])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--vocab-size", type=int, default=2000, help="must match the fixed vocabulary")
    args = p.parse_args()

    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, "run")
        command = [
            "pretrain.py",
            f"--config=configs/pretrain.py:{args.preset}",
            f"--workdir={workdir}",
            f"--config.model.vocab_size={args.vocab_size}",
            f"--config.data.tokenizer={VOCAB}",
            f"--config.data.cache_dir={os.path.join(tmp, 'tokens')}",
            f"--config.seq_len={args.seq_len}",
            f"--config.batch_size={args.batch_size}",
            f"--config.eval_batch_size={args.batch_size}",
            "--config.eval_steps=1",
            "--config.total_steps=2",
            "--config.warmup_steps=1",
            "--config.eval_every=0",
            "--config.checkpoint_every=1",
            "--config.progress_bar=false",
        ]
        first = _start(command, env)
        cache = os.path.join(workdir, "compilation_cache")
        saved = os.path.join(tmp, "saved_cache")
        shutil.copytree(cache, saved)
        results = {"first start (tokenize, compile, 2 steps)": first}
        for name, keep_cache in (("restart, cold cache", False), ("restart, warm cache", True)):
            shutil.rmtree(os.path.join(workdir, "checkpoints", "2"))
            shutil.rmtree(cache)
            if keep_cache:
                shutil.copytree(saved, cache)
            results[name] = _start(command, env)
    print(f"preset {args.preset}, seq {args.seq_len}, batch {args.batch_size}, vocab {args.vocab_size}")
    for name, (seconds, programs, hits) in results.items():
        print(f"{name:42s} {seconds:7.1f} s  {programs} programs, {hits} from the cache")
    cold, warm = results["restart, cold cache"][0], results["restart, warm cache"][0]
    print(f"restart: {cold / warm:.1f}x faster with the cache ({cold - warm:.1f} s of compiling saved)")


if __name__ == "__main__":
    main()
