"""Fine-tuning batches: length buckets, per-process blocks, padded evaluation, one prediction per row."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from albert_jax import AlbertConfig, AlbertForSequenceClassification, init_params
from albert_jax import sharding as sharding_lib
from albert_jax.data import finetuning
from albert_jax.data.loader import make_global_batch
from albert_jax.training import finetune


def _inputs(n=37, t=64, seed=0, choices=None):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, t + 1, n)
    shape = (n, t) if choices is None else (n, choices, t)
    mask = (np.arange(t) < (lengths[:, None] if choices is None else lengths[:, None, None])).astype(np.int32)
    mask = np.broadcast_to(mask, shape).copy()
    ids = np.where(mask > 0, rng.integers(5, 100, shape), 0).astype(np.int32)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros(shape, np.int32),
        "labels": np.arange(n, dtype=np.int32),  # the row number, to follow rows through batching
    }


@pytest.mark.parametrize(
    "max_len,expected",
    [
        (512, (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512)),
        (128, (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128)),
        (100, (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 100)),
        (20, (8, 16, 20)),
        (8, (8,)),
    ],
)
def test_default_buckets(max_len, expected):
    assert finetuning.default_buckets(max_len) == expected


@pytest.mark.parametrize("choices", [None, 4])
def test_train_batches_are_cut_to_a_bucket_that_keeps_every_token(choices):
    inputs = _inputs(choices=choices)
    buckets = (16, 32, 64)
    it = iter(finetuning.train_dataset(inputs, global_batch_size=8, seed=3, buckets=buckets))
    seen = []
    for _ in range(20):
        b = next(it)
        length = b["input_ids"].shape[-1]
        rows = b["labels"]
        real = finetuning.row_lengths({"attention_mask": inputs["attention_mask"][rows]}).max()
        assert (
            length in buckets
            and length >= real
            and (length == 16 or real > buckets[buckets.index(length) - 1])
        )
        np.testing.assert_array_equal(b["input_ids"], inputs["input_ids"][rows, ..., :length])
        seen.extend(rows.tolist())
    assert set(seen) == set(range(37))  # 160 rows drawn: more than four epochs of 37


def test_processes_agree_on_the_bucket_and_split_the_global_batch():
    inputs = _inputs()
    kwargs = dict(global_batch_size=8, seed=1, buckets=(16, 32, 64))
    one = iter(finetuning.train_dataset(inputs, **kwargs, process_index=0, process_count=1))
    p0 = iter(finetuning.train_dataset(inputs, **kwargs, process_index=0, process_count=2))
    p1 = iter(finetuning.train_dataset(inputs, **kwargs, process_index=1, process_count=2))
    for _ in range(10):
        g, a, b = next(one), next(p0), next(p1)
        assert a["input_ids"].shape == b["input_ids"].shape == (4, g["input_ids"].shape[1])
        np.testing.assert_array_equal(np.concatenate([a["labels"], b["labels"]]), g["labels"])


@pytest.mark.parametrize("processes", [1, 2])
def test_eval_batches_cover_every_row_once(processes):
    inputs = _inputs(n=21)
    got = []
    blocks = [
        list(
            finetuning.eval_batches(
                inputs, global_batch_size=8, buckets=(16, 64), process_index=p, process_count=processes
            )
        )
        for p in range(processes)
    ]
    for parts in zip(*blocks):
        valid = parts[0][1]
        rows = np.concatenate([local["labels"] for local, _ in parts])
        assert len(rows) == 8
        got.extend(rows[valid].tolist())
    assert got == list(range(21))


TINY_MODEL = dict(
    vocab_size=100,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def test_predict_gives_one_row_per_example_equal_to_the_forward_pass():
    cfg = AlbertConfig(**TINY_MODEL, num_labels=3)
    model = AlbertForSequenceClassification(cfg)
    params = nn.unbox(init_params(model, jax.random.key(0)))
    inputs = _inputs(n=21)
    mesh = sharding_lib.make_mesh()
    sharding = sharding_lib.batch_sharding(mesh)

    @jax.jit
    def predict_fn(p, batch):
        return {"logits": model.apply({"params": p}, batch["input_ids"], batch["attention_mask"]).logits}

    out = finetune.predict(
        predict_fn,
        params,
        inputs,
        global_batch_size=8,
        buckets=(16, 32, 64),
        make_batch=functools.partial(make_global_batch, sharding=sharding),
    )
    assert out["logits"].shape == (21, 3)
    direct = model.apply({"params": params}, inputs["input_ids"], inputs["attention_mask"]).logits
    np.testing.assert_allclose(out["logits"], direct, atol=2e-5)  # bucketing never changes a prediction


def test_a_training_batch_cut_to_its_bucket_gives_the_loss_and_gradients_of_full_padding():
    """Buckets change only padding: the fine-tuning loss and its gradients on a batch cut to the default
    bucket match those on the same rows padded to max_seq_length."""
    from albert_jax.tasks.glue import GlueTask

    cfg = AlbertConfig(**TINY_MODEL, num_labels=2)
    model = AlbertForSequenceClassification(cfg)
    params = nn.unbox(init_params(model, jax.random.key(0)))
    inputs = _inputs(n=8, t=64, seed=5)
    inputs["attention_mask"][:, 30:] = 0  # the longest row has 30 tokens: bucket 32
    inputs["input_ids"][:, 30:] = 0
    inputs["labels"] = inputs["labels"] % 2
    loss_fn, norm_fn = finetune.make_loss(GlueTask("sst2"))

    def loss_and_grads(batch):
        batch = jax.tree.map(np.asarray, batch)
        grad = jax.grad(loss_fn, has_aux=True)
        norm = norm_fn(batch)
        loss = loss_fn(params, model.apply, batch, jax.random.key(1), norm)[0]
        return loss, grad(params, model.apply, batch, jax.random.key(1), norm)[0]

    whole = finetuning.train_dataset(
        inputs, global_batch_size=len(inputs["labels"]), seed=0, buckets=finetuning.default_buckets(64)
    )
    length = next(iter(whole))["input_ids"].shape[1]
    assert length == 32
    cut = {k: v[:, :length] if v.ndim == 2 else v for k, v in inputs.items()}
    loss_cut, grads_cut = loss_and_grads(cut)
    loss_full, grads_full = loss_and_grads(inputs)
    np.testing.assert_allclose(loss_cut, loss_full, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_cut, grads_full)
