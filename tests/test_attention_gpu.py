"""cuDNN fused attention (`attention_impl="cudnn"`) against XLA's masked attention. Needs a GPU; skips
elsewhere. bf16 results are judged against an fp32 XLA reference: cuDNN's error must be about XLA-bf16's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from albert_jax.config import AlbertConfig
from albert_jax.modeling import AlbertModel, init_params

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU (JAX backend is not gpu)"
)

B, T = 4, 128


def _model(impl: str, dtype: str = "bfloat16") -> AlbertModel:
    cfg = AlbertConfig.from_preset(
        "base", num_hidden_layers=2, vocab_size=1000, dtype=dtype, attention_impl=impl
    )
    return AlbertModel(cfg)


def _inputs(seed: int, mask_kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 1000, (B, T)).astype(np.int32)
    lengths = rng.integers(T // 4, T + 1, B) if mask_kind == "right_padded" else np.full(B, T)
    return ids, (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _value_and_grad(model, params, ids, mask):
    def loss(p):  # a loss over the real (unpadded) positions only, as every head's
        out = model.apply({"params": p}, ids, mask).last_hidden_state.astype(jnp.float32)
        return jnp.sum(out * mask[..., None] * jnp.linspace(-1, 1, out.shape[-1]))

    return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize("mask_kind", ["right_padded", "full"])
def test_cudnn_matches_xla(mask_kind):
    ids, mask = _inputs(1, mask_kind)
    params = init_params(_model("xla"), jax.random.key(0), T)
    cudnn = _value_and_grad(_model("cudnn"), params, ids, mask)
    assert "cudnn" in cudnn.lower(params).compile().as_text().lower(), "no cuDNN kernel in the program"
    got = {"cudnn": cudnn(params), "xla": _value_and_grad(_model("xla"), params, ids, mask)(params)}
    ref_loss, ref_grads = _value_and_grad(_model("xla", "float32"), params, ids, mask)(params)
    ref_grads = jax.tree_util.tree_leaves_with_path(ref_grads)
    errors = {}
    for name, (loss, grads) in got.items():
        leaves = [_rel(g, r) for g, (_, r) in zip(jax.tree.leaves(grads), ref_grads)]
        errors[name] = (
            _rel(loss, ref_loss),
            max(leaves),
            jax.tree_util.keystr(ref_grads[int(np.argmax(leaves))][0]),
        )
    print(errors)
    assert errors["cudnn"][0] < 2 * errors["xla"][0] + 1e-3, errors
    assert errors["cudnn"][1] < 2 * errors["xla"][1] + 1e-2, errors


def test_mask_cudnn_cannot_express_is_nan():
    ids, mask = _inputs(2, "right_padded")
    mask[0, 3] = 0  # a hole: not a prefix
    params = init_params(_model("xla"), jax.random.key(0), T)
    out = np.asarray(_model("cudnn").apply({"params": params}, ids, mask).last_hidden_state, np.float32)
    assert np.isnan(out[0]).all() and np.isfinite(out[1:]).all()
