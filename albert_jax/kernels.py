"""Fused elementwise/normalisation kernels for the encoder, written in Pallas (issue 21, GPU part).

On an H200 (ALBERT-large, seq 512, bf16) the matmuls run near the card's ceiling, while LayerNorm, GELU and
the bias/residual adds around them take about a third of the step: XLA runs each of them as several
fusions (the bias add, the residual add, the mean, the variance, the normalisation; and their transposes in
the backward pass), every one of which reads and writes the activations in HBM again. These kernels read
the activations once and write the result once, forward and backward:

* `add_layer_norm(x, bias, residual, scale, shift, eps=...)` is ``LayerNorm(x + bias + residual)`` over
  the last axis: the dense layer's bias add, the residual add and the whole LayerNorm in one pass over the
  rows. Its backward pass is one more pass: it recomputes the sum and the row statistics from ``x`` and
  ``residual`` (nothing but the inputs is saved) and writes the gradient of the sum (which is that of
  ``x`` and of ``residual``) plus per-block partial sums of the gradients of ``bias``, ``scale`` and
  ``shift``, which are summed over the blocks in JAX.
* `bias_gelu(x, bias, approximate=...)` is ``gelu(x + bias)``: the feed-forward layer's bias add and its
  activation in one pass, blocked over rows and columns (the intermediate size goes up to 16384). The
  backward pass recomputes ``x + bias`` and writes ``g * gelu'(x + bias)`` and per-block partial sums of
  the bias gradient.

Numerics: every kernel computes in float32 whatever the activation dtype, and rounds only its results to
the dtype of the input they belong to (activations in ``x``'s dtype, parameter gradients in each
parameter's dtype). LayerNorm computes its variance as E[(v - mean)^2], as flax's ``nn.LayerNorm`` does
with ``use_fast_variance=False``, and matches it with ``dtype`` set to ``x``'s dtype; unlike the XLA path
in the model, ``x + bias + residual`` is not rounded to the activation dtype before the statistics. Exact
GELU uses a rational erfc approximation (Triton has no ``erf``): 1.2e-7 relative error in exact
arithmetic; in float32 its gelu is as far from the float64 one as XLA's (3.8e-7 absolute on [-12, 12]).

Each function runs its kernels through the Triton lowering on a GPU and in Pallas' interpret mode
elsewhere (``interpret=None``), which is slow and meant only for testing on CPU. Rows are all leading
axes flattened; blocks are powers of two (Triton needs them) and the tails of the rows and columns are
masked, so any shape works.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

Array = jax.Array

__all__ = ["add_layer_norm", "bias_gelu"]

# Elements (rows x padded columns) one program holds per array. Triton keeps a block in registers; the
# LayerNorm backward holds about seven such arrays at once.
_BLOCK_ELEMENTS = 4096
# Backward passes loop over this many row blocks per program at most, so that the per-block partial sums of
# the parameter gradients stay small next to the activations; they aim at about this many programs.
_MAX_STEPS = 64
_TARGET_PROGRAMS = 512
# bias_gelu's column block.
_MAX_COL_BLOCK = 1024

_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# erfc(z) for z >= 0 as t * exp(-z^2 + P(t)), t = 1 / (1 + z/2) (Numerical Recipes' erfcc, a Chebyshev
# fit with relative error below 1.2e-7 in exact arithmetic).
_ERFC = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


def _default_interpret(interpret: bool | None) -> bool:
    return jax.default_backend() != "gpu" if interpret is None else bool(interpret)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _clamp_pow2(n: int, lo: int, hi: int) -> int:
    """The largest power of two <= n, clamped to [lo, hi] (both powers of two)."""
    n = max(1, int(n))
    return min(hi, max(lo, 1 << (n.bit_length() - 1)))


def _compiler_params(block_elements: int) -> plgpu.CompilerParams:
    # As Triton's LayerNorm tutorial: a warp per 256 elements of the block, 8 warps at most. Untuned.
    return plgpu.CompilerParams(num_warps=_clamp_pow2(block_elements // 256, 1, 8), num_stages=1)


def _backward_steps(n_rows: int, block_rows: int) -> int:
    """Row blocks per backward program: enough programs to fill the GPU, few enough partial sums."""
    return _clamp_pow2(pl.cdiv(pl.cdiv(n_rows, block_rows), _TARGET_PROGRAMS), 1, _MAX_STEPS)


def _iota(shape: tuple[int, ...], dim: int) -> Array:
    return lax.broadcasted_iota(jnp.int32, shape, dim)


def _zero(ref) -> Array:
    return jnp.zeros((), ref.dtype)


def _load_rows(ref, row0, n_rows: int, n_cols: int, col0=0) -> tuple[Array, Array]:
    """A [rows, cols] block from `ref` as float32, zero outside the array, and its in-bounds mask."""
    shape = ref.shape
    mask = ((row0 + _iota(shape, 0)) < n_rows) & ((col0 + _iota(shape, 1)) < n_cols)
    return plgpu.load(ref, mask=mask, other=_zero(ref)).astype(jnp.float32), mask


def _load_vec(ref, n_cols: int, col0=0) -> Array:
    """A [cols] block (a parameter vector) as float32, zero outside the array."""
    mask = (col0 + _iota(ref.shape, 0)) < n_cols
    return plgpu.load(ref, mask=mask, other=_zero(ref)).astype(jnp.float32)


def _loop(steps: int, body, init):
    return body(0, init) if steps == 1 else lax.fori_loop(0, steps, body, init)


def _sub_block(j, block_rows: int) -> pl.Slice:
    """Rows [j * block_rows, (j + 1) * block_rows) of a program's block; j: the loop index (or 0)."""
    start = j * block_rows
    return pl.ds(start if isinstance(start, int) else pl.multiple_of(start, block_rows), block_rows)


