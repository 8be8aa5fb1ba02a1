"""Tests for albert_jax.optim against NumPy re-implementations of ALBERT's formulas."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import FrozenDict

from albert_jax import optim

B1, B2, EPS, WD = 0.9, 0.999, 1e-6, 0.01

# Leaf path -> (shape, decayed?, zero-initialised?). Names follow the model's param tree.
LEAVES = {
    ("albert", "embeddings", "word_embeddings", "embedding"): ((8, 4), True, False),
    ("albert", "embeddings", "LayerNorm", "scale"): ((4,), False, False),
    ("albert", "embeddings", "LayerNorm", "bias"): ((4,), False, False),
    ("albert", "encoder", "group_0", "layer_0", "attention", "query", "kernel"): ((4, 2, 2), True, False),
    ("albert", "encoder", "group_0", "layer_0", "attention", "query", "bias"): ((2, 2), False, False),
    ("albert", "encoder", "group_0", "layer_0", "full_layer_layer_norm", "scale"): ((4,), False, False),
    ("albert", "encoder", "group_0", "layer_0", "ffn", "kernel"): ((4, 3), True, True),
    ("albert", "encoder", "group_0", "layer_0", "ffn", "bias"): ((3,), False, True),
    ("predictions", "dense", "kernel"): ((4, 4), True, False),
    ("predictions", "LayerNorm", "scale"): ((4,), False, False),
    ("predictions", "bias"): ((8,), False, False),
    ("predictions", "output_bias"): ((8,), False, False),
}


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return {"params": tree}


def _flatten(tree) -> dict:
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        flat[tuple(k.key for k in path)[1:]] = np.asarray(leaf, np.float64)
    return flat


def _init_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    flat = {}
    for path, (shape, _, zero) in LEAVES.items():
        flat[path] = np.zeros(shape, np.float32) if zero else rng.normal(size=shape).astype(np.float32)
    return flat


def _grads(rng: np.random.Generator, scale: float = 1.0) -> dict:
    return {
        path: (scale * rng.normal(size=shape)).astype(np.float32) for path, (shape, _, _) in LEAVES.items()
    }


# ---------------------------------------------------------------- references


def albert_lr(step: int, peak: float, total: int, warmup: int, end: float = 0.0, power: float = 1.0) -> float:
    """tf.train.polynomial_decay(cycle=False) + ALBERT's linear warmup."""
    decayed = (peak - end) * (1.0 - min(step, total) / total) ** power + end
    if warmup and step < warmup:
        return peak * step / warmup
    return decayed


def np_clip(grads: dict, clip_norm: float) -> dict:
    """tf.clip_by_global_norm."""
    gnorm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in grads.values()))
    scale = clip_norm / max(gnorm, clip_norm)
    return {k: g * scale for k, g in grads.items()}


def np_lamb_step(params: dict, grads: dict, m: dict, v: dict, lr: float) -> tuple[dict, dict, dict]:
    """One step of ALBERT's LAMBOptimizer.apply_gradients (float64)."""
    new_p, new_m, new_v = {}, {}, {}
    for k, w in params.items():
        g = grads[k].astype(np.float64)
        nm = B1 * m[k] + (1 - B1) * g
        nv = B2 * v[k] + (1 - B2) * g * g
        update = nm / (np.sqrt(nv) + EPS)
        decayed = LEAVES[k][1]
        if decayed:
            update = update + WD * w
        ratio = 1.0
        if decayed:
            w_norm, g_norm = np.linalg.norm(w.ravel()), np.linalg.norm(update.ravel())
            ratio = (w_norm / g_norm if g_norm > 0 else 1.0) if w_norm > 0 else 1.0
        new_p[k] = w - ratio * lr * update
        new_m[k], new_v[k] = nm, nv
    return new_p, new_m, new_v


