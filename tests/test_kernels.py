"""The fused Pallas kernels (albert_jax.kernels) against the plain-JAX path they replace, forward and backward.

On CPU the kernels run in Pallas' interpret mode, which is slow to compile: shapes are small and each case
compiles its forward and backward pass once (one jit). The references run in float32 on the same inputs:
float32 kernels must match them to float32 rounding; bfloat16 kernels, which compute in float32 and round
only their results, to bfloat16 rounding of the results, and no worse than the model's XLA bfloat16 path
(which rounds x + bias + residual before the statistics). Without a GPU, the Triton lowering itself is
checked by exporting for cuda; `TestOnGpu` runs the Triton kernels on the same checks at ALBERT's sizes,
and skips unless the JAX backend is gpu.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from albert_jax import kernels
from albert_jax.kernels import add_layer_norm, bias_gelu

EPS = 1e-12  # ALBERT's layer_norm_eps
F32, BF16 = jnp.float32, jnp.bfloat16
# Largest error allowed, relative to the largest reference value: float32 rounding (with room for sums
# taken in another order), bfloat16 rounding of the result.
TOL = {F32: 2e-5, BF16: 2**-7}
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _max_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _rel(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def _values_and_vjps(fns: dict, args: tuple, g) -> dict:
    """{name: (fn(*args), the vjp of fn at args applied to g)}, every input's gradient, all in one jit (one
    compile); the "reference" runs on the inputs and g cast to float32."""

    def run(args, g):
        results = {}
        for name, fn in fns.items():
            a, c = (_f32(args), jnp.asarray(g, F32)) if name == "reference" else (args, g)
            out, vjp = jax.vjp(fn, *a)
            results[name] = (out, vjp(c))
        return results

    # XLA:CPU compiling the interpreted kernels dominates this file's time; its LLVM passes the most.
    return jax.jit(run, compiler_options=_FAST_COMPILE if jax.default_backend() == "cpu" else None)(args, g)


def _check(got, ref, args, dtype, param_idx=()):
    """Kernel (out, grads) against the float32 reference (out, grads) on the same inputs."""
    (out, grads), (ref_out, ref_grads) = got, ref
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert _max_err(out, ref_out) <= TOL[dtype], "forward"
    for i, (grad, ref_grad, arg) in enumerate(zip(grads, ref_grads, args)):
        assert grad.dtype == arg.dtype and grad.shape == arg.shape, f"gradient {i}"
        # parameter gradients are summed in float32 from float32 values, whatever the activation dtype
        tol = TOL[F32] if i in param_idx else TOL[dtype]
        assert _max_err(grad, ref_grad) <= tol, f"gradient {i}: {_max_err(grad, ref_grad)}"


def _no_worse_than_xla(got, xla, ref):
    """bfloat16: the kernel's error (norm-wise) is at most that of the XLA bfloat16 path, or bf16 rounding."""
    for name, g, x, r in zip(("out", "grads"), got, xla, ref):
        for a, b, c in zip(jax.tree.leaves(g), jax.tree.leaves(x), jax.tree.leaves(r)):
            assert _rel(a, c) <= max(_rel(b, c), 2**-8), name


def _f32(args):
    return tuple(jnp.asarray(a, F32) for a in args)


# ------------------------------------------------------------------------------------------------------
# add_layer_norm


def _ln_inputs(seed: int, shape: tuple[int, ...], dtype):
    rng = np.random.default_rng(seed)
    h = shape[-1]
    x = rng.normal(size=shape) * 2 + 3  # a mean far from 0: the variance must be E[(v - mean)^2]
    r = rng.normal(size=shape)
    bias, scale, shift = rng.normal(size=h) * 0.1, 1 + rng.normal(size=h) * 0.1, rng.normal(size=h) * 0.1
    args = (jnp.asarray(x, dtype), jnp.asarray(bias, F32), jnp.asarray(r, dtype))
    args += (jnp.asarray(scale, F32), jnp.asarray(shift, F32))
    return args, jnp.asarray(rng.normal(size=shape), dtype)


