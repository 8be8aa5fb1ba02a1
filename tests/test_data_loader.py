"""Tests for albert_jax.data.loader: the grain pipeline, its state, and global arrays."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import grain
import jax
import numpy as np
import pytest

from albert_jax.data.loader import Examples, make_global_batch, pretraining_dataset
from albert_jax.data.pretraining import PretrainDataConfig, TokenizedCorpus
from albert_jax.data.text import CorpusSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "tokenizer" / "spiece.model"
CFG = PretrainDataConfig(seq_len=64, max_predictions=10)
BATCH = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from albert_jax.tokenizer import AlbertTokenizer, train_tokenizer

    if FIXTURE_MODEL.exists():
        tok = AlbertTokenizer(str(FIXTURE_MODEL))
    else:
        from albert_jax.data.text import iter_documents

        text = [s for doc in iter_documents(CorpusSpec()) for s in doc]
        tok = AlbertTokenizer(
            train_tokenizer(text, str(tmp_path_factory.mktemp("tok") / "spm"), vocab_size=1000)
        )
    return TokenizedCorpus.build(CorpusSpec(), tok, str(tmp_path_factory.mktemp("cache")))


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_shapes_and_dtypes(corpus):
    ds = pretraining_dataset(corpus, CFG, split="train", global_batch_size=BATCH, seed=0)
    batch = next(iter(ds))
    shapes = {k: (v.shape, v.dtype) for k, v in batch.items()}
    assert shapes == {
        "input_ids": ((8, 64), np.int32),
        "attention_mask": ((8, 64), np.int32),
        "token_type_ids": ((8, 64), np.int32),
        "masked_lm_positions": ((8, 10), np.int32),
        "masked_lm_ids": ((8, 10), np.int32),
        "masked_lm_weights": ((8, 10), np.float32),
        "sentence_order_label": ((8,), np.int32),
    }


def test_same_seed_same_batches(corpus):
    make = lambda seed: take(
        iter(pretraining_dataset(corpus, CFG, split="train", global_batch_size=BATCH, seed=seed)), 4
    )
    assert_batches_equal(make(3), make(3))
    other = make(4)
    assert not np.array_equal(make(3)[0]["input_ids"], other[0]["input_ids"])


@pytest.mark.parametrize("dynamic", [True, False])
def test_epochs_reshuffle_and_remask(corpus, dynamic):
    cfg = PretrainDataConfig(seq_len=64, max_predictions=10, dynamic_masking=dynamic)
    examples = Examples(corpus, cfg, split="train", seed=0, num_epochs=2, shuffle=True)
    n0, n1 = len(examples.chunks(0)), len(examples.chunks(1))
    assert [examples.locate(i)[0] for i in (0, n0 - 1, n0, n0 + n1 - 1)] == [0, 0, 1, 1]
    if dynamic:
        assert n0 != n1  # documents are re-chunked: the passes differ in length
    else:
        assert n0 == n1
        # Static masking: a chunk's example is the same in every epoch.
        where = {examples.locate(n0 + j)[1]: n0 + j for j in range(n1)}
        for i in range(20):
            again = examples[where[examples.locate(i)[1]]]
            assert all(np.array_equal(examples[i][k], again[k]) for k in again)
    # Through the pipeline: two epochs visit every chunk once each, in different orders.
    ds = pretraining_dataset(corpus, cfg, split="train", global_batch_size=1, seed=0, num_epochs=2)
    ids = [b["input_ids"][0] for b in ds]
    assert len(ids) == n0 + n1
    first = [e.tobytes() for e in ids[:n0]]
    second = [e.tobytes() for e in ids[n0:]]
    if not dynamic:
        assert sorted(first) == sorted(second) and first != second
    else:
        assert len(set(first) & set(second)) < 0.2 * n0


def test_process_slices_disjoint_and_cover(corpus):
    count = 4
    global_it = iter(pretraining_dataset(corpus, CFG, split="train", global_batch_size=BATCH, seed=1))
    local_its = [
        iter(
            pretraining_dataset(
                corpus,
                CFG,
                split="train",
                global_batch_size=BATCH,
                seed=1,
                process_index=p,
                process_count=count,
            )
        )
        for p in range(count)
    ]
    for _ in range(3):
        g = next(global_it)
        locs = [next(it) for it in local_its]
        for k in g:
            assert all(loc[k].shape[0] == BATCH // count for loc in locs)
            for p in range(count):
                # Contiguous blocks: the global array's row order does not depend on the host count.
                b = BATCH // count
                np.testing.assert_array_equal(locs[p][k], g[k][p * b : (p + 1) * b])


def test_batch_not_divisible_by_processes(corpus):
    with pytest.raises(
        ValueError, match="global_batch_size=6 must be a positive multiple of process_count=4"
    ):
        pretraining_dataset(
            corpus, CFG, split="train", global_batch_size=6, seed=0, process_index=0, process_count=4
        )


def test_iterator_state_resume(corpus):
    ds = pretraining_dataset(corpus, CFG, split="train", global_batch_size=BATCH, seed=0)
    it = iter(ds)
    take(it, 5)
    state = it.get_state()
    expected = take(it, 4)
    fresh = iter(pretraining_dataset(corpus, CFG, split="train", global_batch_size=BATCH, seed=0))
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 4), expected)


def test_iterator_state_resume_across_epoch_boundary(corpus):
    n = len(corpus.chunks(CFG, "train", 0))
    ds = pretraining_dataset(corpus, CFG, split="train", global_batch_size=BATCH, seed=0)
    it = iter(ds)
    k = n // BATCH - 1
    take(it, k)
    state = it.get_state()
    expected = take(it, 3)
    fresh = iter(ds)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 3), expected)


def test_orbax_checkpoint_of_iterator(corpus, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    ds = pretraining_dataset(corpus, CFG, split="train", global_batch_size=BATCH, seed=0)
    it = iter(ds)
    take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = take(it, 2)
    restored = iter(ds)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    assert_batches_equal(take(restored, 2), expected)


def test_eval_split_one_deterministic_pass(corpus):
    make = lambda: list(pretraining_dataset(corpus, CFG, split="eval", global_batch_size=2, seed=0))
    a, b = make(), make()
    n_eval = len(corpus.chunks(CFG, "eval", 0))
    assert len(a) == n_eval // 2 and len(a) > 0
    assert_batches_equal(a, b)
    train_first = next(iter(pretraining_dataset(corpus, CFG, split="train", global_batch_size=2, seed=0)))
    train_ids = {r.tobytes() for r in train_first["input_ids"]}
    assert not train_ids & {r.tobytes() for batch in a for r in batch["input_ids"]}


def test_too_few_examples(corpus):
    with pytest.raises(ValueError, match="fewer than global_batch_size"):
        pretraining_dataset(corpus, CFG, split="eval", global_batch_size=4096, seed=0)


@pytest.mark.slow
def test_worker_processes_give_same_batches(corpus):
    make = lambda workers: pretraining_dataset(
        corpus, CFG, split="train", global_batch_size=BATCH, seed=0, worker_count=workers
    )
    expected = take(iter(make(0)), 3)
    it = iter(make(2))
    try:
        assert_batches_equal(take(it, 3), expected)
    finally:
        it.close()


def test_make_global_batch_single_device():
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    local = {"input_ids": np.arange(12, dtype=np.int32).reshape(4, 3), "label": np.arange(4, dtype=np.int32)}
    out = make_global_batch(local, sharding)
    assert out["input_ids"].shape == (4, 3) and out["input_ids"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(out["input_ids"]), local["input_ids"])


def test_make_global_batch_8_cpu_devices():
    code = textwrap.dedent(
        """
        import jax, numpy as np
        from albert_jax.data.loader import make_global_batch
        assert jax.device_count() == 8, jax.devices()
        mesh = jax.make_mesh((4, 2), ("data", "model"))
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        local = {"input_ids": np.arange(16 * 5, dtype=np.int32).reshape(16, 5),
                 "sentence_order_label": np.arange(16, dtype=np.int32)}
        out = make_global_batch(local, sharding)
        x = out["input_ids"]
        assert x.shape == (16, 5), x.shape
        assert len(x.addressable_shards) == 8
        assert {s.data.shape for s in x.addressable_shards} == {(4, 5)}
        np.testing.assert_array_equal(np.asarray(x), local["input_ids"])
        np.testing.assert_array_equal(np.asarray(out["sentence_order_label"]), np.arange(16))
        print("OK")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
