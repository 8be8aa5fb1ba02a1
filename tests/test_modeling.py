"""Model tests: parity with transformers' PyTorch ALBERT, parameter counts, scan/jit/dropout, bad input."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from albert_jax import modeling
from albert_jax.config import PRESETS, AlbertConfig
from albert_jax.hf import params_from_hf

ATOL = 1e-4
COMMON = dict(vocab_size=101, max_position_embeddings=24, type_vocab_size=2, classifier_dropout_prob=0.1)
# Between them: two groups × two inner layers, E≠H and E=H, gelu / relu / gelu_new, v1-style dropout.
PARITY_CONFIGS = {
    "groups2-inner2-gelu_new": dict(
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_hidden_groups=2,
        inner_group_num=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu_new",
    ),
    "relu-E=H": dict(
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=48,
        hidden_act="relu",
    ),
    "gelu-groups2-dropout": dict(
        embedding_size=16,
        hidden_size=48,
        num_hidden_layers=2,
        num_hidden_groups=2,
        num_attention_heads=6,
        intermediate_size=40,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    ),
}
HEAD_CASES = [  # (class name, num_labels); all on the first config, the first two on every config
    ("AlbertModel", 2),
    ("AlbertForPreTraining", 2),
    ("AlbertForMaskedLM", 2),
    ("AlbertForSequenceClassification", 3),
    ("AlbertForSequenceClassification", 1),
    ("AlbertForMultipleChoice", 2),
    ("AlbertForTokenClassification", 5),
    ("AlbertForQuestionAnswering", 2),
]
TINY = dict(
    vocab_size=64,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
)


def hf_model(name: str, seed: int = 0, **config) -> torch.nn.Module:
    """A transformers ALBERT in eval mode with every parameter random (biases and LayerNorms included)."""
    torch.manual_seed(seed)
    hf_config = transformers.AlbertConfig(**config, attn_implementation="eager")
    model = getattr(transformers, name)(hf_config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():  # tied weights appear once
            noise = 0.1 * torch.randn_like(p)
            p.copy_(1.0 + noise if "norm" in pname.lower() and pname.endswith("weight") else noise)
    return model


def our_config(model: torch.nn.Module) -> AlbertConfig:
    return AlbertConfig.from_hf_dict(model.config.to_dict())


def batch(config: AlbertConfig, shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids and token types, with trailing padding in some rows."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, shape)
    mask = np.ones(shape, np.int64)
    flat = mask.reshape(-1, shape[-1])
    flat[1, shape[-1] - 4 :] = 0
    flat[-1, 3:] = 0
    token_types = np.zeros(shape, np.int64)
    token_types[..., shape[-1] // 2 :] = 1
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=token_types)


def hf_forward(model: torch.nn.Module, inputs: dict[str, np.ndarray], **kwargs):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, **kwargs)


def assert_close(ours, theirs, what: str, atol: float = ATOL) -> None:
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs HF {theirs.shape}"
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0, err_msg=what)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_params(module: nn.Module):
    return jax.eval_shape(lambda: nn.unbox(modeling.init_params(module, jax.random.key(0))))


def init(module: nn.Module, seed: int = 0):
    """Random params with init's shapes, drawn in numpy: a real init compiles the model (seconds each)."""
    rng = np.random.default_rng(seed)
    return traverse_util.unflatten_dict(
        {
            path: jnp.asarray((path[-1] == "scale") + 0.1 * rng.standard_normal(s.shape), s.dtype)
            for path, s in traverse_util.flatten_dict(abstract_params(module)).items()
        }
    )


def apply(module, params, inputs, **kwargs):
    """Jitted forward pass: one compile is cheaper than eager scan, which recompiles its body per call."""
    forward = jax.jit(lambda p, i: module.apply({"params": p}, **i, **kwargs))
    return forward(params, {k: jnp.asarray(v) for k, v in inputs.items()})


# --- parity --------------------------------------------------------------------------------------


PARITY_CASES = [
    (name, head, labels)
    for i, name in enumerate(PARITY_CONFIGS)
    for head, labels in (HEAD_CASES if i == 0 else HEAD_CASES[:2])
]