def _flax_ln(v, scale, shift, dtype):
    ln = nn.LayerNorm(epsilon=EPS, dtype=dtype, param_dtype=F32, use_fast_variance=False)
    return ln.apply({"params": {"scale": scale, "bias": shift}}, v)


def _ln_reference(x, bias, residual, scale, shift):
    return _flax_ln(x + bias + residual, scale, shift, x.dtype)


def _ln_xla_model(x, bias, residual, scale, shift):
    """The model's XLA path: the dense layer adds its bias in the activation dtype, then the residual."""
    return _flax_ln(x + bias.astype(x.dtype) + residual, scale, shift, x.dtype)


_LN_PARAMS = (1, 3, 4)  # bias, scale, shift


def _check_add_layer_norm(fn, shape, dtype, seed=0):
    args, g = _ln_inputs(seed, shape, dtype)
    fns = {"kernel": fn, "reference": _ln_reference}
    if dtype == BF16:
        fns["xla"] = _ln_xla_model
    res = _values_and_vjps(fns, args, g)
    _check(res["kernel"], res["reference"], args, dtype, _LN_PARAMS)
    if dtype == BF16:
        _no_worse_than_xla(res["kernel"], res["xla"], res["reference"])


def test_add_layer_norm_float32():
    """39 rows (3 x 13): three 16-row blocks, the last one 7 rows short; H=200 in a 256-wide block."""
    _check_add_layer_norm(lambda *a: add_layer_norm(*a, eps=EPS), (3, 13, 200), F32)


def test_add_layer_norm_bfloat16_small_blocks():
    """Forward blocks of 4 rows, backward programs of 4 x 4 rows (the loop): 37 rows leave tails in both."""
    fn = lambda *a: kernels._add_ln(*a, EPS, kernels._default_interpret(None), 4, 4, 4)
    _check_add_layer_norm(fn, (37, 128), BF16, seed=1)


def test_add_layer_norm_rejects_bad_shapes():
    x, v = np.zeros((2, 8), np.float32), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="residual"):
        add_layer_norm(x, v, x[:, :7], v, v, eps=EPS)
    with pytest.raises(ValueError, match="scale"):
        add_layer_norm(x, v, x, v[:7], v, eps=EPS)


def test_no_rows():
    x, v = jax.ShapeDtypeStruct((0, 8), BF16), jax.ShapeDtypeStruct((8,), F32)
    ln = jax.eval_shape(jax.grad(lambda *a: add_layer_norm(*a, eps=EPS).sum(), argnums=(0, 1)), x, v, x, v, v)
    assert ln[0].shape == (0, 8) and ln[0].dtype == BF16 and ln[1].dtype == F32
    assert jax.eval_shape(lambda x, b: bias_gelu(x, b, approximate=True), x, v).dtype == BF16


# ------------------------------------------------------------------------------------------------------
# bias_gelu


def _gelu_inputs(seed: int, shape: tuple[int, ...], dtype):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * 3  # well into both tails
    args = (jnp.asarray(x, dtype), jnp.asarray(rng.normal(size=shape[-1]) * 0.5, F32))
    return args, jnp.asarray(rng.normal(size=shape), dtype)


def _check_bias_gelu(fn, shape, dtype, approximate, seed=0):
    args, g = _gelu_inputs(seed, shape, dtype)
    fns = {"kernel": fn, "reference": lambda x, b: jax.nn.gelu(x + b, approximate=approximate)}
    if dtype == BF16:  # the model: the bias added in bf16, gelu in bf16
        fns["xla"] = lambda x, b: jax.nn.gelu(x + b.astype(x.dtype), approximate=approximate)
    res = _values_and_vjps(fns, args, g)
    _check(res["kernel"], res["reference"], args, dtype, param_idx=(1,))
    if dtype == BF16:
        _no_worse_than_xla(res["kernel"], res["xla"], res["reference"])


