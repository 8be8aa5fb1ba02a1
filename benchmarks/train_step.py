"""The MLM+SOP pretraining step: compile time, step time, tokens/s, model TFLOP/s, MFU and peak memory.

Usage::

    python benchmarks/train_step.py --preset base --batch-size 8 --seq-len 128 --steps 10 --compare hf-torch
    python benchmarks/train_step.py --preset large --batch-size 2 --seq-len 128 --steps 3 --compare unrolled
    HF_FLAX_PYTHON=../hfflax-venv/bin/python python benchmarks/train_step.py --preset large --batch-size 2 \
        --seq-len 128 --steps 3 --compare unrolled,hf-flax --repeat 5
    python benchmarks/train_step.py --preset large --layers 48 --batch-size 2 --steps 3
    python benchmarks/train_step.py --preset large --seq-len 512 --batch-size 8 --dtype bfloat16 --remat dots

Times the real step (`trainer.make_train_step` + `jit_train_step` with `training.pretrain`'s loss, LAMB or ALBERT's AdamW
behind clipping and the non-finite guard, on a sharded state) on synthetic batches shaped like the
data pipeline's. `--compare hf-torch` runs transformers' `AlbertForPreTraining` (PyTorch, same config,
same shapes, labels at the same masked positions, torch.optim.AdamW + global-norm clipping; on a GPU, on
the same card with bf16 autocast for --dtype bfloat16) in the same invocation; `--compare unrolled`
compiles the same step with `scan_layers=False` (HF Flax's layout); `--compare hf-flax` compiles and
times transformers 4.x's `FlaxAlbertForPreTraining` in the same step (`hf_flax_step.py`, under the side
python `--hf-flax-python` / $HF_FLAX_PYTHON). `--repeat N` compiles the compared steps N times,
alternating sides, and keeps each side's fastest. The ratios are ours / theirs for tokens/s and
theirs / ours for compile time. After the step, the same invocation times the matmul ceiling: the
step's counted matmuls alone at its shapes and dtype (`train_step_parts.matmul_ceiling`), reported as
`matmul_ceiling_tflops` and `fraction_of_ceiling` (skip with `--no-ceiling`). `--tokens real` feeds
batches of the data pipeline (`--corpus`, `--vocab`; fetched to host before timing) instead of uniform
random ids. The last line is one JSON object. A benchmark, not a test.
"""

from __future__ import annotations

# Restarted at `import albert_jax` with glibc's huge pages, as pretrain.py is (albert_jax.host_memory).
ALBERT_JAX_HUGE_PAGES = True

import argparse
import json
import os
import resource
import statistics
import subprocess
import time
from typing import Any

import flax
import jax
import jaxlib
import ml_collections
import numpy as np
import optax

from albert_jax import modeling
from albert_jax import sharding as sharding_lib
from albert_jax.config import AlbertConfig
from albert_jax.modeling import AlbertForPreTraining, init_params
from albert_jax.training import pretrain, trainer
from albert_jax.training import run as run_lib

try:  # run as a script: benchmarks/ is on sys.path; imported by hf_flax_step.py, which puts it there too
    import train_step_parts
except ImportError:  # imported as benchmarks.train_step
    from benchmarks import train_step_parts

COMPARE = ("hf-torch", "unrolled", "hf-flax")
MAX_PREDICTIONS = 20  # per sequence at seq 128 (the paper's setting); scaled with seq_len


def predictions_per_sequence(seq_len: int) -> int:
    return max(1, round(MAX_PREDICTIONS * seq_len / 128))


# Dense peak TFLOP/s by device kind and dtype (vendor datasheets), for MFU. CPUs: pass --peak-tflops.
PEAK_TFLOPS = {
    ("NVIDIA H100", "bfloat16"): 989.0,
    ("NVIDIA H100", "float32"): 494.0,  # TF32 tensor cores, which XLA uses for fp32 matmuls by default
    ("NVIDIA H200", "bfloat16"): 989.0,
    ("NVIDIA H200", "float32"): 494.0,
    ("NVIDIA A100", "bfloat16"): 312.0,
    ("NVIDIA A100", "float32"): 156.0,
    ("TPU v4", "bfloat16"): 275.0,
    ("TPU v5 lite", "bfloat16"): 197.0,
    ("TPU v5", "bfloat16"): 459.0,
    ("TPU v6 lite", "bfloat16"): 918.0,
}