@pytest.mark.parametrize("config_name,head,num_labels", PARITY_CASES)
def test_parity_with_transformers(config_name, head, num_labels):
    model = hf_model(head, **COMMON, **PARITY_CONFIGS[config_name], num_labels=num_labels)
    config = our_config(model)
    params = params_from_hf(config, head, model.state_dict())
    module = modeling.HEADS[head](config)
    shape = (2, 3, 9) if head == "AlbertForMultipleChoice" else (3, 11)
    inputs = batch(config, shape)
    theirs = hf_forward(model, inputs, output_hidden_states=True, output_attentions=True)

    ours = apply(module, params, inputs, output_hidden_states=True, output_attentions=True)
    outputs = [
        f
        for f in (
            "last_hidden_state",
            "pooler_output",
            "prediction_logits",
            "sop_logits",
            "logits",
            "start_logits",
            "end_logits",
        )
        if hasattr(ours, f)
    ]
    assert outputs
    for field in outputs:
        assert_close(getattr(ours, field), getattr(theirs, field), field)
    if head in ("AlbertModel", "AlbertForMultipleChoice"):  # the fused-attention path, taken without weights
        fast = apply(module, params, inputs)
        assert fast.hidden_states is None and fast.attentions is None
        for field in outputs:
            assert_close(getattr(fast, field), getattr(theirs, field), f"{field} (fused attention)")

    layers = config.num_hidden_layers * config.inner_group_num
    assert len(ours.hidden_states) == len(theirs.hidden_states) == layers + 1
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        assert_close(a, b, f"hidden_states[{i}]")
    assert len(ours.attentions) == len(theirs.attentions) == layers
    for i, (a, b) in enumerate(zip(ours.attentions, theirs.attentions)):
        assert_close(a, b, f"attentions[{i}]")

    if head == "AlbertForPreTraining":  # gather at masked positions == HF's full logits, gathered
        positions = np.array([[0, 5, 10], [2, 2, 7], [1, 3, 4]])
        gathered = apply(module, params, inputs, masked_lm_positions=positions).prediction_logits
        expected = np.take_along_axis(theirs.prediction_logits.numpy(), positions[..., None], axis=1)
        assert_close(gathered, expected, "prediction_logits at masked_lm_positions")


@pytest.mark.parametrize("config_name", PARITY_CONFIGS)
def test_gradient_parity_with_transformers(config_name):
    """The gradient of our MLM+SOP training loss (`pretrain.pretraining_loss`, logits gathered at the
    masked positions) equals autograd's through HF's AlbertForPreTraining loss, leaf by leaf: the
    optimizer sees what HF would give it. Input ids avoid <pad> (0): torch's `padding_idx` drops the
    lookup's gradient for that row, ours keeps it; in training a pad row never reaches the loss."""
    from albert_jax.training import pretrain

    model = hf_model("AlbertForPreTraining", **COMMON, **PARITY_CONFIGS[config_name])
    config = our_config(model)
    inputs = batch(config, (3, 11))
    inputs["input_ids"] = np.maximum(inputs["input_ids"], 1)
    rng = np.random.default_rng(1)
    positions = np.stack([np.sort(rng.choice(np.arange(1, 11), 3, replace=False)) for _ in range(3)])
    targets = rng.integers(1, config.vocab_size, positions.shape)
    order = np.array([0, 1, 1])
    labels = np.full(inputs["input_ids"].shape, -100)
    np.put_along_axis(labels, positions, targets, axis=1)
    out = model(
        **{k: torch.from_numpy(v) for k, v in inputs.items()},
        labels=torch.from_numpy(labels),
        sentence_order_label=torch.from_numpy(order),
    )
    out.loss.backward()
    grad_of = {id(p): p.grad.numpy() for p in model.parameters()}
    tensors = model.state_dict(keep_vars=True).items()  # tied weights under each of their names
    hf_grads = {k: grad_of.get(id(v), v.detach().numpy()) for k, v in tensors}

    params = params_from_hf(config, "AlbertForPreTraining", model.state_dict())
    module = modeling.AlbertForPreTraining(config)
    ours_batch = {
        **{k: v.astype(np.int32) for k, v in inputs.items()},
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": targets.astype(np.int32),
        "masked_lm_weights": np.ones(positions.shape, np.float32),
        "sentence_order_label": order.astype(np.int32),
    }

    def loss(p):
        norm = pretrain.loss_norm(ours_batch)
        rng = jax.random.key(0)
        return pretrain.pretraining_loss(p, module.apply, ours_batch, rng, norm, deterministic=True)[0]

    value, grads = jax.value_and_grad(loss)(params)
    np.testing.assert_allclose(float(value), out.loss.item(), rtol=1e-5)
    expected = params_from_hf(config, "AlbertForPreTraining", hf_grads)
    expected = dict(traverse_util.flatten_dict(expected, sep="/"))
    got = dict(traverse_util.flatten_dict(grads, sep="/"))
    assert got.keys() == expected.keys()
    for name, g in got.items():
        assert_close(g, expected[name], f"gradient of {name}", atol=2e-5)


