"""Optimisers for ALBERT pretraining and fine-tuning.

Reproduces google-research/albert's ``optimization.py`` + ``lamb_optimizer.py``
with optax building blocks:

* ``learning_rate_schedule``: linear warmup from 0, then polynomial decay that
  is computed over *all* ``total_steps`` from step 0 (ALBERT does not restart
  the decay after warmup, so the rate drops to ``peak * (1 - warmup/total)``
  at the end of warmup rather than reaching ``peak``).
* ``lamb``: ALBERT's LAMB, i.e. Adam moments *without* bias correction,
  decoupled weight decay and a per-tensor trust ratio, with LayerNorm
  parameters and biases excluded from both decay and layer adaptation.
* ``adamw``: ALBERT's ``AdamWeightDecayOptimizer`` (the fine-tuning optimizer):
  Adam moments *without* bias correction and decoupled weight decay, with the
  same exclusions. At step 1 its update is about 3x larger than bias-corrected
  AdamW's, so the two are not interchangeable at the paper's learning rates.
* ``make_optimizer``: global-norm clipping -> LAMB/AdamW. Gradient
  accumulation lives in the training step (``trainer.make_train_step``), so
  clipping acts on the whole batch's gradient, as in ALBERT.
* ``skip_nonfinite``: skips (and counts) steps whose gradient is not finite.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from albert_jax import errors
from albert_jax.config import LAYERS_SCOPE

__all__ = [
    "OPTIMIZERS",
    "ScaleByAlbertAdamState",
    "adamw",
    "current_learning_rate",
    "decay_mask",
    "global_norm",
    "lamb",
    "learning_rate_schedule",
    "make_optimizer",
    "scale_by_albert_adam",
    "scale_by_layerwise_trust_ratio",
    "skip_nonfinite",
]

OPTIMIZERS = ("lamb", "adamw")

# Substrings (lower-cased) of a path component that mark a LayerNorm parameter.
_LAYER_NORM_MARKERS = ("layernorm", "layer_norm")

MaskOrFn = Any | Callable[[Any], Any] | None


def learning_rate_schedule(
    peak_lr: float,
    total_steps: int,
    warmup_steps: int,
    end_lr: float = 0.0,
    power: float = 1.0,
) -> optax.Schedule:
    """ALBERT's learning-rate curve as a function of the optimizer step.

    ``lr(t) = peak * t / warmup`` for ``t < warmup``, otherwise
    ``(peak - end) * (1 - min(t, total) / total) ** power + end``.
    Step 0 therefore has lr 0 (the first update only fills the moments).
    """
    if total_steps <= 0:
        raise errors.ConfigError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps < 0:
        raise errors.ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
    # Evaluated on the unshifted step (not optax.join_schedules, which would
    # restart the decay at the warmup boundary).
    decay = optax.polynomial_schedule(
        init_value=peak_lr, end_value=end_lr, power=power, transition_steps=total_steps
    )
    if warmup_steps == 0:
        return decay

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(count, jnp.float32)
        warm = peak_lr * (step / warmup_steps)
        return jnp.where(step < warmup_steps, warm, decay(step))

    return schedule


def _path_names(path: tuple[Any, ...]) -> list[str]:
    # Only dict keys / sequence indices are names; attribute keys come from
    # boxes such as nn.Partitioned(value=...) and would hide the leaf name.
    names = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            names.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            names.append(str(entry.idx))
    return names


def _is_decayed(path: tuple[Any, ...]) -> bool:
    names = [n.lower() for n in _path_names(path)]
    if any(marker in n for n in names for marker in _LAYER_NORM_MARKERS):
        return False
    # ALBERT excludes any variable whose name contains "bias" (e.g. output_bias).
    if names and "bias" in names[-1]:
        return False
    return True


def decay_mask(params: Any) -> Any:
    """Pytree of Python bools: True where weight decay and layer adaptation apply.

    A leaf is excluded when a path component contains ``layernorm`` or
    ``layer_norm`` (case-insensitive) or its leaf name contains ``bias``,
    mirroring ALBERT's ``exclude_from_weight_decay=["LayerNorm", "layer_norm",
    "bias"]``. Works on plain dicts and ``flax.core.FrozenDict``.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_decayed(path), params)