def _flatten(x: Array) -> tuple[Array, int, int]:
    n_cols = x.shape[-1]
    n_rows = math.prod(x.shape[:-1])
    return x.reshape(n_rows, n_cols), n_rows, n_cols


# ------------------------------------------------------------------------------------------------------
# add_layer_norm


def _ln_stats(x, b, r, col_mask, n_cols: int, eps: float):
    """(v - mean) (zero in the padding columns) and 1/sqrt(var + eps) of v = x + b + r, over each row."""
    v = (x + b[None, :]) + r
    mean = jnp.sum(v, axis=1, keepdims=True) / n_cols
    centred = jnp.where(col_mask, v - mean, 0.0)
    var = jnp.sum(centred * centred, axis=1, keepdims=True) / n_cols
    return centred, lax.rsqrt(var + eps)


def _ln_fwd_kernel(x_ref, b_ref, r_ref, s_ref, t_ref, o_ref, *, n_rows, n_cols, eps):
    row0 = pl.program_id(0) * x_ref.shape[0]
    x, mask = _load_rows(x_ref, row0, n_rows, n_cols)
    r, _ = _load_rows(r_ref, row0, n_rows, n_cols)
    b, s, t = (_load_vec(ref, n_cols) for ref in (b_ref, s_ref, t_ref))
    col_mask = _iota(x_ref.shape, 1) < n_cols
    centred, rstd = _ln_stats(x, b, r, col_mask, n_cols, eps)
    y = centred * (rstd * s[None, :]) + t[None, :]  # flax's order: (v - mean) * (rsqrt(var + eps) * scale)
    plgpu.store(o_ref, y.astype(o_ref.dtype), mask=mask)


def _ln_bwd_kernel(
    x_ref, b_ref, r_ref, s_ref, g_ref, dv_ref, db_ref, ds_ref, dt_ref, *, n_rows, n_cols, eps, block_rows
):
    steps = x_ref.shape[0] // block_rows
    width = x_ref.shape[1]
    program_row0 = pl.program_id(0) * x_ref.shape[0]
    b, s = _load_vec(b_ref, n_cols), _load_vec(s_ref, n_cols)
    col_mask = _iota((block_rows, width), 1) < n_cols

    def step(j, acc):
        acc_db, acc_ds, acc_dt = acc
        rows = _sub_block(j, block_rows)
        row0 = program_row0 + j * block_rows
        x, mask = _load_rows(x_ref.at[rows, :], row0, n_rows, n_cols)
        r, _ = _load_rows(r_ref.at[rows, :], row0, n_rows, n_cols)
        g, _ = _load_rows(g_ref.at[rows, :], row0, n_rows, n_cols)  # zero outside the array
        centred, rstd = _ln_stats(x, b, r, col_mask, n_cols, eps)
        xhat = centred * rstd
        dxhat = g * s[None, :]
        c1 = jnp.sum(dxhat * xhat, axis=1, keepdims=True) / n_cols
        c2 = jnp.sum(dxhat, axis=1, keepdims=True) / n_cols
        dv = jnp.where(mask, (dxhat - (xhat * c1 + c2)) * rstd, 0.0)
        plgpu.store(dv_ref.at[rows, :], dv.astype(dv_ref.dtype), mask=mask)
        return (
            acc_db + jnp.sum(dv, axis=0),
            acc_ds + jnp.sum(g * xhat, axis=0),
            acc_dt + jnp.sum(g, axis=0),
        )

    zeros = jnp.zeros((width,), jnp.float32)
    acc = _loop(steps, step, (zeros, zeros, zeros))
    for ref, total in zip((db_ref, ds_ref, dt_ref), acc):
        ref[...] = total[None, :]


