"""Mesh and sharding: the same pretraining config on 1 device and on a 2x2x2 (data, fsdp, tensor) mesh."""

import json
import subprocess
import sys
import textwrap

import jax
import pytest
from jax.sharding import PartitionSpec as P
from test_pretrain import REPO, read_metrics, small_config

from albert_jax import sharding as sharding_lib
from albert_jax.training import pretrain

MESH_RUN = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    sys.path[:0] = [{repo!r}, os.path.join({repo!r}, "tests")]
    from test_pretrain import small_config
    from albert_jax.training import pretrain, trainer
    from albert_jax.training import run as run_lib
    from albert_jax import sharding as sharding_lib
    from albert_jax.modeling import AlbertForPreTraining, init_params
    from albert_jax import optim

    assert jax.device_count() == 8
    config = small_config(**{overrides!r})
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    pretrain.run(config, {workdir!r})

    # Parameters really are split: query kernel [hidden, heads, kv] over (fsdp, tensor).
    mesh = sharding_lib.make_mesh(2, 2, 2)
    model = AlbertForPreTraining(pretrain.model_config_from(config))
    tx, _ = optim.make_optimizer("lamb", 1e-3, total_steps=10, warmup_steps=1)
    state, shardings = run_lib.create_train_state(
        lambda r: init_params(model, r, 16), model.apply, tx, mesh, sharding_lib.DEFAULT_RULES, 0)
    q = state.params["albert"]["encoder"]["group_0"]["layer_0"]["attention"]["query"]["kernel"]
    emb = state.params["albert"]["embeddings"]["word_embeddings"]["embedding"]
    print(json.dumps({{"query": str(q.sharding.spec), "query_shards": len(q.addressable_shards),
                       "query_shard_shape": list(q.addressable_shards[0].data.shape),
                       "embedding": str(emb.sharding.spec)}}))
    """
)


@pytest.mark.slow
def test_mesh_run_matches_single_device(tmp_path):
    overrides = dict(total_steps=3, warmup_steps=1, log_every=1, eval_every=0, checkpoint_every=3)
    single = str(tmp_path / "single")
    pretrain.run(small_config(**overrides), single)

    meshed = str(tmp_path / "mesh")
    script = MESH_RUN.format(repo=REPO, overrides=overrides, workdir=meshed)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["query"] == str(P("fsdp", "tensor", None))
    assert info["query_shards"] == 8 and info["query_shard_shape"] == [32, 2, 16]  # [64, 4, 16] / (2, 2)
    assert info["embedding"] == str(P("tensor", None))

    a = [m for m in read_metrics(single) if "train/loss" in m]
    b = [m for m in read_metrics(meshed) if "train/loss" in m]
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3]
    for x, y in zip(a, b):
        for key in ("train/loss", "train/mlm_loss", "train/sop_loss", "train/grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=2e-4), (x["step"], key)


@pytest.mark.parametrize(
    "axes, message",
    [((3, 1, 1), "needs 3 devices"), ((-1, -1, 1), "at most one mesh axis"), ((1, 1, 2), "needs 2 devices")],
)
def test_make_mesh_rejects_impossible_shapes(axes, message):
    with pytest.raises(ValueError, match=message):
        sharding_lib.make_mesh(*axes, devices=jax.devices()[:1])


def test_make_mesh_fills_the_free_axis():
    mesh = sharding_lib.make_mesh(-1, 1, 1)
    assert mesh.shape == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}


def test_rules_from_config_accepts_lists():
    rules = sharding_lib.rules_from_config([["batch", ["data", "fsdp"]], ["vocab", "tensor"], ["kv", None]])
    assert rules == (("batch", ("data", "fsdp")), ("vocab", "tensor"), ("kv", None))
