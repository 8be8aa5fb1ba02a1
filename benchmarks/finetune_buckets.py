"""Length bucketing in fine-tuning: training examples/s with buckets vs padding every batch to max_seq_length.

Usage::

    python benchmarks/finetune_buckets.py [--data-dir ../shared/data/glue] [--task sst2] [--preset base]
        [--max-seq-length 512] [--batch-size 8] [--steps 4] [--examples 20000]

Reads the task's real training split, featurises it with the real tokenizer path (a vocabulary
trained on the split), and times the real fine-tuning step (`trainer.make_train_step` with the task's
loss, ALBERT's AdamW) on the same batches in both modes, after compiling every shape first. Prints
examples/s, the share of padded tokens each way, and the ratio. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import ml_collections

from albert_jax import sharding as sharding_lib
from albert_jax.config import AlbertConfig
from albert_jax.data import finetuning as finetuning_data
from albert_jax.data.loader import make_global_batch
from albert_jax.modeling import AlbertForSequenceClassification, init_params
from albert_jax.tasks.glue import GlueTask
from albert_jax.tokenizer import AlbertTokenizer, train_tokenizer
from albert_jax.training import finetune, trainer
from albert_jax.training import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(REPO), "shared", "data", "glue"))
    p.add_argument("--task", default="sst2")
    p.add_argument("--preset", default="base")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--examples", type=int, default=20000, help="training examples read (and tokenized)")
    args = p.parse_args()

    task = GlueTask(args.task, args.data_dir)
    examples = task.read("train")[: args.examples]
    with tempfile.TemporaryDirectory() as tmp:
        texts = [e.text_a for e in examples] + [e.text_b for e in examples if e.text_b]
        train_tokenizer(texts, os.path.join(tmp, "spiece"), vocab_size=8000)
        tokenizer = AlbertTokenizer(os.path.join(tmp, "spiece.model"))
    features = task.features(examples, tokenizer, args.max_seq_length, training=True)
    cfg = AlbertConfig.from_preset(args.preset, vocab_size=tokenizer.vocab_size, num_labels=task.num_labels)
    model = AlbertForSequenceClassification(cfg)
    mesh = sharding_lib.make_mesh()
    rules = sharding_lib.DEFAULT_RULES
    sharding = sharding_lib.batch_sharding(mesh, rules)
    run_cfg = ml_collections.ConfigDict(
        dict(
            optimizer="adamw",
            learning_rate=1e-5,
            total_steps=1000,
            warmup_steps=100,
            weight_decay=0.01,
            clip_norm=1.0,
        )
    )
    tx, schedule = run_lib.make_tx(run_cfg)
    loss_fn, norm_fn = finetune.make_loss(task)
    step = jax.jit(
        trainer.make_train_step(loss_fn, norm_fn, finetune.summarise, seed=0, schedule=schedule),
        donate_argnums=0,
    )
    results = {}
    for name, buckets in (
        ("padded to max_seq_length", (args.max_seq_length,)),
        ("length buckets", finetuning_data.default_buckets(args.max_seq_length)),
    ):
        state, _ = run_lib.create_train_state(
            lambda r: init_params(model, r, 8), model.apply, tx, mesh, rules, 0
        )
        it = iter(
            finetuning_data.train_dataset(
                features.inputs, global_batch_size=args.batch_size, seed=0, buckets=buckets
            )
        )
        batches = [next(it) for _ in range(args.steps)]
        for length in sorted({b["input_ids"].shape[1] for b in batches}):  # compile every shape first
            warm = next(b for b in batches if b["input_ids"].shape[1] == length)
            state, m = step(state, make_global_batch(warm, sharding))
            jax.block_until_ready(m)
        start = time.perf_counter()
        for b in batches:
            state, m = step(state, make_global_batch(b, sharding))
        jax.block_until_ready(m)
        elapsed = time.perf_counter() - start
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        padded = sum(b["input_ids"].size for b in batches)
        results[name] = args.steps * args.batch_size / elapsed
        print(
            f"{name:>26}: {results[name]:8.2f} examples/s, {1 - real / padded:.0%} of tokens are padding, "
            f"lengths {sorted({b['input_ids'].shape[1] for b in batches})}"
        )
    ratio = results["length buckets"] / results["padded to max_seq_length"]
    print(
        f"length buckets are {ratio:.1f}x faster ({args.task}, ALBERT-{args.preset}, max_seq_length "
        f"{args.max_seq_length}, batch {args.batch_size}, {jax.devices()[0].platform})"
    )


if __name__ == "__main__":
    main()