class ScaleByAlbertAdamState(NamedTuple):
    """State of :func:`scale_by_albert_adam`."""

    count: jax.Array
    mu: Any
    nu: Any


def _moment_dtype(dtype: Any, override: Any | None) -> jnp.dtype:
    if override is not None:
        return jnp.dtype(override)
    # At least fp32, like ALBERT's adam_m/adam_v slots, even for bf16 params.
    return jnp.promote_types(dtype, jnp.float32)


def scale_by_albert_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """Adam moment scaling ``m / (sqrt(v) + eps)`` without bias correction.

    ``mu`` is stored in ``mu_dtype`` (default: at least fp32); ``nu`` is always
    at least fp32. The returned updates are fp32 (or wider).
    """

    def init_fn(params: Any) -> ScaleByAlbertAdamState:
        mu = jax.tree.map(lambda p: jnp.zeros(p.shape, _moment_dtype(p.dtype, mu_dtype)), params)
        nu = jax.tree.map(lambda p: jnp.zeros(p.shape, _moment_dtype(p.dtype, None)), params)
        return ScaleByAlbertAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

    def update_fn(
        updates: Any, state: ScaleByAlbertAdamState, params: Any = None
    ) -> tuple[Any, ScaleByAlbertAdamState]:
        del params
        # Moments are updated in (at least) fp32 and only then stored.
        mu = jax.tree.map(
            lambda g, m: b1 * m.astype(jnp.promote_types(m.dtype, jnp.float32)) + (1.0 - b1) * g,
            updates,
            state.mu,
        )
        nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * jnp.square(g.astype(v.dtype)), updates, state.nu)
        new_updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        mu = jax.tree.map(lambda m, old: m.astype(old.dtype), mu, state.mu)
        count = optax.safe_int32_increment(state.count)
        return new_updates, ScaleByAlbertAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def _is_stacked(path: tuple[Any, ...]) -> bool:
    """Whether a leaf holds one tensor per layer on its leading axis: the scanned per-layer parameters of
    `model.sharing` none/attention/ffn, under the encoder's `config.LAYERS_SCOPE` ([L, ...])."""
    return LAYERS_SCOPE in _path_names(path)


def scale_by_layerwise_trust_ratio() -> optax.GradientTransformation:
    """``optax.scale_by_trust_ratio`` with one ratio per tensor of the model, not per array: a stacked
    leaf ([L, ...], `_is_stacked`) gets L ratios, each from its own layer's norms, as the original,
    which keeps every layer's weights as separate variables, computes them."""

    def update(updates: Any, state: optax.ScaleByTrustRatioState, params: Any = None):
        if params is None:
            raise ValueError("the trust ratio needs the parameters")

        def scale(path, u, p):
            axes = tuple(range(1, u.ndim)) if _is_stacked(path) and u.ndim > 1 else None
            norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes, keepdims=True))  # noqa: E731
            p_norm, u_norm = norm(p), norm(u)
            ratio = jnp.where(
                (p_norm == 0) | (u_norm == 0), 1.0, p_norm / jnp.where(u_norm == 0, 1.0, u_norm)
            )
            return (u * ratio).astype(u.dtype)

        return jax.tree_util.tree_map_with_path(scale, updates, params), state

    return optax.GradientTransformation(lambda params: optax.ScaleByTrustRatioState(), update)


def lamb(
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    mask: MaskOrFn = decay_mask,
    bias_correction: bool = False,
    mu_dtype: Any | None = None,
    *,
    trust_ratio: bool = True,
) -> optax.GradientTransformation:
    """ALBERT's LAMB (no gradient clipping inside).

    Per leaf: ``u = m / (sqrt(v) + eps)``; ``u += wd * w`` where ``mask``;
    ``u *= ||w|| / ||u||`` where ``mask`` (1 if either norm is 0; per layer for a stacked leaf,
    `scale_by_layerwise_trust_ratio`);
    ``w -= lr * u``. ``mask`` is a bool pytree, a function of params, or
    ``None`` (decay and adapt every leaf). ``bias_correction=True`` swaps in
    ``optax.scale_by_adam`` (the LAMB paper's variant); ``trust_ratio=False``
    is ALBERT's AdamW (`adamw`).
    """
    if bias_correction:
        moments = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype)
    else:
        # ALBERT skips Adam bias correction.
        moments = scale_by_albert_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype)
    steps = [moments, optax.add_decayed_weights(weight_decay, mask)]
    if trust_ratio:
        ratio = scale_by_layerwise_trust_ratio()
        steps.append(ratio if mask is None else optax.masked(ratio, mask))
    return optax.chain(*steps, optax.scale_by_learning_rate(learning_rate))