def _ln_forward(x, bias, residual, scale, shift, eps, interpret, block_rows):
    x2, n_rows, n_cols = _flatten(x)
    width = _next_pow2(n_cols)
    rows_spec = pl.BlockSpec((block_rows, width), lambda i: (i, 0))
    vec_spec = pl.BlockSpec((width,), lambda i: (0,))
    out = pl.pallas_call(
        functools.partial(_ln_fwd_kernel, n_rows=n_rows, n_cols=n_cols, eps=eps),
        out_shape=jax.ShapeDtypeStruct((n_rows, n_cols), x.dtype),
        grid=(pl.cdiv(n_rows, block_rows),),
        in_specs=[rows_spec, vec_spec, rows_spec, vec_spec, vec_spec],
        out_specs=rows_spec,
        interpret=interpret,
        compiler_params=_compiler_params(block_rows * width),
        name="add_layer_norm_fwd",
    )(x2, bias, residual.reshape(n_rows, n_cols), scale, shift)
    return out.reshape(x.shape)


def _ln_backward(x, bias, residual, scale, g, eps, interpret, block_rows, steps):
    x2, n_rows, n_cols = _flatten(x)
    width = _next_pow2(n_cols)
    program_rows = block_rows * steps
    grid = pl.cdiv(n_rows, program_rows)
    rows_spec = pl.BlockSpec((program_rows, width), lambda i: (i, 0))
    vec_spec = pl.BlockSpec((width,), lambda i: (0,))
    part_spec = pl.BlockSpec((1, width), lambda i: (i, 0))
    part_shape = jax.ShapeDtypeStruct((grid, width), jnp.float32)
    dv, db, ds, dt = pl.pallas_call(
        functools.partial(_ln_bwd_kernel, n_rows=n_rows, n_cols=n_cols, eps=eps, block_rows=block_rows),
        out_shape=(jax.ShapeDtypeStruct((n_rows, n_cols), x.dtype), part_shape, part_shape, part_shape),
        grid=(grid,),
        in_specs=[rows_spec, vec_spec, rows_spec, vec_spec, rows_spec],
        out_specs=(rows_spec, part_spec, part_spec, part_spec),
        interpret=interpret,
        compiler_params=_compiler_params(block_rows * width),
        name="add_layer_norm_bwd",
    )(x2, bias, residual.reshape(n_rows, n_cols), scale, g.reshape(n_rows, n_cols))
    dv = dv.reshape(x.shape)
    return dv, db, ds, dt


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _add_ln(x, bias, residual, scale, shift, eps, interpret, fwd_rows, bwd_rows, bwd_steps):
    return _ln_forward(x, bias, residual, scale, shift, eps, interpret, fwd_rows)


def _add_ln_fwd(x, bias, residual, scale, shift, eps, interpret, fwd_rows, bwd_rows, bwd_steps):
    out = _ln_forward(x, bias, residual, scale, shift, eps, interpret, fwd_rows)
    return out, (x, bias, residual, scale, shift)


def _add_ln_bwd(eps, interpret, fwd_rows, bwd_rows, bwd_steps, saved, g):
    x, bias, residual, scale, shift = saved
    dv, db, ds, dt = _ln_backward(x, bias, residual, scale, g, eps, interpret, bwd_rows, bwd_steps)
    n_cols = x.shape[-1]
    reduce = lambda part, like: jnp.sum(part[:, :n_cols], axis=0).astype(like.dtype)
    return dv, reduce(db, bias), dv.astype(residual.dtype), reduce(ds, scale), reduce(dt, shift)


_add_ln.defvjp(_add_ln_fwd, _add_ln_bwd)