def test_parity_default_inputs():
    """No mask, no token types: both sides default to all-ones / zeros."""
    model = hf_model("AlbertModel", **COMMON, **PARITY_CONFIGS["relu-E=H"])
    config = our_config(model)
    params = params_from_hf(config, "AlbertModel", model.state_dict())
    ids = batch(config, (2, 7))["input_ids"]
    theirs = hf_forward(model, {"input_ids": ids})
    ours = apply(modeling.AlbertModel(config), params, {"input_ids": ids})
    assert_close(ours.last_hidden_state, theirs.last_hidden_state, "last_hidden_state")
    assert_close(ours.pooler_output, theirs.pooler_output, "pooler_output")


# --- parameter counts ----------------------------------------------------------------------------

PRESET_NAMES = [f"{size}-{v}" for size in PRESETS for v in ("v1", "v2")]


def _hf_count(cls_name: str, config: AlbertConfig) -> int:
    with torch.device("meta"):  # never allocates, so xxlarge is free
        model = getattr(transformers, cls_name)(transformers.AlbertConfig(**config.to_hf_dict()))
    return sum(p.numel() for p in model.parameters())  # tied parameters are counted once


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("head", ["AlbertModel", "AlbertForPreTraining"])
def test_param_count_matches_transformers(preset, head):
    config = AlbertConfig.from_preset(preset)
    ours = count(abstract_params(modeling.HEADS[head](config)))
    assert ours == _hf_count(head, config)


def test_base_param_count_literal():
    assert count(abstract_params(modeling.AlbertModel(AlbertConfig.from_preset("base")))) == 11_683_584


# --- scan, jit, dropout --------------------------------------------------------------------------


def test_param_count_independent_of_depth():
    config = AlbertConfig(**TINY)
    counts = {
        layers: count(abstract_params(modeling.AlbertModel(config.replace(num_hidden_layers=layers))))
        for layers in (2, 4, 12)
    }
    assert len(set(counts.values())) == 1, counts


def test_scan_and_unrolled_agree():
    config = AlbertConfig(**TINY, num_hidden_groups=2, inner_group_num=2, hidden_act="gelu")
    scanned = modeling.AlbertForPreTraining(config)
    unrolled = modeling.AlbertForPreTraining(config.replace(scan_layers=False))
    params = init(scanned, 1)
    assert jax.tree.structure(params) == jax.tree.structure(abstract_params(unrolled))
    inputs = batch(config, (2, 10))
    a = apply(scanned, params, inputs, output_hidden_states=True, output_attentions=True)
    b = apply(unrolled, params, inputs, output_hidden_states=True, output_attentions=True)
    assert len(a.hidden_states) == len(b.hidden_states) == 4 * 2 + 1
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):  # equal up to XLA's fusion choices
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "policy,scan",
    [("full", True), ("dots", True), ("dots_with_no_batch_dims", True), ("auto", True), ("full", False)],
)
def test_remat_changes_nothing_but_memory(policy, scan):
    config = AlbertConfig(**TINY, num_hidden_groups=2, scan_layers=scan)
    plain = modeling.AlbertForPreTraining(config.replace(remat_policy="none"))
    remat = modeling.AlbertForPreTraining(config.replace(remat_policy=policy))
    params = init(plain, 3)
    inputs = {k: jnp.asarray(v) for k, v in batch(config, (2, 10)).items()}

    def loss(module):
        return jax.jit(
            jax.value_and_grad(
                lambda p: jnp.sum(module.apply({"params": p}, **inputs).prediction_logits ** 2)
            )
        )

    (la, ga), (lb, gb) = loss(plain)(params), loss(remat)(params)
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_tracks_float32():
    config = AlbertConfig(**TINY)
    fp32 = modeling.AlbertForSequenceClassification(config)
    bf16 = modeling.AlbertForSequenceClassification(config.replace(dtype="bfloat16"))
    params = init(fp32, 4)
    inputs = batch(config, (2, 10))
    a = apply(fp32, params, inputs, output_hidden_states=True)
    b = apply(bf16, params, inputs, output_hidden_states=True)
    assert b.hidden_states[-1].dtype == jnp.bfloat16 and b.logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(b.logits), np.asarray(a.logits), atol=5e-2)
    np.testing.assert_allclose(
        np.asarray(b.hidden_states[-1], np.float32), np.asarray(a.hidden_states[-1]), atol=0.15
    )


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("bfloat16", 2e-2)])
def test_softmax_attention_matches_jax_dot_product_attention(dtype, tol):
    """The written-out attention equals `jax.nn.dot_product_attention`'s XLA path (which it replaced),
    values and gradients, on right-padded rows, a row with holes and a fully masked row."""
    b, t, n, d = 4, 12, 3, 8
    q, k, v = (jax.random.normal(jax.random.key(i), (b, t, n, d), dtype) for i in range(3))
    lengths = np.array([t, 7, 1, 0])
    mask = np.arange(t)[None, :] < lengths[:, None]
    mask[0, [2, 5]] = False
    cotangent = jax.random.normal(jax.random.key(9), (b, t, n, d), jnp.float32)

    def ours(q, k, v):
        return modeling._softmax_attention(q, k, v, jnp.asarray(mask))[0]

    def reference(q, k, v):
        return jax.nn.dot_product_attention(
            q, k, v, mask=jnp.asarray(mask)[:, None, None, :], implementation="xla"
        )

    for fn in (ours, reference):
        assert fn(q, k, v).dtype == jnp.dtype(dtype)
    loss = lambda fn: jax.jit(
        jax.value_and_grad(lambda *a: jnp.vdot(fn(*a).astype(jnp.float32), cotangent), (0, 1, 2))
    )  # noqa: E731
    (got, got_grads), (want, want_grads) = loss(ours)(q, k, v), loss(reference)(q, k, v)
    np.testing.assert_allclose(got, want, rtol=tol)
    np.testing.assert_allclose(
        np.asarray(ours(q, k, v), np.float32), np.asarray(reference(q, k, v), np.float32), atol=tol
    )
    for g, w in zip(got_grads, want_grads):
        scale = float(np.abs(np.asarray(w, np.float32)).max())
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=tol * scale)