def adamw(learning_rate: float | optax.Schedule, **kwargs: Any) -> optax.GradientTransformation:
    """ALBERT's AdamW: ``w -= lr * (m / (sqrt(v) + eps) + wd * w)`` with uncorrected moments; ``mask``
    selects the decayed leaves (LayerNorm and biases excluded by default). `lamb`'s other keywords."""
    return lamb(learning_rate, trust_ratio=False, **kwargs)


def make_optimizer(
    name: str,
    learning_rate: float,
    *,
    total_steps: int,
    warmup_steps: int,
    clip_norm: float | None = 1.0,
    end_lr: float = 0.0,
    **hyperparameters: Any,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Build ``clip_by_global_norm -> lamb|adamw`` with ALBERT's schedule.

    ``learning_rate`` is the peak rate; the schedule counts optimizer steps. ``hyperparameters`` go
    to `lamb`/`adamw` (``weight_decay``, ``b1``, ``b2``, ``eps``, ``mu_dtype``, with ALBERT's defaults).
    Returns ``(transformation, schedule)``.
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise errors.ConfigError(f"Unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")
    schedule = learning_rate_schedule(learning_rate, total_steps, warmup_steps, end_lr=end_lr)
    opt = (lamb if key == "lamb" else adamw)(schedule, **hyperparameters)
    if clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    return opt, schedule


def _schedule_count(opt_state: Any) -> jax.Array:
    counts = [
        s.count
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
        if isinstance(s, optax.ScaleByScheduleState)
    ]
    if not counts:
        raise ValueError("opt_state has no learning-rate schedule state (ScaleByScheduleState).")
    return counts[0]


def current_learning_rate(schedule: optax.Schedule, opt_state_or_step: Any) -> jax.Array:
    """Learning rate the *next* optimizer update will use.

    Accepts an outer step (int/array) or an opt state from
    :func:`make_optimizer`; for the latter the schedule's own update count is
    read (it does not advance on skipped non-finite steps).
    """
    if isinstance(opt_state_or_step, (int, jax.Array)) or hasattr(opt_state_or_step, "dtype"):
        return schedule(opt_state_or_step)
    return schedule(_schedule_count(opt_state_or_step))


def global_norm(tree: Any) -> jax.Array:
    """Global L2 norm of a pytree (e.g. gradients for metrics); ``optax.tree.norm``."""
    return optax.tree.norm(tree)


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optax.apply_if_finite(inner, max_consecutive_errors=inf)`` with the same state, so checkpoints and
    the counters read by the training loop are unchanged: a step whose gradient holds a NaN or inf
    updates nothing (zero updates, inner state kept) and is counted.

    The difference is how: optax tests every leaf and branches with ``lax.cond``, whose two branches XLA
    compiles apart and cannot fuse into the update, a quarter of a large step's fusions. Here one scalar
    test, the global norm's finiteness (a sum of squares that overflows is not finite either: such a
    step would be skipped too), selects with ``jnp.where``, which fuses into the update's own loops.
    """

    def init(params: Any) -> optax.ApplyIfFiniteState:
        return optax.ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True, jnp.bool_),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update(updates: Any, state: optax.ApplyIfFiniteState, params: Any = None):
        finite = jnp.isfinite(optax.tree.norm(updates))
        new_updates, new_inner = inner.update(updates, state.inner_state, params)
        new_updates = jax.tree.map(lambda u: jnp.where(finite, u, 0), new_updates)
        new_inner = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_inner, state.inner_state)
        skipped = jnp.logical_not(finite).astype(jnp.int32)
        return new_updates, optax.ApplyIfFiniteState(
            notfinite_count=jnp.where(finite, 0, state.notfinite_count + 1),
            last_finite=finite,
            total_notfinite=state.total_notfinite + skipped,
            inner_state=new_inner,
        )

    return optax.GradientTransformation(init, update)