def _ln_blocks(n_rows: int, n_cols: int) -> tuple[int, int, int]:
    """(forward rows per program, backward rows per step, backward steps per program)."""
    rows = _clamp_pow2(_BLOCK_ELEMENTS // _next_pow2(n_cols), 1, 16)
    return rows, rows, _backward_steps(n_rows, rows)


def add_layer_norm(
    x: Array,
    bias: Array,
    residual: Array,
    scale: Array,
    shift: Array,
    *,
    eps: float,
    interpret: bool | None = None,
) -> Array:
    """``LayerNorm(x + bias + residual) * scale + shift`` over the last axis, fused (see the module doc).

    x, residual: [..., H] in the activation dtype (the same shape); bias, scale, shift: [H] in any float
    dtype (the parameters', e.g. float32 while x is bfloat16). Statistics in float32, variance as
    E[(v - mean)^2]; the result is in x's dtype. Differentiable in every array argument; each gradient
    comes back in its input's dtype. interpret: Pallas interpret mode (None: unless the JAX backend is
    gpu).
    """
    if x.ndim < 1 or residual.shape != x.shape:
        raise ValueError(f"x and residual must have one shape [..., H], got {x.shape} and {residual.shape}")
    n_cols = x.shape[-1]
    for name, p in (("bias", bias), ("scale", scale), ("shift", shift)):
        if p.shape != (n_cols,):
            raise ValueError(f"{name} must have shape ({n_cols},), got {p.shape}")
    if x.size == 0:
        return jnp.zeros(x.shape, x.dtype) + (0 * (bias + scale + shift)).astype(x.dtype)
    blocks = _ln_blocks(math.prod(x.shape[:-1]), n_cols)
    return _add_ln(x, bias, residual, scale, shift, float(eps), _default_interpret(interpret), *blocks)


# ------------------------------------------------------------------------------------------------------
# bias_gelu


def _erfc_nonneg(z):
    t = 1.0 / (1.0 + 0.5 * z)
    poly = _ERFC[-1]
    for c in _ERFC[-2::-1]:
        poly = c + t * poly
    return t * jnp.exp(poly - z * z)


def _gelu_and_grad(u, approximate: bool, want_grad: bool):
    """gelu(u) and (if want_grad) gelu'(u), both float32, as jax.nn.gelu defines gelu."""
    if approximate:
        inner = _SQRT_2_OVER_PI * (u + 0.044715 * (u * u * u))
        t = jnp.tanh(inner)
        cdf = 0.5 * (1.0 + t)
        if not want_grad:
            return u * cdf, None
        dinner = _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * (u * u))
        return u * cdf, cdf + 0.5 * u * (1.0 - t * t) * dinner
    # cdf = erfc(-u / sqrt 2) / 2, accurate in relative terms for large negative u as well.
    z = -_SQRT_HALF * u
    tail = 0.5 * _erfc_nonneg(jnp.abs(z))
    cdf = jnp.where(z >= 0, tail, 1.0 - tail)
    if not want_grad:
        return u * cdf, None
    return u * cdf, cdf + u * (_INV_SQRT_2PI * jnp.exp(-0.5 * (u * u)))


def _gelu_fwd_kernel(x_ref, b_ref, o_ref, *, n_rows, n_cols, approximate):
    row0 = pl.program_id(0) * x_ref.shape[0]
    col0 = pl.program_id(1) * x_ref.shape[1]
    x, mask = _load_rows(x_ref, row0, n_rows, n_cols, col0)
    b = _load_vec(b_ref, n_cols, col0)
    y, _ = _gelu_and_grad(x + b[None, :], approximate, want_grad=False)
    plgpu.store(o_ref, y.astype(o_ref.dtype), mask=mask)


def _gelu_bwd_kernel(x_ref, b_ref, g_ref, dx_ref, db_ref, *, n_rows, n_cols, approximate, block_rows):
    steps = x_ref.shape[0] // block_rows
    program_row0 = pl.program_id(0) * x_ref.shape[0]
    col0 = pl.program_id(1) * x_ref.shape[1]
    b = _load_vec(b_ref, n_cols, col0)

    def step(j, acc):
        rows = _sub_block(j, block_rows)
        row0 = program_row0 + j * block_rows
        x, mask = _load_rows(x_ref.at[rows, :], row0, n_rows, n_cols, col0)
        g, _ = _load_rows(g_ref.at[rows, :], row0, n_rows, n_cols, col0)
        _, dgelu = _gelu_and_grad(x + b[None, :], approximate, want_grad=True)
        dx = jnp.where(mask, g * dgelu, 0.0)
        plgpu.store(dx_ref.at[rows, :], dx.astype(dx_ref.dtype), mask=mask)
        return acc + jnp.sum(dx, axis=0)

    acc = _loop(steps, step, jnp.zeros((x_ref.shape[1],), jnp.float32))
    db_ref[...] = acc[None, :]