def test_jit_and_eager_agree():
    config = AlbertConfig(**TINY, num_hidden_groups=2)
    module = modeling.AlbertForSequenceClassification(config)
    params = init(module, 2)
    inputs = {k: jnp.asarray(v) for k, v in batch(config, (3, 12)).items()}
    eager = module.apply({"params": params}, **inputs, output_hidden_states=True)
    jitted = jax.jit(lambda p, i: module.apply({"params": p}, **i, output_hidden_states=True))(params, inputs)
    for x, y in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6, rtol=0)


def test_dropout_only_when_not_deterministic():
    config = AlbertConfig.from_preset("base-v1", **{k: v for k, v in TINY.items()})  # v1: dropout 0.1
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.1
    module = modeling.AlbertForMaskedLM(config)
    params = init(module, 3)
    inputs = batch(config, (2, 10))

    @functools.partial(jax.jit, static_argnums=2)
    def logits(p, key, deterministic):
        rngs = {"dropout": key}
        return module.apply({"params": p}, **inputs, deterministic=deterministic, rngs=rngs).logits

    def run(deterministic, seed=0):
        return np.asarray(logits(params, jax.random.key(seed), deterministic))

    np.testing.assert_array_equal(run(True, 0), run(True, 1))
    np.testing.assert_array_equal(run(False, 0), run(False, 0))
    assert not np.allclose(run(False, 0), run(False, 1))
    assert not np.allclose(run(False, 0), run(True))


def _dropout_runs(module, params, inputs, field):
    """`field` of a training-mode forward pass (deterministic=False), one call per dropout key."""
    forward = jax.jit(
        lambda p, key: getattr(
            module.apply({"params": p}, **inputs, deterministic=False, rngs={"dropout": key}), field
        )
    )
    return [np.asarray(forward(params, jax.random.key(seed))) for seed in range(4)]


def test_sop_head_has_no_dropout():
    """The original applies cls/seq_relationship straight to the pooled output (HF adds a dropout)."""
    config = AlbertConfig(**TINY, classifier_dropout_prob=0.5)  # v2-style: the encoder has no dropout
    module = modeling.AlbertForPreTraining(config)
    params = init(module, 5)
    inputs = {k: jnp.asarray(v) for k, v in batch(config, (3, 10)).items()}
    runs = _dropout_runs(module, params, inputs, "sop_logits")
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])
    eval_mode = module.apply({"params": params}, **inputs).sop_logits  # eager: equal up to XLA's fusion
    np.testing.assert_allclose(runs[0], np.asarray(eval_mode), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "head,shape",
    [
        ("AlbertForSequenceClassification", (3, 10)),
        ("AlbertForTokenClassification", (3, 10)),
        ("AlbertForMultipleChoice", (2, 3, 10)),
    ],
)
def test_finetuning_heads_keep_classifier_dropout(head, shape):
    config = AlbertConfig(**TINY, classifier_dropout_prob=0.5)
    module = modeling.HEADS[head](config)
    params = init(module, 6)
    inputs = {k: jnp.asarray(v) for k, v in batch(config, shape).items()}
    runs = _dropout_runs(module, params, inputs, "logits")
    assert all(not np.allclose(run, runs[0]) for run in runs[1:])