def np_adamw_step(params: dict, grads: dict, m: dict, v: dict, lr: float) -> tuple[dict, dict, dict]:
    """One step of ALBERT's AdamWeightDecayOptimizer.apply_gradients (float64, no bias correction)."""
    new_p, new_m, new_v = {}, {}, {}
    for k, w in params.items():
        g = grads[k].astype(np.float64)
        nm = B1 * m[k] + (1 - B1) * g
        nv = B2 * v[k] + (1 - B2) * g * g
        update = nm / (np.sqrt(nv) + EPS)
        if LEAVES[k][1]:
            update = update + WD * w
        new_p[k] = w - lr * update
        new_m[k], new_v[k] = nm, nv
    return new_p, new_m, new_v


def _assert_tree_close(actual, expected: dict, rtol: float = 1e-6, atol: float = 1e-7) -> None:
    flat = _flatten(actual)
    assert flat.keys() == expected.keys()
    for k in expected:
        np.testing.assert_allclose(flat[k], expected[k], rtol=rtol, atol=atol, err_msg=str(k))


# ---------------------------------------------------------------- tests


def test_decay_mask_picks_leaves():
    mask = optim.decay_mask(_nest({k: np.zeros(s) for k, (s, _, _) in LEAVES.items()}))
    got = {tuple(p.key for p in path)[1:]: m for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert got == {k: d for k, (_, d, _) in LEAVES.items()}
    assert all(type(m) is bool for m in got.values())


@pytest.mark.parametrize("wrap", ["frozen", "partitioned"])
def test_decay_mask_containers(wrap):
    params = {
        "enc": {
            "LayerNorm_0": {"scale": jnp.ones(2)},
            "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
        }
    }
    expected = {"enc": {"LayerNorm_0": {"scale": False}, "dense": {"kernel": True, "bias": False}}}
    if wrap == "frozen":
        mask = optim.decay_mask(FrozenDict(params))
        assert jax.tree.leaves(mask) == jax.tree.leaves(expected)
    else:
        boxed = jax.tree.map(lambda x: nn.Partitioned(x, names=(None,) * x.ndim), params)
        mask = optim.decay_mask(boxed)
        unboxed = jax.tree.map(lambda b: b.value, mask, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert unboxed == expected


@pytest.mark.parametrize(
    "peak,total,warmup,end,power",
    [(0.00176, 100, 10, 0.0, 1.0), (1.0, 50, 7, 0.1, 2.0), (0.5, 20, 0, 0.0, 1.0), (0.3, 10, 15, 0.0, 1.0)],
)
def test_schedule_matches_albert(peak, total, warmup, end, power):
    sched = optim.learning_rate_schedule(peak, total, warmup, end_lr=end, power=power)
    steps = sorted({0, 1, max(warmup - 1, 0), warmup, (warmup + total) // 2, total - 1, total, total + 5})
    for step in steps:
        expected = albert_lr(step, peak, total, warmup, end, power)
        np.testing.assert_allclose(float(sched(step)), expected, rtol=1e-6, atol=1e-9, err_msg=f"step {step}")
        np.testing.assert_allclose(float(sched(jnp.asarray(step, jnp.int32))), expected, rtol=1e-6, atol=1e-9)
    assert float(sched(0)) == (peak * 0 if warmup else peak)


def test_schedule_not_restarted_after_warmup():
    sched = optim.learning_rate_schedule(1.0, total_steps=100, warmup_steps=10)
    np.testing.assert_allclose(float(sched(9)), 0.9, rtol=1e-6)
    np.testing.assert_allclose(float(sched(10)), 0.9, rtol=1e-6)  # 1 - 10/100, not the peak
    np.testing.assert_allclose(float(sched(55)), 0.45, rtol=1e-6)
    assert float(sched(100)) == 0.0


def test_lamb_matches_numpy_reference():
    lr = 0.01
    params0 = _init_params()
    opt = optim.lamb(lr)
    params = jax.tree.map(jnp.asarray, _nest(params0))
    state = opt.init(params)
    update = jax.jit(opt.update)

    ref_p = {k: w.astype(np.float64) for k, w in params0.items()}
    ref_m = {k: np.zeros_like(w) for k, w in ref_p.items()}
    ref_v = {k: np.zeros_like(w) for k, w in ref_p.items()}
    rng = np.random.default_rng(1)
    for _ in range(5):
        g = _grads(rng)
        updates, state = update(_nest(g), state, params)
        params = optax.apply_updates(params, updates)
        ref_p, ref_m, ref_v = np_lamb_step(ref_p, g, ref_m, ref_v, lr)
        _assert_tree_close(params, ref_p)
    # Moments are not bias-corrected and live in the state as plain m, v.
    moments = state[0]
    _assert_tree_close(moments.mu, ref_m)
    _assert_tree_close(moments.nu, ref_v, atol=1e-10)
    assert int(moments.count) == 5


def test_lamb_zero_leaf_takes_ratio_one():
    # Zero-initialised decayed kernel: ||w|| = 0 so the first step is lr * m / (sqrt(v) + eps).
    path = ("albert", "encoder", "group_0", "layer_0", "ffn", "kernel")
    lr = 0.1
    params = jax.tree.map(jnp.asarray, _nest(_init_params()))
    grads = _grads(np.random.default_rng(2))
    opt = optim.lamb(lr)
    updates, _ = jax.jit(opt.update)(_nest(grads), opt.init(params), params)
    g = grads[path].astype(np.float64)
    expected = -lr * (1 - B1) * g / (np.sqrt((1 - B2) * g * g) + EPS)
    np.testing.assert_allclose(_flatten(updates)[path], expected, rtol=1e-6)


def test_make_optimizer_lamb_with_clipping_and_schedule():
    accumulation_steps = 1  # accumulation is the training step's job (tests/test_pretrain.py)
    peak, total, warmup = 0.05, 10, 3
    opt, sched = optim.make_optimizer("lamb", peak, total_steps=total, warmup_steps=warmup)
    params0 = _init_params()
    params = jax.tree.map(jnp.asarray, _nest(params0))
    state = opt.init(params)
    update = jax.jit(opt.update)

    ref_p = {k: w.astype(np.float64) for k, w in params0.items()}
    ref_m = {k: np.zeros_like(w) for k, w in ref_p.items()}
    ref_v = {k: np.zeros_like(w) for k, w in ref_p.items()}
    rng = np.random.default_rng(3)
    for step in range(6):
        micro = [_grads(rng, scale=100.0) for _ in range(accumulation_steps)]
        for i, g in enumerate(micro):
            updates, state = update(_nest(g), state, params)
            params = optax.apply_updates(params, updates)
            if i < accumulation_steps - 1:
                assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
        mean_g = {k: np.mean([m[k].astype(np.float64) for m in micro], axis=0) for k in LEAVES}
        clipped = np_clip(mean_g, 1.0)
        assert optim.global_norm(_nest(mean_g)) > 1.0  # clipping is active
        ref_p, ref_m, ref_v = np_lamb_step(ref_p, clipped, ref_m, ref_v, albert_lr(step, peak, total, warmup))
        _assert_tree_close(params, ref_p, rtol=2e-6)
        np.testing.assert_allclose(
            float(optim.current_learning_rate(sched, state)),
            albert_lr(step + 1, peak, total, warmup),
            rtol=1e-6,
        )


@pytest.mark.parametrize("name", ["lamb", "adamw", "AdamW"])
def test_weight_decay_only_on_masked_leaves(name):
    # Zero gradients leave only the decay term: adamw moves decayed leaves by
    # -lr*wd*w; lamb's trust ratio rescales wd*w to ||w||, i.e. -lr*w.
    lr = 0.1
    opt, _ = optim.make_optimizer(name, lr, total_steps=10, warmup_steps=0)
    params0 = _init_params()
    params = jax.tree.map(jnp.asarray, _nest(params0))
    state = opt.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, state = jax.jit(opt.update)(zeros, state, params)
    flat = _flatten(updates)
    factor = WD if name.lower() == "adamw" else 1.0
    for k, (_, decayed, _) in LEAVES.items():
        expected = -lr * factor * params0[k] if decayed else np.zeros_like(params0[k])
        np.testing.assert_allclose(flat[k], expected, rtol=1e-5, atol=1e-9, err_msg=str(k))


def test_adamw_matches_albert_reference():
    """ALBERT's AdamW (no bias correction) step by step against NumPy, with clipping and the schedule.
    At step 1 its update is m/(sqrt(v)+eps) = (1-b1)g/(sqrt(1-b2)|g|) ~ 3.2x optax.adamw's ±1."""
    peak, total, warmup = 0.05, 10, 3
    opt, _ = optim.make_optimizer("adamw", peak, total_steps=total, warmup_steps=warmup)
    params0 = _init_params()
    params = jax.tree.map(jnp.asarray, _nest(params0))
    state = opt.init(params)
    ref_p = {k: w.astype(np.float64) for k, w in params0.items()}
    ref_m = {k: np.zeros_like(w) for k, w in ref_p.items()}
    ref_v = {k: np.zeros_like(w) for k, w in ref_p.items()}
    rng = np.random.default_rng(7)
    for step in range(5):
        g = _grads(rng, scale=10.0)
        updates, state = jax.jit(opt.update)(_nest(g), state, params)
        params = optax.apply_updates(params, updates)
        ref_p, ref_m, ref_v = np_adamw_step(
            ref_p, np_clip(g, 1.0), ref_m, ref_v, albert_lr(step, peak, total, warmup)
        )
        _assert_tree_close(params, ref_p, rtol=2e-5, atol=1e-7)
    # The first real update (step 1, lr > 0) is ~3.16x bias-corrected Adam's on an undecayed leaf.
    g = {k: np.full(s, 0.3, np.float32) for k, (s, _, _) in LEAVES.items()}
    ours, _ = optim.adamw(1.0, weight_decay=0.0).update(_nest(g), optim.adamw(1.0).init(_nest(g)), _nest(g))
    ref, _ = optax.adam(1.0, eps=EPS).update(_nest(g), optax.adam(1.0, eps=EPS).init(_nest(g)))
    ratio = np.asarray(jax.tree.leaves(ours)[0]) / np.asarray(jax.tree.leaves(ref)[0])
    np.testing.assert_allclose(ratio, (1 - B1) / np.sqrt(1 - B2), rtol=1e-4)


def test_adamw_trains_a_quadratic():
    opt, _ = optim.make_optimizer("adamw", 0.1, total_steps=200, warmup_steps=5, weight_decay=0.0)
    params = {"w": {"kernel": jnp.full((3,), 5.0)}, "b": {"bias": jnp.full((2,), -3.0)}}
    state = opt.init(params)
    loss = lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p))

    @jax.jit
    def step(p, s):
        u, s = opt.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    for _ in range(200):
        params, state = step(params, state)
    assert float(loss(params)) < 1e-2


def test_bias_correction_option_matches_optax_lamb():
    params = jax.tree.map(jnp.asarray, _nest(_init_params()))
    ours = optim.lamb(0.01, mask=None, bias_correction=True)
    ref = optax.lamb(0.01, b1=B1, b2=B2, eps=EPS, weight_decay=WD)
    s1, s2 = ours.init(params), ref.init(params)
    p1 = p2 = params
    rng = np.random.default_rng(5)
    for _ in range(3):
        g = _nest(_grads(rng))
        u1, s1 = jax.jit(ours.update)(g, s1, p1)
        u2, s2 = jax.jit(ref.update)(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mu_dtype,expected_mu", [(None, jnp.float32), (jnp.bfloat16, jnp.bfloat16)])
def test_state_dtypes_with_bf16_params(mu_dtype, expected_mu):
    params = {"dense": {"kernel": jnp.ones((4, 4), jnp.bfloat16), "bias": jnp.zeros(4, jnp.bfloat16)}}
    opt = optim.lamb(0.01, mu_dtype=mu_dtype)
    state = opt.init(params)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)
    updates, state = jax.jit(opt.update)(grads, state, params)
    moments = state[0]
    assert {x.dtype for x in jax.tree.leaves(moments.mu)} == {jnp.dtype(expected_mu)}
    assert {x.dtype for x in jax.tree.leaves(moments.nu)} == {jnp.dtype(jnp.float32)}
    assert moments.count.dtype == jnp.int32
    new = optax.apply_updates(params, updates)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(new))
    assert all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32)))) for x in jax.tree.leaves(new))