@pytest.mark.parametrize(
    "dtype, approximate, shape",
    [(F32, True, (37, 256)), (BF16, False, (37, 256)), (BF16, True, (2, 19, 300))],
    ids=["float32-tanh-F256", "bfloat16-erf-F256", "bfloat16-tanh-F300"],
)
def test_bias_gelu(dtype, approximate, shape):
    _check_bias_gelu(lambda x, b: bias_gelu(x, b, approximate=approximate), shape, dtype, approximate)


def test_bias_gelu_float32_erf_small_blocks():
    """8 x 128 blocks over 38 x 300: a row tail, a column tail, two row blocks per backward program."""
    fn = lambda x, b: kernels._bias_gelu(x, b, False, kernels._default_interpret(None), 8, 128, 2)
    _check_bias_gelu(fn, (38, 300), F32, approximate=False, seed=1)


def test_bias_gelu_rejects_bad_shapes():
    with pytest.raises(ValueError, match="bias"):
        bias_gelu(np.zeros((2, 8), np.float32), np.zeros(7, np.float32), approximate=False)


# ------------------------------------------------------------------------------------------------------
# the Triton kernels


def test_lowers_to_triton_at_albert_sizes():
    """The Triton lowering (Pallas to Triton IR: power-of-two blocks, primitives Triton has) runs without a
    GPU when exporting for cuda. Only compiling that IR to PTX, and running it, needs one (`TestOnGpu`)."""
    from jax import export

    def triton_calls(fn, args, g) -> int:
        def vjp(args, g):
            out, f = jax.vjp(fn, *args)
            return out, f(g)

        text = export.export(
            jax.jit(vjp),
            platforms=["cuda"],
            disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
        )(args, g).mlir_module()
        return text.count("xla.gpu.triton")  # the forward and the backward kernel

    rows = 16 * 512 + 1  # odd; backward programs loop over several row blocks
    for h in (768, 4096):  # base (not a power of two), xxlarge
        x, v = jax.ShapeDtypeStruct((rows, h), BF16), jax.ShapeDtypeStruct((h,), F32)
        assert triton_calls(lambda *a: add_layer_norm(*a, eps=EPS, interpret=False), (x, v, x, v, v), x) == 2
    for f, approximate in ((3072, False), (16384, True)):
        x, v = jax.ShapeDtypeStruct((rows, f), BF16), jax.ShapeDtypeStruct((f,), F32)
        fn = functools.partial(bias_gelu, approximate=approximate, interpret=False)
        assert triton_calls(fn, (x, v), x) == 2


@pytest.mark.skipif(
    jax.default_backend() != "gpu",
    reason="the Triton (non-interpret) kernels need a GPU (JAX backend is not gpu)",
)
class TestOnGpu:
    """interpret=False on the same checks, at ALBERT's widths (base 768/3072, large 1024/4096, xxlarge
    4096/16384) with an odd number of rows, with the default blocks."""

    @pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
    @pytest.mark.parametrize("hidden", [768, 1024, 4096])
    def test_add_layer_norm(self, dtype, hidden):
        fn = lambda *a: add_layer_norm(*a, eps=EPS, interpret=False)
        _check_add_layer_norm(fn, (17, 513, hidden), dtype)  # backward programs loop over 4 row blocks

    @pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
    @pytest.mark.parametrize("approximate", [False, True], ids=["erf", "tanh"])
    @pytest.mark.parametrize("width", [3072, 16384])
    def test_bias_gelu(self, dtype, approximate, width):
        fn = functools.partial(bias_gelu, approximate=approximate, interpret=False)
        _check_bias_gelu(fn, (3, 517, width), dtype, approximate)

    def test_compiles_to_triton(self):
        args, g = _ln_inputs(0, (64, 1024), BF16)
        fn = lambda *a: add_layer_norm(*a, eps=EPS)  # interpret=None: not interpreted on a GPU
        hlo = jax.jit(lambda a, g: jax.vjp(fn, *a)[1](g)).lower(args, g).compile().as_text()
        assert "triton" in hlo.lower(), "no Triton kernel in the compiled program"
