"""Throughput switches (config.JAX_ONLY_FIELDS): each gives the default path's parameters, loss and gradients.

The model's training loss (`training.pretrain.pretraining_loss`, MLM at masked positions + SOP) on a tiny
random model, its value and every parameter's gradient compared with the default configuration's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_modeling import TINY, abstract_params, batch
from test_modeling import init as random_params

from albert_jax import modeling
from albert_jax.config import AlbertConfig
from albert_jax.training import pretrain


def _config(**overrides) -> AlbertConfig:
    return AlbertConfig(**{**TINY, "num_hidden_groups": 2, "hidden_act": "gelu_new", **overrides})


def _pretraining_batch(config: AlbertConfig) -> dict:
    inputs = {k: jnp.asarray(v, jnp.int32) for k, v in batch(config, (2, 12)).items()}
    rng = np.random.default_rng(1)
    inputs["masked_lm_positions"] = jnp.asarray([[1, 4, 7], [2, 3, 5]], jnp.int32)
    inputs["masked_lm_ids"] = jnp.asarray(rng.integers(0, config.vocab_size, (2, 3)), jnp.int32)
    inputs["masked_lm_weights"] = jnp.asarray([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], jnp.float32)
    inputs["sentence_order_label"] = jnp.asarray([0, 1], jnp.int32)
    return inputs


def _loss_and_grads(config: AlbertConfig, params, inputs, deterministic: bool = True):
    module = modeling.AlbertForPreTraining(config)

    def loss(p):
        rng = jax.random.key(7)
        return pretrain.pretraining_loss(
            p, module.apply, inputs, rng, pretrain.loss_norm(inputs), deterministic
        )[0]

    return jax.jit(jax.value_and_grad(loss))(params)


def _assert_same(config: AlbertConfig, variant: AlbertConfig, rtol: float = 1e-5, deterministic=True):
    default = modeling.AlbertForPreTraining(config)
    params = random_params(default, 2)
    other = modeling.AlbertForPreTraining(variant)
    assert jax.tree.structure(abstract_params(other)) == jax.tree.structure(params)
    inputs = _pretraining_batch(config)
    value, grads = _loss_and_grads(config, params, inputs, deterministic)
    value2, grads2 = _loss_and_grads(variant, params, inputs, deterministic)
    np.testing.assert_allclose(value2, value, rtol=rtol)
    # Relative to the largest gradient: some are zero but for rounding (the key bias: softmax ignores it).
    scale = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads))
    for (path, g), g2 in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads2)):
        np.testing.assert_allclose(
            np.asarray(g2), np.asarray(g), atol=rtol * scale, rtol=rtol, err_msg=jax.tree_util.keystr(path)
        )


SWITCHES = [  # (sharing, switch)
    ("all", dict(fused_qkv=True)),
    ("all", dict(fused_kernels=True)),  # Pallas in its interpreter on a CPU
    ("all", dict(scan_unroll=2)),
    ("all", dict(remat_policy="none")),  # what "auto" replaces under a scan: no recomputation
    ("all", dict(scan_layers=False)),  # where "auto" is "none"
    ("none", dict(fused_qkv=True, scan_unroll=2)),  # per-layer parameters, stacked
    ("none", dict(fused_kernels=True, remat_policy="none")),
]


@pytest.mark.parametrize(
    "sharing,switch",
    SWITCHES,
    ids=[f"{s}-" + ",".join(f"{k}={v}" for k, v in d.items()) for s, d in SWITCHES],
)
def test_switch_gives_the_default_loss_and_gradients(sharing, switch):
    groups = {"num_hidden_groups": 1} if sharing != "all" else {}
    config = _config(sharing=sharing, **groups)
    _assert_same(config, config.replace(**switch))


@pytest.mark.parametrize("switch", [dict(fused_qkv=True), dict(fused_kernels=True)], ids=str)
def test_fused_paths_with_dropout_and_bfloat16(switch):
    """Training mode (dropout draws the same masks) and bfloat16 compute, against the unfused path."""
    config = _config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    _assert_same(config, config.replace(**switch), deterministic=False)
    bf16 = config.replace(dtype="bfloat16", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    _assert_same(bf16, bf16.replace(**switch), rtol=3e-2)


def test_auto_remat_is_dots_under_a_scan_only():
    config = _config()
    assert modeling.remat_policy(config) == "dots"
    assert modeling.remat_policy(config.replace(scan_layers=False)) == "none"
    assert modeling.remat_policy(config.replace(scan_unroll=config.num_hidden_layers)) == "none"
    assert modeling.remat_policy(config.replace(remat_policy="full")) == "full"
    # With groups, each group's scan runs L/G steps: unrolling those leaves no scan.
    groups = config.replace(num_hidden_layers=4, num_hidden_groups=2)
    assert modeling.remat_policy(groups.replace(scan_unroll=1)) == "dots"
    assert modeling.remat_policy(groups.replace(scan_unroll=2)) == "none"
    assert modeling.remat_policy(groups.replace(sharing="none", num_hidden_groups=1, scan_unroll=2)) == "dots"


def _scan_stacks(config: AlbertConfig) -> int:
    """How many per-layer stacks the forward scan of the training gradient carries to the backward."""
    module = modeling.AlbertForPreTraining(config)
    params = jax.eval_shape(lambda: nn.unbox(modeling.init_params(module, jax.random.key(0))))
    inputs = _pretraining_batch(config)
    jaxpr = jax.make_jaxpr(
        jax.grad(
            lambda p: pretrain.pretraining_loss(
                p, module.apply, inputs, jax.random.key(0), pretrain.loss_norm(inputs), True
            )[0]
        )
    )(params)
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    forward = scans[0]  # the first scan is the forward's, its stacked outputs the backward's residuals
    length = forward.params["length"]
    return sum(1 for v in forward.outvars if v.aval.shape[:1] == (length,))


def test_auto_remat_saves_fewer_stacks_than_none():
    """The measured cause of the scanned step's extra copies: every saved intermediate is a stack."""
    config = _config(num_hidden_groups=1)
    assert _scan_stacks(config) < _scan_stacks(config.replace(remat_policy="none")) / 2