def test_unknown_optimizer_name():
    with pytest.raises(ValueError, match=r"Unknown optimizer 'sgd'.*lamb, adamw"):
        optim.make_optimizer("sgd", 1e-3, total_steps=10, warmup_steps=1)


def test_current_learning_rate_from_step():
    opt, sched = optim.make_optimizer("adamw", 1.0, total_steps=10, warmup_steps=2)
    assert float(optim.current_learning_rate(sched, 1)) == pytest.approx(0.5)
    state = opt.init({"k": jnp.ones(2)})
    assert float(optim.current_learning_rate(sched, state)) == 0.0


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_skip_nonfinite_matches_optax_apply_if_finite(name):
    """Same updates and the same state, field for field, as optax's wrapper over a run with NaN/inf steps."""
    params = {
        "dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
        "LayerNorm": {"scale": jnp.ones(4)},
    }
    inner, _ = optim.make_optimizer(name, 1e-2, total_steps=10, warmup_steps=2)
    ours, ref = optim.skip_nonfinite(inner), optax.apply_if_finite(inner, max_consecutive_errors=2**30)
    s_ours, s_ref = ours.init(params), ref.init(params)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)  # checkpoints restore either way
    rng = np.random.default_rng(0)
    for bad in [None, np.nan, None, np.inf, -np.inf, None, None]:
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        if bad is not None:
            grads["dense"]["kernel"] = grads["dense"]["kernel"].at[1, 2].set(bad)
        u_ours, s_ours = jax.jit(ours.update)(grads, s_ours, params)
        u_ref, s_ref = ref.update(grads, s_ref, params)
        jax.tree.map(np.testing.assert_array_equal, (u_ours, s_ours), (u_ref, s_ref))
    assert int(s_ours.total_notfinite) == 3 and int(s_ours.notfinite_count) == 0