def model_config(args) -> AlbertConfig:
    overrides: dict[str, Any] = dict(
        max_position_embeddings=max(512, args.seq_len),
        dtype=args.dtype,
        remat_policy=args.remat,
        attention_impl=args.attention,
        scan_layers=not args.unrolled,
        scan_unroll=args.scan_unroll,
        fused_qkv=args.fused_qkv,
        fused_kernels=args.fused_kernels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    if args.vocab_size:
        overrides["vocab_size"] = args.vocab_size
    return AlbertConfig.from_preset(args.preset, **overrides)


def model_flops_per_step(cfg: AlbertConfig, batch: int, seq: int, predictions: int) -> float:
    """Training FLOPs of one step (3x the forward's matmul FLOPs), counting what the model computes:
    the E->H projection, L layers of attention and FFN, the pooler + SOP head, and the MLM head at the
    masked positions only."""
    h, i, e, v, layers = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.embedding_size,
        cfg.vocab_size,
        cfg.num_hidden_layers,
    )
    tokens = batch * seq
    per_token_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * seq * h  # projections + QK^T and PV
    forward = tokens * (2 * e * h + layers * per_token_layer)
    forward += batch * 2 * (h * h + 2 * h)  # pooler + SOP
    forward += batch * predictions * 2 * (h * e + e * v)  # MLM transform + decoder
    return 3.0 * forward


