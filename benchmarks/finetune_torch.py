"""Fine-tuning throughput against Hugging Face PyTorch: `train.py`'s loop and a plain torch loop, side by side.

Usage::

    python benchmarks/finetune_torch.py [--data-dir ../shared/data/glue] [--preset small|base]
        [--max-seq-length 64 --max-seq-length 512] [--train-rows 4000] [--dev-rows N] [--batch-size 32]
        [--steps 250] [--skip-torch] [--config KEY VALUE ...]

`--config model.remat_policy none` (repeatable) overrides a key of our side's config, e.g. to time a switch.

Builds one random-init `AlbertForSequenceClassification` (`small`: the 1.39M-parameter model of issue 21,
hidden 128, 4 layers, 8000-piece vocabulary trained on the rows; `base`: ALBERT-base's shape) and saves it
as an HF directory. Both sides start from those weights and train on the same SST-2 rows with batch 32,
the same steps, learning rate, linear warmup and decay, weight decay (not on LayerNorm and biases) and
gradient clipping:

- ours: `finetune.run`, what `train.py` calls (grain pipeline, length buckets, jitted step, metrics,
  checkpoints, the final evaluation), run twice; the first run fills the persistent compilation cache,
  the second is timed from its metrics.jsonl (the train loop only), so compilation is reported apart;
- HF: `transformers.AlbertForSequenceClassification.from_pretrained(dir)` in the loop HF users write
  (pre-tokenized rows, each batch padded to its longest row, `torch.optim.AdamW`,
  `get_linear_schedule_with_warmup`, `clip_grad_norm_`, `loss.item()` every step).

Both sides run in this one process, restarted at import with glibc's huge pages as `train.py` is
(`albert_jax.host_memory`); `ALBERT_JAX_MALLOC=system` runs both under glibc's defaults.

Prints one line per side and length, then one JSON object (the last line) with examples/s, padded tokens
per row and the ratio at each max length. A benchmark, not a test.
"""

from __future__ import annotations

# Restarted at `import albert_jax` with glibc's huge pages, as train.py is (albert_jax.host_memory).
ALBERT_JAX_HUGE_PAGES = True

import argparse
import ast
import contextlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import safetensors.numpy