def _gelu_forward(x, bias, approximate, interpret, block_rows, block_cols):
    x2, n_rows, n_cols = _flatten(x)
    spec = pl.BlockSpec((block_rows, block_cols), lambda i, j: (i, j))
    out = pl.pallas_call(
        functools.partial(_gelu_fwd_kernel, n_rows=n_rows, n_cols=n_cols, approximate=approximate),
        out_shape=jax.ShapeDtypeStruct((n_rows, n_cols), x.dtype),
        grid=(pl.cdiv(n_rows, block_rows), pl.cdiv(n_cols, block_cols)),
        in_specs=[spec, pl.BlockSpec((block_cols,), lambda i, j: (j,))],
        out_specs=spec,
        interpret=interpret,
        compiler_params=_compiler_params(block_rows * block_cols),
        name="bias_gelu_fwd",
    )(x2, bias)
    return out.reshape(x.shape)


def _gelu_backward(x, bias, g, approximate, interpret, block_rows, block_cols, steps):
    x2, n_rows, n_cols = _flatten(x)
    program_rows = block_rows * steps
    grid = (pl.cdiv(n_rows, program_rows), pl.cdiv(n_cols, block_cols))
    spec = pl.BlockSpec((program_rows, block_cols), lambda i, j: (i, j))
    dx, db = pl.pallas_call(
        functools.partial(
            _gelu_bwd_kernel, n_rows=n_rows, n_cols=n_cols, approximate=approximate, block_rows=block_rows
        ),
        out_shape=(
            jax.ShapeDtypeStruct((n_rows, n_cols), x.dtype),
            jax.ShapeDtypeStruct((grid[0], grid[1] * block_cols), jnp.float32),
        ),
        grid=grid,
        in_specs=[spec, pl.BlockSpec((block_cols,), lambda i, j: (j,)), spec],
        out_specs=(spec, pl.BlockSpec((1, block_cols), lambda i, j: (i, j))),
        interpret=interpret,
        compiler_params=_compiler_params(block_rows * block_cols),
        name="bias_gelu_bwd",
    )(x2, bias, g.reshape(n_rows, n_cols))
    return dx.reshape(x.shape), jnp.sum(db[:, :n_cols], axis=0).astype(bias.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _bias_gelu(x, bias, approximate, interpret, block_rows, block_cols, bwd_steps):
    return _gelu_forward(x, bias, approximate, interpret, block_rows, block_cols)


def _bias_gelu_fwd(x, bias, approximate, interpret, block_rows, block_cols, bwd_steps):
    return _gelu_forward(x, bias, approximate, interpret, block_rows, block_cols), (x, bias)


def _bias_gelu_bwd(approximate, interpret, block_rows, block_cols, bwd_steps, saved, g):
    x, bias = saved
    return _gelu_backward(x, bias, g, approximate, interpret, block_rows, block_cols, bwd_steps)


_bias_gelu.defvjp(_bias_gelu_fwd, _bias_gelu_bwd)


def _gelu_blocks(n_rows: int, n_cols: int) -> tuple[int, int, int]:
    """(rows per block, columns per block, backward steps per program)."""
    cols = min(_next_pow2(n_cols), _MAX_COL_BLOCK)
    rows = _clamp_pow2(_BLOCK_ELEMENTS // cols, 1, 64)
    n_col_blocks = pl.cdiv(n_cols, cols)
    steps = _clamp_pow2(pl.cdiv(pl.cdiv(n_rows, rows) * n_col_blocks, _TARGET_PROGRAMS), 1, _MAX_STEPS)
    return rows, cols, steps


def bias_gelu(x: Array, bias: Array, *, approximate: bool, interpret: bool | None = None) -> Array:
    """``gelu(x + bias)`` (jax.nn.gelu's definition; approximate=True: the tanh form), fused.

    x: [..., F] in the activation dtype; bias: [F] in any float dtype. Computed in float32; the result is
    in x's dtype. Differentiable in x and bias, gradients in their dtypes. interpret: Pallas interpret
    mode (None: unless the JAX backend is gpu).
    """
    if x.ndim < 1 or bias.shape != x.shape[-1:]:
        raise ValueError(f"bias must have shape ({x.shape[-1:]},) for x of shape {x.shape}, got {bias.shape}")
    if x.size == 0:
        return jnp.zeros(x.shape, x.dtype) + (0 * bias).astype(x.dtype)
    blocks = _gelu_blocks(math.prod(x.shape[:-1]), x.shape[-1])
    return _bias_gelu(x, bias, bool(approximate), _default_interpret(interpret), *blocks)