def synthetic_batch(cfg: AlbertConfig, batch: int, seq: int, predictions: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    positions = np.stack(
        [np.sort(rng.choice(np.arange(1, seq - 1), predictions, replace=False)) for _ in range(batch)]
    )
    return {
        "input_ids": rng.integers(5, cfg.vocab_size, (batch, seq), dtype=np.int32),
        "attention_mask": np.ones((batch, seq), np.int32),
        "token_type_ids": (np.arange(seq)[None, :] >= seq // 2).astype(np.int32).repeat(batch, 0),
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": rng.integers(5, cfg.vocab_size, (batch, predictions), dtype=np.int32),
        "masked_lm_weights": np.ones((batch, predictions), np.float32),
        "sentence_order_label": rng.integers(0, 2, (batch,), dtype=np.int32),
    }


def peak_device_memory() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def optimizer_config(args) -> ml_collections.ConfigDict:
    """The run config keys `run.make_tx` reads: clipping + AdamW/LAMB + the non-finite guard."""
    return ml_collections.ConfigDict(
        dict(
            optimizer=args.optimizer,
            learning_rate=1e-4,
            total_steps=10_000,
            warmup_steps=100,
            weight_decay=0.01,
            clip_norm=1.0,
        )
    )


def time_steps(
    compiled: Any, state: Any, batch: Any, count: int, stream: list | None = None
) -> tuple[Any, list[float]]:
    """Runs the compiled step `count` times, each timed to its metrics being ready; on the batches of
    `stream` in turn (already on the device) when given, else always on `batch`."""
    times = []
    for n in range(count):
        s = time.perf_counter()
        state, metrics = compiled(state, stream[n % len(stream)] if stream else batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - s)
    return state, times


def lower_and_compile(step: Any, *args: Any) -> tuple[Any, dict]:
    """`step.lower(*args).compile()`, timed."""
    t0 = time.perf_counter()
    lowered = step.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, {"lower_s": t1 - t0, "compile_s": t2 - t1, "compile_time_s": t2 - t0}


def measure_ours(cfg: AlbertConfig, args, batch_np: dict, stream_np: list[dict] | None = None) -> dict:
    """Compile and time the project's step; returns its numbers. With `stream_np` (host batches), the
    timed steps take those in turn, all put on the device before the first is timed."""
    mesh = sharding_lib.make_mesh()
    rules = sharding_lib.DEFAULT_RULES
    model = AlbertForPreTraining(cfg)
    tx, schedule = run_lib.make_tx(optimizer_config(args))
    t0 = time.perf_counter()
    state, state_sharding = run_lib.create_train_state(
        lambda rng: init_params(model, rng, args.seq_len), model.apply, tx, mesh, rules, seed=0
    )
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    data_sharding = sharding_lib.batch_sharding(mesh, rules)
    step = trainer.jit_train_step(
        trainer.make_train_step(
            pretrain.pretraining_loss, pretrain.loss_norm, pretrain.summarise, seed=0, schedule=schedule
        ),
        state_sharding,
        data_sharding,
    )
    batch = jax.device_put(batch_np, data_sharding)
    stream = jax.block_until_ready(jax.device_put(stream_np, data_sharding)) if stream_np else None
    with jax.set_mesh(mesh):
        compiled, compile_times = lower_and_compile(step, state, batch)
        state, times = time_steps(
            compiled, state, batch, 0 if args.compile_only else args.warmup + args.steps, stream
        )
        if args.profile and not args.compile_only:
            with jax.profiler.trace(args.profile):
                for _ in range(3):
                    state, metrics = compiled(state, batch)
                jax.block_until_ready(metrics)
    return {
        "params": run_lib.count_params(state.params),
        "init_s": init_s,
        **compile_times,
        "step_time_s": statistics.median(times[args.warmup :]) if times else None,
        **xla_memory(compiled),
        **train_step_parts.scan_residuals(compiled.as_text()),
        "peak_device_bytes": peak_device_memory(),
        "peak_rss_bytes": peak_rss_bytes(),
    }


def xla_memory(compiled: Any) -> dict:
    """XLA's buffer assignment for one step: what the step needs at its peak, known before it runs
    (arguments + outputs + temporaries, less the donated state that outputs reuse)."""
    mem = compiled.memory_analysis()
    if mem is None:
        return {"xla_peak_bytes": None}
    out = {
        f"xla_{k}_bytes": getattr(mem, f"{k}_size_in_bytes")
        for k in ("argument", "output", "alias", "temp", "generated_code")
    }
    out["xla_peak_bytes"] = (
        out["xla_argument_bytes"] + out["xla_output_bytes"] - out["xla_alias_bytes"] + out["xla_temp_bytes"]
    )
    return out


def largest_batch(cfg: AlbertConfig, args, budget_bytes: float) -> tuple[int, dict]:
    """The largest batch whose step fits `budget_bytes` by XLA's buffer assignment (compiles only)."""
    probe = argparse.Namespace(**dict(vars(args), compile_only=True))

    def need(batch: int) -> dict:
        predictions = predictions_per_sequence(args.seq_len)
        return measure_ours(cfg, probe, synthetic_batch(cfg, batch, args.seq_len, predictions))

    fits, fits_mem, low, high = 0, {}, 0, 1
    while True:  # double until it no longer fits, then bisect
        mem = need(high)
        print(f"  batch {high}: {mem['xla_peak_bytes'] / 2**30:.2f} GiB", flush=True)
        if mem["xla_peak_bytes"] > budget_bytes:
            break
        fits, fits_mem, low, high = high, mem, high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        mem = need(mid)
        print(f"  batch {mid}: {mem['xla_peak_bytes'] / 2**30:.2f} GiB", flush=True)
        if mem["xla_peak_bytes"] <= budget_bytes:
            fits, fits_mem, low = mid, mem, mid
        else:
            high = mid
    return fits, fits_mem


def measure_hf_torch(cfg: AlbertConfig, args, batch_np: dict) -> dict:
    """transformers' AlbertForPreTraining with the same config, shapes and AdamW + clipping."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    # On a GPU: the same card, fp32 weights with bf16 autocast (torch's mixed precision) for --dtype bfloat16.
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    hf_cfg = transformers.AlbertConfig(**{k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"})
    torch.manual_seed(0)
    model = transformers.AlbertForPreTraining(hf_cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, eps=1e-6)
    labels = np.full(batch_np["input_ids"].shape, -100, np.int64)
    np.put_along_axis(labels, batch_np["masked_lm_positions"], batch_np["masked_lm_ids"], axis=1)
    inputs = {
        "input_ids": torch.from_numpy(batch_np["input_ids"].astype(np.int64)),
        "attention_mask": torch.from_numpy(batch_np["attention_mask"].astype(np.int64)),
        "token_type_ids": torch.from_numpy(batch_np["token_type_ids"].astype(np.int64)),
        "labels": torch.from_numpy(labels),
        "sentence_order_label": torch.from_numpy(batch_np["sentence_order_label"].astype(np.int64)),
    }
    inputs = {k: v.to(device) for k, v in inputs.items()}

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()  # waits for the device
        return loss

    t0 = time.perf_counter()
    step()  # the first step allocates the optimizer state
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(args.warmup - 1, 0) + args.steps):
        s = time.perf_counter()
        step()
        times.append(time.perf_counter() - s)
    return {
        "first_step_s": first,
        "step_time_s": statistics.median(times[-args.steps :]),
        "device": device,
        "attention": getattr(model.config, "_attn_implementation", None),
    }


def measure_unrolled(cfg: AlbertConfig, args, batch_np: dict, stream_np: list[dict] | None = None) -> dict:
    """The same step with the layers unrolled (HF Flax's layout): compile and step time."""
    unrolled = dict(vars(args), profile="")
    return measure_ours(cfg.replace(scan_layers=False), argparse.Namespace(**unrolled), batch_np, stream_np)


HF_FLAX_VENV_HOWTO = (
    "python3 -m venv hfflax-venv, then pip install 'transformers<5' into it with this python's jax, jaxlib, "
    "flax and optax versions and albert_jax's training dependencies (README.md, Benchmarks)"
)


def library_versions() -> dict[str, str]:
    """What compile times depend on: a side python for --compare hf-flax must report the same."""
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
    }


def check_hf_flax_python(p: argparse.ArgumentParser, args) -> None:
    """--compare hf-flax needs a side python (transformers 4.x); refuse early, saying how to make one."""
    if not args.hf_flax_python:
        p.error(
            "--compare hf-flax runs HF's Flax ALBERT, which transformers 5 dropped, under a side python: "
            f"pass --hf-flax-python PATH or set HF_FLAX_PYTHON; make one with: {HF_FLAX_VENV_HOWTO}"
        )
    if not (os.path.isfile(args.hf_flax_python) and os.access(args.hf_flax_python, os.X_OK)):
        p.error(f"--hf-flax-python {args.hf_flax_python!r} is not an executable python")


class HfFlaxStep:
    """`hf_flax_step.py` under the side python: HF's Flax ALBERT in our step, compiled and timed there.

    The child stays up so that further compiles alternate with ours (`compile_again`)."""

    def __init__(self, args, argv: list[str]):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_flax_step.py")
        self.proc = subprocess.Popen(
            [args.hf_flax_python, script, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.first = self._read()
        mine = library_versions()
        if self.first["versions"] != mine:
            self.close()
            raise SystemExit(
                f"error: --hf-flax-python has {self.first['versions']}, this python {mine}; compile times "
                "are comparable only with the same versions"
            )

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.proc.wait()
        raise SystemExit(f"error: the HF Flax step ({self.proc.args[0]}) exited with {self.proc.returncode}")

    def compile_again(self) -> dict:
        self.proc.stdin.write("compile\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def hf_flax_argv(args) -> list[str]:
    """The flags `hf_flax_step.py` needs: the same shapes, dtype, optimizer and step counts."""
    argv = [f"--preset={args.preset}", f"--batch-size={args.batch_size}", f"--seq-len={args.seq_len}"]
    argv += [f"--steps={args.steps}", f"--warmup={args.warmup}", f"--dtype={args.dtype}"]
    argv += [f"--optimizer={args.optimizer}", f"--layers={args.layers}", f"--vocab-size={args.vocab_size}"]
    return argv + (["--compile-only"] if args.compile_only else [])


def fastest(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["compile_time_s"])


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    kind = jax.devices()[0].device_kind
    for (prefix, dtype), tflops in PEAK_TFLOPS.items():
        if kind.startswith(prefix) and dtype == args.dtype:
            return tflops
    return None


def build_parser() -> argparse.ArgumentParser:
    """The flags, shared with `hf_flax_step.py` (which takes the shape and optimizer ones)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base", help="base|large|xlarge|xxlarge[-v1|-v2]")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--remat", default="auto", help="auto|none|full|dots|dots_with_no_batch_dims")
    p.add_argument("--scan-unroll", type=int, default=1, help="layers per scan iteration (scan_unroll)")
    p.add_argument("--fused-qkv", action="store_true", help="Q, K, V as one matmul (fused_qkv)")
    p.add_argument(
        "--fused-kernels", action="store_true", help="Pallas LayerNorm/GELU kernels (fused_kernels)"
    )
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "lamb"))
    p.add_argument("--attention", default="auto", choices=("auto", "xla", "cudnn"), help="attention_impl")
    p.add_argument("--layers", type=int, default=0, help="override num_hidden_layers (depth scaling)")
    p.add_argument("--vocab-size", type=int, default=0)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (CPUs have no table)")
    p.add_argument(
        "--compare",
        default="",
        help="comma-separated: hf-torch (step time), unrolled and hf-flax (compile and step time)",
    )
    p.add_argument(
        "--hf-flax-python",
        default=os.environ.get("HF_FLAX_PYTHON", ""),
        help="python of the side venv with transformers 4.x (Flax) for --compare hf-flax "
        "(default: $HF_FLAX_PYTHON)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="compile each compared step this many times, alternating sides; each side's fastest is reported",
    )
    p.add_argument("--unrolled", action="store_true", help="time the step with scan_layers=False")
    p.add_argument("--profile", default="", help="also trace 3 steps with jax.profiler into this directory")
    p.add_argument("--compile-only", action="store_true", help="compile and report XLA's memory; no steps")
    p.add_argument(
        "--tokens",
        default="uniform",
        choices=("uniform", "real"),
        help="uniform: random ids (default); real: batches of the data pipeline (fetched before timing)",
    )
    p.add_argument("--corpus", default="", help="--tokens real: corpus files (default: the embedded corpus)")
    p.add_argument(
        "--vocab",
        default="",
        help="--tokens real: SentencePiece model (default: the test fixture if its size is the model's, "
        "else one trained on the corpus); the model's vocab_size follows it",
    )
    p.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the matmul ceiling (the step's matmuls alone, at its shapes and dtype)",
    )
    p.add_argument(
        "--fit-memory",
        type=float,
        default=0.0,
        help="also find the largest batch whose step fits this many GiB",
    )
    return p


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    compare = [c for c in args.compare.split(",") if c]
    for c in compare:
        if c not in COMPARE:
            p.error(f"unknown --compare {c!r}; choose from {', '.join(COMPARE)}")
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    if "hf-flax" in compare:
        check_hf_flax_python(p, args)
        if args.tokens == "real":
            p.error("--compare hf-flax feeds uniform random ids on its side; drop --tokens real")
    if args.compile_only and "hf-torch" in compare:
        p.error("--compare hf-torch times steps; drop --compile-only")
    if "hf-torch" in compare and args.optimizer != "adamw":
        p.error(
            "--compare hf-torch needs --optimizer adamw (torch has no LAMB; the same optimizer on both sides)"
        )

    cfg = model_config(args)
    predictions = predictions_per_sequence(args.seq_len)
    stream, token_source = None, "uniform random ids"
    if args.tokens == "real":
        tok, vocab = train_step_parts.real_tokenizer(args.corpus, args.vocab, cfg.vocab_size)
        if tok.vocab_size != cfg.vocab_size:
            print(f"vocab_size {cfg.vocab_size} -> {tok.vocab_size} ({vocab})")
            cfg = cfg.replace(vocab_size=tok.vocab_size)
        # Fetched to host now: the timed steps do not wait on the input pipeline.
        stream, corpus = train_step_parts.real_batches(
            args.corpus, tok, args.batch_size, args.seq_len, predictions, args.warmup + args.steps
        )
        batch, token_source = stream[0], f"{corpus}, vocab {vocab}"
    else:
        batch = synthetic_batch(cfg, args.batch_size, args.seq_len, predictions)
    tokens = args.batch_size * args.seq_len
    flops = model_flops_per_step(cfg, args.batch_size, args.seq_len, predictions)
    print(
        f"device {jax.devices()[0].device_kind} x{jax.device_count()}  preset {args.preset}  "
        f"layers {cfg.num_hidden_layers}  batch {args.batch_size}  seq {args.seq_len}  {args.dtype}  "
        f"remat {args.remat}  optimizer {args.optimizer}  attention {args.attention}"
        + ("  unrolled" if args.unrolled else "")
        + f"  tokens {args.tokens} ({token_source})"
    )
    # HF Flax first: a side python that cannot run it fails before ours is measured.
    hf_flax = HfFlaxStep(args, hf_flax_argv(args)) if "hf-flax" in compare else None
    ours = measure_ours(cfg, args, batch, stream)
    # Compile times vary by tens of percent on a shared machine: compile the compared steps `--repeat`
    # times, alternating sides (each in its own warm process), and keep each side's fastest.
    compile_only = argparse.Namespace(**dict(vars(args), compile_only=True, profile=""))
    ours_runs, unrolled_runs, hf_flax_runs = [ours], [], []
    for i in range(args.repeat):
        if i:
            ours_runs.append(measure_ours(cfg, compile_only, batch))
        if "unrolled" in compare:
            unrolled_runs.append(measure_unrolled(cfg, args if i == 0 else compile_only, batch, stream))
        if hf_flax:
            hf_flax_runs.append(hf_flax.first if i == 0 else hf_flax.compile_again())
    if hf_flax:
        hf_flax.close()
    ours.update({k: fastest(ours_runs)[k] for k in ("lower_s", "compile_s", "compile_time_s")})
    step_s = ours["step_time_s"]
    tflops = flops / step_s / 1e12 if step_s else None
    peak = peak_tflops(args)
    # After the step (its state freed), so that the step's peak memory is its own.
    ceiling = (
        train_step_parts.matmul_ceiling(cfg, args.batch_size, args.seq_len, predictions, flops)
        if step_s and not args.no_ceiling
        else {}
    )
    ceiling_tflops = ceiling.get("matmul_ceiling_tflops")
    peak_mem = ours["peak_device_bytes"] or ours["peak_rss_bytes"]
    result = {
        "preset": args.preset,
        "layers": cfg.num_hidden_layers,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "dtype": args.dtype,
        "remat": args.remat,
        "remat_resolved": modeling.remat_policy(cfg),
        "scan_unroll": cfg.scan_unroll,
        "fused_qkv": cfg.fused_qkv,
        "fused_kernels": cfg.fused_kernels,
        "optimizer": args.optimizer,
        "attention": args.attention,
        "scan_layers": cfg.scan_layers,
        "device": jax.devices()[0].device_kind,
        "params": ours["params"],
        "tokens_per_sec": tokens / step_s if step_s else None,
        "step_time_s": step_s,
        "compile_time_s": ours["compile_time_s"],
        "lower_time_s": ours["lower_s"],
        "compile_repeats": args.repeat,
        "model_tflops_per_sec": tflops,
        "mfu": tflops / peak if peak and tflops else None,
        "matmul_ceiling_tflops": ceiling_tflops,
        "fraction_of_ceiling": tflops / ceiling_tflops if ceiling_tflops and tflops else None,
        "matmul_ceiling_time_s": ceiling.get("matmul_ceiling_time_s"),
        "tokens": args.tokens,
        "vocab_size": cfg.vocab_size,
        # Measured: the device allocator's peak where there is one, else the process's peak RSS.
        "peak_memory_bytes": peak_mem,
        "peak_memory_kind": "device" if ours["peak_device_bytes"] else "process_rss",
        **{k: v for k, v in ours.items() if k.startswith(("xla_", "scan_"))},
    }
    xla_peak = ours["xla_peak_bytes"]
    print(
        f"ours: {ours['params']:,} params  compile {ours['compile_time_s']:.2f} s "
        f"(lower {ours['lower_s']:.2f} + XLA {ours['compile_s']:.2f}"
        + (f", fastest of {args.repeat}" if args.repeat > 1 else "")
        + ")"
        + (
            f"  step {step_s * 1e3:.1f} ms  {result['tokens_per_sec']:,.0f} tokens/s"
            f"  {tflops:.3f} model TFLOP/s"
            if step_s
            else ""
        )
        + (f"  MFU {result['mfu']:.1%}" if result["mfu"] else "")
        + (
            f"  matmul ceiling {ceiling_tflops:.3f} TFLOP/s -> {result['fraction_of_ceiling']:.1%} of it"
            if ceiling_tflops
            else ""
        )
        + f"  peak memory {peak_mem / 2**30:.2f} GiB ({result['peak_memory_kind']})"
        + (
            f"  XLA step buffers {xla_peak / 2**30:.2f} GiB (temp {ours['xla_temp_bytes'] / 2**30:.2f})"
            if xla_peak
            else ""
        )
    )
    if args.fit_memory:
        print(f"largest batch within {args.fit_memory:g} GiB (XLA buffer assignment):")
        fits, mem = largest_batch(cfg, args, args.fit_memory * 2**30)
        result["fit_memory_gib"] = args.fit_memory
        result["largest_batch"] = fits
        result["largest_batch_xla_peak_bytes"] = mem.get("xla_peak_bytes")
        print(f"  -> batch {fits}")
    if "unrolled" in compare:
        unrolled = fastest(unrolled_runs)
        result["unrolled_compile_time_s"] = unrolled["compile_time_s"]
        result["compile_speedup_vs_unrolled"] = unrolled["compile_time_s"] / ours["compile_time_s"]
        unrolled_step = unrolled_runs[0]["step_time_s"]
        if unrolled_step and step_s:
            result["unrolled_step_time_s"] = unrolled_step
            result["unrolled_tokens_per_sec"] = tokens / unrolled_step
            result["speedup_vs_unrolled"] = unrolled_step / step_s
        print(
            f"unrolled ({cfg.num_hidden_layers} layers, remat {modeling.remat_policy(cfg.replace(scan_layers=False))}): "
            f"compile {unrolled['compile_time_s']:.2f} s  -> scanned compiles "
            f"{result['compile_speedup_vs_unrolled']:.2f}x faster"
            + (
                f"; step {unrolled_step * 1e3:.1f} ms {result['unrolled_tokens_per_sec']:,.0f} tokens/s -> "
                f"scanned is {result['speedup_vs_unrolled']:.2f}x tokens/s"
                if "speedup_vs_unrolled" in result
                else ""
            )
        )
    if hf_flax:
        hf = fastest(hf_flax_runs)
        step = hf_flax_runs[0]["step_time_s"]
        result.update(
            hf_flax_transformers=hf_flax_runs[0]["transformers"],
            hf_flax_params=hf_flax_runs[0]["params"],
            hf_flax_compile_time_s=hf["compile_time_s"],
            hf_flax_lower_time_s=hf["lower_s"],
            hf_flax_step_time_s=step,
            hf_flax_tokens_per_sec=tokens / step if step else None,
            compile_speedup_vs_hf_flax=hf["compile_time_s"] / ours["compile_time_s"],
            speedup_vs_hf_flax=step / step_s if step and step_s else None,
        )
        print(
            f"HF Flax (transformers {result['hf_flax_transformers']}, {result['hf_flax_params']:,} params): "
            f"compile {hf['compile_time_s']:.2f} s (lower {hf['lower_s']:.2f} + XLA {hf['compile_s']:.2f})"
            + (
                f"  step {step * 1e3:.1f} ms  {result['hf_flax_tokens_per_sec']:,.0f} tokens/s"
                if step
                else ""
            )
            + f"  -> ours compiles {result['compile_speedup_vs_hf_flax']:.2f}x faster"
            + (f", ours is {result['speedup_vs_hf_flax']:.2f}x tokens/s" if step and step_s else "")
        )
    if "hf-torch" in compare:
        hf = measure_hf_torch(cfg, args, batch)
        result["hf_torch_tokens_per_sec"] = tokens / hf["step_time_s"]
        result["hf_torch_step_time_s"] = hf["step_time_s"]
        result["hf_torch_first_step_s"] = hf["first_step_s"]
        result["hf_torch_device"], result["hf_torch_attention"] = hf["device"], hf["attention"]
        result["speedup_vs_hf_torch"] = result["tokens_per_sec"] / result["hf_torch_tokens_per_sec"]
        print(
            f"HF torch ({hf['device']}, {hf['attention']} attention): step {hf['step_time_s'] * 1e3:.1f} ms"
            f"  {result['hf_torch_tokens_per_sec']:,.0f} tokens/s  "
            f"first step {hf['first_step_s']:.2f} s  -> ours is {result['speedup_vs_hf_torch']:.2f}x"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