def test_trust_ratio_is_per_layer_for_stacked_leaves():
    """A stacked [L, ...] leaf (sharing none/attention/ffn) gets each layer's own ratio: the same update as
    optax's per-array trust ratio on each layer alone; any other leaf gets optax's ratio."""
    rng = np.random.default_rng(0)
    params = {
        "encoder": {"layers": {"layer_0": {"ffn": {"kernel": jnp.asarray(rng.normal(size=(3, 4, 5)))}}}},
        "pooler": {"kernel": jnp.asarray(rng.normal(size=(4, 4)))},
    }
    updates = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)) * 0.1, params)
    updates["encoder"]["layers"]["layer_0"]["ffn"]["kernel"] *= jnp.asarray([1.0, 10.0, 0.0])[:, None, None]
    ours, _ = optim.scale_by_layerwise_trust_ratio().update(updates, optax.ScaleByTrustRatioState(), params)
    reference = optax.scale_by_trust_ratio()
    pooler, _ = reference.update(updates["pooler"], reference.init(params["pooler"]), params["pooler"])
    np.testing.assert_allclose(ours["pooler"]["kernel"], pooler["kernel"], rtol=1e-6)
    stacked = ours["encoder"]["layers"]["layer_0"]["ffn"]["kernel"]
    for i in range(3):
        u, p = (t["encoder"]["layers"]["layer_0"]["ffn"]["kernel"][i] for t in (updates, params))
        expected, _ = reference.update(u, reference.init(p), p)
        np.testing.assert_allclose(stacked[i], expected, rtol=1e-6)
    assert np.linalg.norm(stacked[1]) == pytest.approx(
        np.linalg.norm(params["encoder"]["layers"]["layer_0"]["ffn"]["kernel"][1])
    )