def test_fresh_init_is_the_original_truncated_normal():
    """Weights are drawn as TF's truncated_normal_initializer(0.02): normal(0, 0.02) cut at ±2σ.

    The cut normal has std 0.02 * sqrt(1 - 2·2·φ(2) / (2Φ(2) - 1)) = 0.02 * 0.87962 = 0.017592. Over the
    ~11k weights of the tiny model the sample std has a standard error of about 1e-4 (7e-5 with the cut
    normal's kurtosis); a plain normal(0.02) would be 24 of them away.
    """
    config = AlbertConfig(**TINY)
    params = nn.unbox(modeling.init_params(modeling.AlbertForPreTraining(config), jax.random.key(0)))
    flat = traverse_util.flatten_dict(params)
    weights = np.concatenate(
        [np.ravel(v) for path, v in flat.items() if path[-1] in ("kernel", "embedding")]
    ).astype(np.float64)
    n = weights.size
    assert n > 10_000
    phi2 = np.exp(-2.0) / np.sqrt(2 * np.pi)
    expected_std = 0.02 * np.sqrt(1 - 4 * phi2 / math.erf(2 / np.sqrt(2)))
    assert abs(expected_std - 0.017592) < 1e-6
    standard_error = expected_std / np.sqrt(2 * n)
    assert abs(weights.std() - expected_std) < 5 * standard_error, (weights.std(), expected_std)
    assert abs(weights.mean()) < 5 * expected_std / np.sqrt(n)
    assert np.abs(weights).max() <= 2 * 0.02  # nothing beyond the cut
    assert np.abs(weights).max() > 1.9 * 0.02  # but right up to it: a truncated normal, not a narrower one


# --- bad input -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    config = AlbertConfig(**TINY)
    module = modeling.AlbertModel(config)
    return module, init(module, 0)


@pytest.mark.parametrize(
    "inputs,match",
    [
        (dict(input_ids=np.array([[1, 2, 64]])), "vocab_size"),
        (dict(input_ids=np.array([[1, -1, 3]])), "vocab_size"),
        (dict(input_ids=np.array([1, 2, 3])), "rank 2"),
        (dict(input_ids=np.ones((1, 2, 3), np.int32)), "rank 2"),
        (dict(input_ids=np.ones((2, 5), np.int32), attention_mask=np.ones((2, 4))), "attention_mask"),
        (dict(input_ids=np.ones((2, 5), np.int32), attention_mask=np.ones((5,))), "attention_mask"),
        (dict(input_ids=np.ones((1, 3), np.int32), token_type_ids=np.array([[0, 1, 2]])), "type_vocab_size"),
        (dict(input_ids=np.ones((1, 33), np.int32)), "max_position_embeddings"),
    ],
    ids=[
        "id-too-big",
        "id-negative",
        "rank-1",
        "rank-3",
        "mask-shape",
        "mask-rank",
        "token-type",
        "too-long",
    ],
)
def test_bad_input_raises(tiny_model, inputs, match):
    module, params = tiny_model
    with pytest.raises(ValueError, match=match):
        module.apply({"params": params}, **{k: jnp.asarray(v) for k, v in inputs.items()})


def test_float_ids_rejected(tiny_model):
    module, params = tiny_model
    with pytest.raises(TypeError, match="integers"):
        module.apply({"params": params}, jnp.ones((1, 3), jnp.float32))


def test_multiple_choice_needs_rank_3():
    module = modeling.AlbertForMultipleChoice(AlbertConfig(**TINY))
    params = init(module, 0)
    with pytest.raises(ValueError, match="rank 3"):
        module.apply({"params": params}, jnp.ones((2, 5), jnp.int32))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(hidden_size=30, num_attention_heads=4), "not divisible by num_attention_heads"),
        (dict(num_hidden_layers=3, num_hidden_groups=2), "not divisible by num_hidden_groups"),
        (dict(hidden_act="swiglu"), "hidden_act"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        AlbertConfig(**{**TINY, **overrides})