# --- the word-embedding gradient -------------------------------------------------------------------


def _embedding_grad(lookup, table: jax.Array, ids: jax.Array, cotangent: jax.Array) -> jax.Array:
    return jax.jit(jax.grad(lambda t: jnp.vdot(lookup(t, ids).astype(jnp.float32), cotangent)))(table)


def test_word_embedding_gradient_equals_todays_and_accumulates_in_float32():
    """The lookup in the parameter dtype then a cast: in float32 the gradient is exactly the plain gather's;
    in bfloat16 compute it is the float32 sum of the bfloat16 cotangents, where the old cast-then-gather
    summed in bfloat16 (a table row that thousands of positions hit, as [MASK] does, lost precision)."""
    config = _config()
    module = modeling.AlbertEmbeddings(config)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 8, (4, 32)), jnp.int32).at[:, ::2].set(3)
    params = module.init(jax.random.key(0), ids, jnp.zeros_like(ids), None, True)["params"]
    table = nn.unbox(params["word_embeddings"]["embedding"])
    rng = np.random.default_rng(1)
    cotangent = jnp.asarray(rng.standard_normal((4, 32, config.embedding_size)), jnp.float32)

    def ours(dtype):
        cfg = config.replace(dtype=dtype)

        def lookup(t, i):
            p = {**params, "word_embeddings": {"embedding": t}}
            out = nn.Embed(cfg.vocab_size, cfg.embedding_size, dtype=cfg.jnp_param_dtype).apply(
                {"params": p["word_embeddings"]}, i
            )
            return out.astype(cfg.jnp_dtype)

        return lookup

    def old(dtype):  # today's nn.Embed(dtype=compute): the table cast, then gathered
        return lambda t, i: jnp.take(t.astype(dtype), i, axis=0)

    np.testing.assert_array_equal(
        _embedding_grad(ours("float32"), table, ids, cotangent),
        _embedding_grad(old(jnp.float32), table, ids, cotangent),
    )
    bf16_cotangent = cotangent.astype(jnp.bfloat16).astype(jnp.float32)
    exact = _embedding_grad(old(jnp.float32), table, ids, bf16_cotangent)
    new = _embedding_grad(ours("bfloat16"), table, ids, bf16_cotangent)
    before = _embedding_grad(old(jnp.bfloat16), table, ids, bf16_cotangent)
    assert new.dtype == before.dtype == jnp.float32
    np.testing.assert_allclose(new, exact, rtol=1e-6, atol=1e-6)  # a float32 sum of the same terms
    np.testing.assert_allclose(before, exact, rtol=5e-2, atol=5e-2)  # today's: bfloat16 sums
    assert np.abs(new - exact).max() < np.abs(before - exact).max()


def test_the_model_uses_the_float32_lookup():
    """AlbertEmbeddings in bfloat16: its output is the float32 rows cast, its table gradient float32."""
    config = _config(dtype="bfloat16")
    module = modeling.AlbertEmbeddings(config)
    ids = jnp.asarray([[3, 3, 5, 3]], jnp.int32)
    types = jnp.zeros_like(ids)
    params = module.init(jax.random.key(0), ids, types, None, True)["params"]
    grads = jax.grad(
        lambda p: jnp.sum(module.apply({"params": p}, ids, types, None, True).astype(jnp.float32))
    )(params)
    assert nn.unbox(grads["word_embeddings"]["embedding"]).dtype == jnp.float32
    assert module.apply({"params": params}, ids, types, None, True).dtype == jnp.bfloat16


MESH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    sys.path[:0] = [{tests!r}]
    import flax.linen as nn, jax, numpy as np
    import test_step_switches as t
    from albert_jax import sharding

    mesh = sharding.make_mesh(2, 1, 2)  # data x tensor: rows split 2 ways, the FFN's columns 2 ways
    config = t._config()
    params = t.random_params(t.modeling.AlbertForPreTraining(config), 2)
    inputs = t._pretraining_batch(config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        value, grads = t._loss_and_grads(config, params, inputs)
        value2, grads2 = t._loss_and_grads(config.replace(fused_kernels=True), params, inputs)
    np.testing.assert_allclose(value2, value, rtol=1e-5)
    scale = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads))
    for g, g2 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
        np.testing.assert_allclose(np.asarray(g2), np.asarray(g), atol=1e-5 * scale, rtol=1e-5)
    print("ok")
    """
)


def test_fused_kernels_on_a_mesh():
    """Under a 2x2 (data, tensor) mesh the kernels run per device block (`shard_map`): same loss, gradients."""
    script = MESH_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