from albert_jax import workdir as workdir_lib
from albert_jax.config import AlbertConfig
from albert_jax.data import finetuning as finetuning_data
from albert_jax.hf import save_pretrained
from albert_jax.modeling import AlbertForSequenceClassification, init_params
from albert_jax.tasks.glue import GlueTask
from albert_jax.tokenizer import AlbertTokenizer, train_tokenizer
from albert_jax.training import finetune

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
MODELS = {
    # Issue 21's model: 1.39M parameters with an 8000-piece vocabulary.
    "small": dict(
        embedding_size=128,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=768,
    ),
    "base": AlbertConfig.from_preset("base").to_hf_dict(),
}
MODEL_KEYS = (
    "embedding_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)
LEARNING_RATE, WEIGHT_DECAY, CLIP_NORM, DROPOUT, CLASSIFIER_DROPOUT = 1e-5, 0.01, 1.0, 0.0, 0.1


def write_rows(data_dir: str, out: str, train_rows: int, dev_rows: int | None) -> tuple[list[str], str]:
    """A glue_data root at `out` with SST-2's first `train_rows` training rows and `dev_rows` dev rows
    (None: all); returns every training sentence (4000 rows hold too few pieces for an 8000-piece
    vocabulary) and the root."""
    os.makedirs(os.path.join(out, "SST-2"))
    for split, rows in (("train", train_rows), ("dev", dev_rows)):
        with open(os.path.join(data_dir, "SST-2", f"{split}.tsv"), encoding="utf-8") as f:
            lines = f.readlines()
        with open(os.path.join(out, "SST-2", f"{split}.tsv"), "w", encoding="utf-8") as f:
            f.writelines(lines[: None if rows is None else rows + 1])  # and the header
    return [e.text_a for e in GlueTask("sst2", data_dir).read("train")], out


def build_model(tmp: str, sentences: list[str], preset: str, max_position: int) -> str:
    """The HF directory (config.json, model.safetensors, spiece.model) both sides start from."""
    train_tokenizer(sentences, os.path.join(tmp, "spiece"), vocab_size=8000)
    tokenizer = AlbertTokenizer(os.path.join(tmp, "spiece.model"))
    shape = {k: MODELS[preset][k] for k in MODEL_KEYS}
    cfg = AlbertConfig(
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=max_position,
        num_labels=2,
        hidden_dropout_prob=DROPOUT,
        attention_probs_dropout_prob=DROPOUT,
        classifier_dropout_prob=CLASSIFIER_DROPOUT,
        **shape,
    )
    model = AlbertForSequenceClassification(cfg)
    params = jax.device_get(nn.unbox(jax.jit(lambda r: init_params(model, r, 8))(jax.random.key(0))))
    out = os.path.join(tmp, "hf_model")
    save_pretrained(out, model, params)
    tokenizer.save_pretrained(out)
    return out


def ours(hf_dir: str, glue_dir: str, tmp: str, args, max_len: int) -> dict[str, Any]:
    """`finetune.run` as `train.py` runs it: once to compile (filling the cache), once timed."""
    sys.path.insert(0, REPO)  # configs/ is not installed
    from configs import glue

    config = glue.get_config("task=sst2")
    config.init_from, config.data_dir = hf_dir, glue_dir
    config.max_seq_length, config.batch_size = max_len, args.batch_size
    config.total_steps, config.warmup_steps = args.steps, args.steps // 10
    config.learning_rate, config.weight_decay, config.clip_norm = LEARNING_RATE, WEIGHT_DECAY, CLIP_NORM
    config.dropout, config.classifier_dropout = DROPOUT, CLASSIFIER_DROPOUT
    config.eval_every = 0  # the final evaluation runs after the timed loop
    config.compilation_cache_dir = os.path.join(tmp, f"cache_{max_len}")
    for key, value in args.config:
        *parents, name = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        old = node[name]
        if isinstance(old, bool):
            node[name] = value.lower() == "true"
        else:
            node[name] = ast.literal_eval(value) if isinstance(old, tuple) else type(old)(value)
    walls = []
    for attempt in ("compile", "timed"):
        workdir = os.path.join(tmp, f"ours_{max_len}_{attempt}")
        start = time.perf_counter()
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            finetune.run(config, workdir)
        walls.append(time.perf_counter() - start)
    records = [
        r for r in workdir_lib.read_jsonl(workdir_lib.path(workdir, workdir_lib.METRICS)) if "train/loss" in r
    ]
    seconds, prev = [], 0
    for r in records:
        seconds.append((r["step"] - prev) / r["train/steps_per_sec"])
        prev = r["step"]
    # Padded tokens per row: the same batches, from the same pipeline.
    task = GlueTask("sst2", glue_dir)
    tokenizer = AlbertTokenizer.from_pretrained(hf_dir)
    features = task.features(task.read("train"), tokenizer, max_len, training=True)
    buckets = tuple(config.length_buckets) or finetuning_data.default_buckets(max_len)
    if config.length_buckets:
        buckets = tuple(sorted({*buckets, max_len}))
    it = iter(
        finetuning_data.train_dataset(
            features.inputs, global_batch_size=args.batch_size, seed=config.seed, buckets=buckets
        )
    )
    lengths = [next(it)["input_ids"].shape[1] for _ in range(args.steps)]
    return dict(
        examples_per_sec=args.steps * args.batch_size / sum(seconds),
        steady_examples_per_sec=(args.steps - records[0]["step"]) * args.batch_size / sum(seconds[1:])
        if len(seconds) > 1
        else None,
        tokens_per_row=float(np.mean(lengths)),
        compile_s=walls[0] - walls[1],
        first_run_s=walls[0],
        cached_run_s=walls[1],
        final_loss=records[-1]["train/loss"],
        buckets=list(buckets),
    )


def torch_loop(hf_dir: str, glue_dir: str, args, max_len: int) -> dict[str, Any]:
    """The plain PyTorch loop on the same rows (tokenized by the same vocabulary)."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    task = GlueTask("sst2", glue_dir)
    features = task.features(
        task.read("train"), AlbertTokenizer.from_pretrained(hf_dir), max_len, training=True
    )
    inputs = {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in features.inputs.items()}
    lengths = inputs["attention_mask"].sum(-1)
    model = transformers.AlbertForSequenceClassification.from_pretrained(hf_dir)
    model.train()
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": WEIGHT_DECAY,
        },
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LEARNING_RATE)
    sched = transformers.get_linear_schedule_with_warmup(opt, args.steps // 10, args.steps)
    n = len(lengths)
    order, pos = torch.randperm(n), 0
    padded, times, loss = [], [], float("nan")
    start = time.perf_counter()
    for _ in range(args.steps):
        if pos + args.batch_size > n:
            order, pos = torch.randperm(n), 0
        rows = order[pos : pos + args.batch_size]
        pos += args.batch_size
        length = int(lengths[rows].max())  # dynamic padding: the batch's longest row
        padded.append(length)
        batch = {
            "input_ids": inputs["input_ids"][rows, :length],
            "attention_mask": inputs["attention_mask"][rows, :length],
            "token_type_ids": inputs["token_type_ids"][rows, :length],
            "labels": inputs["labels"][rows],
        }
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        opt.step()
        sched.step()
        opt.zero_grad()
        loss = out.loss.item()
        times.append(time.perf_counter())
    skip = args.steps // 5  # the first fifth of the steps warms up
    return dict(
        examples_per_sec=args.steps * args.batch_size / (times[-1] - start),
        steady_examples_per_sec=(args.steps - skip) * args.batch_size / (times[-1] - ([start] + times)[skip]),
        tokens_per_row=float(np.mean(padded)),
        final_loss=loss,
        torch=torch.__version__,
        transformers=transformers.__version__,
    )


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor()
    name = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), ""
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []
    )
    extra = [f for f in ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return f"{name} ({os.cpu_count()} cores{', ' + ' '.join(extra) if extra else ''})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(REPO), "shared", "data", "glue"))
    p.add_argument("--preset", choices=sorted(MODELS), default="small")
    p.add_argument("--max-seq-length", type=int, action="append", help="repeatable; default 64 and 512")
    p.add_argument("--train-rows", type=int, default=4000)
    p.add_argument("--dev-rows", type=int, default=None, help="dev rows evaluated at the end (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--skip-torch", action="store_true", help="time only ours")
    p.add_argument(
        "--config",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a config override for ours",
    )
    args = p.parse_args()
    lengths = sorted(set(args.max_seq_length or [64, 512]))
    logging.getLogger().setLevel(logging.WARNING)
    results: dict[str, Any] = {
        "benchmark": "finetune_torch",
        "task": "sst2",
        "preset": args.preset,
        "train_rows": args.train_rows,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "config": dict(args.config),  # our side's --config overrides
        "cpu": cpu_name(),
        "jax": jax.__version__,
        "platform": jax.devices()[0].platform,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),  # both sides
        "by_max_seq_length": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        sentences, glue_dir = write_rows(
            args.data_dir, os.path.join(tmp, "glue"), args.train_rows, args.dev_rows
        )
        hf_dir = build_model(tmp, sentences, args.preset, max(512, *lengths))
        weights = safetensors.numpy.load_file(os.path.join(hf_dir, "model.safetensors"))
        results["parameters"] = int(sum(v.size for v in weights.values()))
        for max_len in lengths:
            row = {"ours": ours(hf_dir, glue_dir, tmp, args, max_len)}
            print(f"max_seq_length {max_len} ours: {json.dumps(row['ours'])}", flush=True)
            if not args.skip_torch:
                row["hf_torch"] = torch_loop(hf_dir, glue_dir, args, max_len)
                print(f"max_seq_length {max_len} hf torch: {json.dumps(row['hf_torch'])}", flush=True)
                row["ratio"] = row["ours"]["examples_per_sec"] / row["hf_torch"]["examples_per_sec"]
                steady = row["ours"]["steady_examples_per_sec"]
                if steady is not None:  # None: a run too short for a second logged interval
                    row["steady_ratio"] = steady / row["hf_torch"]["steady_examples_per_sec"]
            results["by_max_seq_length"][str(max_len)] = row
    print(json.dumps(results))


if __name__ == "__main__":
    main()
