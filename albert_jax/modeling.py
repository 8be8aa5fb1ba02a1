"""ALBERT in Flax linen: factorised embeddings, one shared layer group applied with `nn.scan`, HF's heads.

Shapes: B batch, T/S query/key length, C choices, E embedding size, H hidden size, N heads, D head dim,
I intermediate size, V vocabulary, P masked positions. Parameter names mirror HF's state dict
(`embeddings/word_embeddings`, `encoder/group_0/layer_0/attention/query`, …) so `hf.py` is a table.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from albert_jax import errors
from albert_jax.config import LAYERS_SCOPE, SHARED_BLOCKS, AlbertConfig

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

# hidden_act -> approximate, for the activations `kernels.bias_gelu` computes (others stay XLA's).
FUSED_GELU = {"gelu": False, "gelu_new": True, "gelu_fast": True, "gelu_pytorch_tanh": True}

_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def remat_policy(cfg: AlbertConfig) -> str:
    """The config's `remat_policy`, with "auto" resolved (config.REMAT_POLICIES says why)."""
    if cfg.remat_policy != "auto":
        return cfg.remat_policy
    scan_length = (
        cfg.num_hidden_layers // cfg.num_hidden_groups if cfg.sharing == "all" else cfg.num_hidden_layers
    )
    return "dots" if cfg.scan_layers and cfg.scan_unroll < scan_length else "none"


# --- outputs (HF field names) --------------------------------------------------------------------


@flax.struct.dataclass(kw_only=True)
class ModelOutput:
    """What every model's output carries besides its own fields: each layer's hidden states and
    attention weights, when asked for (`output_hidden_states`, `output_attentions`)."""

    hidden_states: tuple[Array, ...] | None = None
    attentions: tuple[Array, ...] | None = None


@flax.struct.dataclass(kw_only=True)
class AlbertModelOutput(ModelOutput):
    last_hidden_state: Array
    pooler_output: Array | None = None


@flax.struct.dataclass(kw_only=True)
class AlbertForPreTrainingOutput(ModelOutput):
    prediction_logits: Array
    sop_logits: Array


@flax.struct.dataclass(kw_only=True)
class MaskedLMOutput(ModelOutput):
    logits: Array


@flax.struct.dataclass(kw_only=True)
class ClassifierOutput(ModelOutput):
    """Sequence, token and multiple-choice classification: `logits` [B, labels], [B, T, labels], [B, C]."""

    logits: Array


@flax.struct.dataclass(kw_only=True)
class QuestionAnsweringOutput(ModelOutput):
    start_logits: Array
    end_logits: Array


# --- building blocks -----------------------------------------------------------------------------


def _init(config: AlbertConfig, axes: tuple[str | None, ...]):
    """The original's `tf.truncated_normal_initializer(initializer_range)`: normal(0, initializer_range)
    redrawn outside ±2 standard deviations, so std ≈ 0.88 × initializer_range (`stddev` is the
    untruncated one, as in TF). HF draws a plain normal; weights loaded from HF are unaffected."""
    return nn.with_logical_partitioning(
        nn.initializers.truncated_normal(config.initializer_range, lower=-2.0, upper=2.0), axes
    )


def dense(config: AlbertConfig, features: int, axes: tuple[str | None, str | None], name: str) -> nn.Dense:
    """A `Dense` layer in the config's dtypes with the original's initialiser; `axes`: logical (in, out)."""
    return nn.Dense(
        features,
        dtype=config.jnp_dtype,
        param_dtype=config.jnp_param_dtype,
        name=name,
        kernel_init=_init(config, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[-1:]),
    )


class _Einsum(nn.Module):
    """A linear map written as an einsum, for the attention projections' [H, N, D] / [N, D, H] kernels.

    Called without `x`, it returns its (kernel, bias) in the compute dtype, for a caller that applies
    several projections as one matmul (`fused_qkv`) or adds the bias inside a fused kernel.
    """

    config: AlbertConfig
    equation: str
    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    bias_shape: tuple[int, ...]
    bias_axes: tuple[str | None, ...]

    @nn.compact
    def __call__(self, x: Array | None = None):
        cfg = self.config
        kernel = self.param("kernel", _init(cfg, self.kernel_axes), self.kernel_shape, cfg.jnp_param_dtype)
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), self.bias_axes),
            self.bias_shape,
            cfg.jnp_param_dtype,
        )
        kernel, bias = kernel.astype(cfg.jnp_dtype), bias.astype(cfg.jnp_dtype)
        if x is None:
            return kernel, bias
        return jnp.einsum(self.equation, x.astype(cfg.jnp_dtype), kernel) + bias


class _LayerNormParams(nn.Module):
    """A LayerNorm's `scale` and `bias`, where `nn.LayerNorm` keeps them, for the fused kernel."""

    config: AlbertConfig
    axis_name: str

    @nn.compact
    def __call__(self) -> tuple[Array, Array]:
        cfg, h = self.config, self.config.hidden_size
        ones = nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,))
        zeros = nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,))
        return self.param("scale", ones, (h,), cfg.jnp_param_dtype), self.param(
            "bias", zeros, (h,), cfg.jnp_param_dtype
        )


def _residual_layer_norm(
    cfg: AlbertConfig, name: str, out: Array, bias: Array, residual: Array, dropout: nn.Dropout, det: bool
) -> Array:
    """LayerNorm(residual + dropout(out + bias)) under `name`: one Pallas pass with `fused_kernels`
    (the bias inside it unless dropout needs it first), else XLA's ops through `nn.LayerNorm`."""
    if not cfg.fused_kernels:
        return layer_norm(cfg, "hidden", name)(residual + dropout(out + bias, deterministic=det))
    from albert_jax import kernels  # Pallas: imported only where the switch is on

    if dropout.rate > 0 and not det:
        out, bias = dropout(out + bias, deterministic=det), jnp.zeros_like(bias)
    scale, shift = _LayerNormParams(cfg, "hidden", name=name)()
    norm = functools.partial(kernels.add_layer_norm, eps=cfg.layer_norm_eps)
    return _per_shard(norm, out, bias, residual, scale, shift, axes=("batch", "length", None))


def _per_shard(fn: Callable, *args: Array, axes: tuple[str | None, ...]) -> Array:
    """`fn(*args)` on each device's block under a mesh.

    A Pallas kernel is opaque to XLA's partitioner, which would gather the activations around it: under
    a mesh it runs in `jax.shard_map`, each [B, T, X] argument split by the logical `axes` through the
    run's rules (the batch over data and fsdp; `mlp` over tensor), each [X] vector like the last axis.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(*args)
    rows = jax.sharding.PartitionSpec(*nn.logical_to_mesh_axes(axes))
    specs = tuple(rows if a.ndim > 1 else jax.sharding.PartitionSpec(rows[-1]) for a in args)
    # check_vma=False: a pallas_call does not say how its outputs vary over the mesh axes.
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=rows, check_vma=False)(*args)


def layer_norm(config: AlbertConfig, axis_name: str, name: str) -> nn.LayerNorm:
    """A `LayerNorm` in the config's dtypes and epsilon, its scale and bias on logical axis `axis_name`."""
    # use_fast_variance=False: E[(x-mean)^2], as torch computes it (parity at 1e-4 on large activations).
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.jnp_dtype,
        param_dtype=config.jnp_param_dtype,
        use_fast_variance=False,
        name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis_name,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis_name,)),
    )


class AlbertEmbeddings(nn.Module):
    """Word + token-type + position embeddings (size E), LayerNorm, dropout.

    As the original does, token types are a one-hot matmul and default positions a slice of the table:
    the gradient of a gather is a scatter-add, and thousands of rows added into a 2-row (or 512-row) table
    serialise on a GPU (measured: 40 ms of a 160 ms ALBERT-large step on an H200). Word rows are looked
    up in the parameter dtype and cast after, so that their gradient is a float32 scatter-add (frequent
    ids, [MASK] or "the", contend in a bfloat16 one: openxla/xla#26371), not a cast of the whole table.
    """

    config: AlbertConfig

    @nn.compact
    def __call__(
        self, input_ids: Array, token_type_ids: Array, position_ids: Array | None, deterministic: bool
    ) -> Array:
        cfg = self.config
        embed = functools.partial(
            nn.Embed, features=cfg.embedding_size, dtype=cfg.jnp_param_dtype, param_dtype=cfg.jnp_param_dtype
        )
        words = embed(cfg.vocab_size, name="word_embeddings", embedding_init=_init(cfg, ("vocab", "embed")))
        x = words(input_ids).astype(cfg.jnp_dtype)  # BTE
        types = embed(
            cfg.type_vocab_size, name="token_type_embeddings", embedding_init=_init(cfg, (None, "embed"))
        )
        one_hot = jax.nn.one_hot(token_type_ids, cfg.type_vocab_size, dtype=cfg.jnp_dtype)
        x += jnp.einsum(  # 'BTK,KE->BTE', exact: one term per output
            "BTK,KE->BTE", one_hot, types.embedding.astype(cfg.jnp_dtype), precision=jax.lax.Precision.HIGHEST
        )
        positions = embed(
            cfg.max_position_embeddings,
            name="position_embeddings",
            embedding_init=_init(cfg, (None, "embed")),
        )
        if position_ids is None:
            x += positions.embedding[: x.shape[-2]].astype(cfg.jnp_dtype)  # TE, broadcast over B
        else:
            x += positions(position_ids).astype(cfg.jnp_dtype)
        x = layer_norm(cfg, "embed", "LayerNorm")(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)  # BTE


def _use_cudnn(cfg: AlbertConfig) -> bool:
    if cfg.attention_impl != "auto":
        return cfg.attention_impl == "cudnn"
    return jax.default_backend() == "gpu" and cfg.dtype in ("bfloat16", "float16")


_FP32_ACCUMULATION = {
    "bfloat16": jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
    "float16": jax.lax.DotAlgorithmPreset.F16_F16_F32,
}


def _softmax_attention(
    q: Array, k: Array, v: Array, mask: Array, dropout: Callable[[Array], Array] | None = None
) -> tuple[Array, Array]:
    """'BTND,BSND->BNTS' scores, softmax over the keys where `mask` [B, S] is set, 'BNTS,BSND->BTND'.

    Returns (context BTND, weights BNTS before `dropout`). The scores and softmax are fp32 whatever the
    compute dtype, as in `jax.nn.dot_product_attention`'s XLA path. Written out rather than through
    that function, whose grouped-query form adds a unit group axis to every score tensor: on CPU XLA
    then compiles extra layout copies into the scanned layer (about 9% of the large step's compile).
    """
    # Half-precision inputs accumulate in fp32; the preset keeps the backward's dot types consistent.
    precision = _FP32_ACCUMULATION.get(jnp.dtype(q.dtype).name)
    scores = jnp.einsum("BTND,BSND->BNTS", q, k, precision=precision, preferred_element_type=jnp.float32)
    scores = scores * np.float32(1.0 / np.sqrt(q.shape[-1]))
    scores = jnp.where(mask[:, None, None, :].astype(bool), scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    probs = weights if dropout is None else dropout(weights)
    return jnp.einsum("BNTS,BSND->BTND", probs, v), weights


def _cudnn_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """'BTND,BSND->BTND' through cuDNN's fused kernel, which takes sequence lengths rather than a mask.

    Lengths say the same as the mask only for right-padded rows (each mask a non-empty prefix), as every
    albert_jax pipeline and tokenizer pads. Rows that cuDNN cannot express come out NaN, so a different
    mask is never silently misread.
    """
    lengths = mask.sum(-1, dtype=jnp.int32)  # B
    prefix = jnp.all(mask.astype(bool) == (jnp.arange(mask.shape[-1]) < lengths[:, None]), axis=-1)
    context = jax.nn.dot_product_attention(
        q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths, implementation="cudnn"
    )
    return jnp.where((prefix & (lengths > 0))[:, None, None, None], context, jnp.nan)


class AlbertAttention(nn.Module):
    """Self-attention, output projection, dropout and the post-residual LayerNorm."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool, output_attentions: bool):
        cfg = self.config
        n, d, h = cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size
        qkv = functools.partial(
            _Einsum, cfg, "BTH,HND->BTND", (h, n, d), ("hidden", "heads", "kv"), (n, d), ("heads", "kv")
        )
        if cfg.fused_qkv:  # one matmul: 'BTH,HKND->KBTND' with K = 3 (query, key, value)
            qkv_kernels, biases = zip(*(qkv(name=name)() for name in ("query", "key", "value")))
            fused = jnp.einsum("BTH,HKND->KBTND", x.astype(cfg.jnp_dtype), jnp.stack(qkv_kernels, axis=1))
            q, k, v = fused + jnp.stack(biases)[:, None, None]
        else:
            q, k, v = qkv(name="query")(x), qkv(name="key")(x), qkv(name="value")(x)
        attn_dropout = cfg.attention_probs_dropout_prob > 0 and not deterministic
        weights = None
        if _use_cudnn(cfg) and not (output_attentions or attn_dropout):
            context = _cudnn_attention(q, k, v, mask)  # BTND
        else:
            dropout = (
                nn.Dropout(cfg.attention_probs_dropout_prob, deterministic=False) if attn_dropout else None
            )
            context, weights = _softmax_attention(q, k, v, mask, dropout)  # BTND, BNTS
            weights = weights if output_attentions else None
        dense_out = _Einsum(
            cfg, "BTND,NDH->BTH", (n, d, h), ("heads", "kv", "hidden"), (h,), ("hidden",), name="dense"
        )
        kernel, bias = dense_out()  # the bias goes in with the residual
        out = jnp.einsum(dense_out.equation, context, kernel)
        dropout = nn.Dropout(cfg.hidden_dropout_prob)
        return _residual_layer_norm(cfg, "LayerNorm", out, bias, x, dropout, deterministic), weights


class AlbertFFN(nn.Module):
    """Feed-forward block and its residual LayerNorm. Inside a layer it shares the layer's scope, where HF
    keeps its parameters (`layer_0/ffn`, `layer_0/ffn_output`, `layer_0/full_layer_layer_norm`)."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, a: Array, deterministic: bool) -> Array:
        cfg, h, i = self.config, self.config.hidden_size, self.config.intermediate_size
        # HF's Dense layout: [in, out] kernels. Each bias goes in with what follows (GELU, the residual).
        ffn = _Einsum(cfg, "BTH,HI->BTI", (h, i), ("hidden", "mlp"), (i,), ("mlp",), name="ffn")
        kernel, bias = ffn()
        x = jnp.einsum(ffn.equation, a.astype(cfg.jnp_dtype), kernel)
        if cfg.fused_kernels and cfg.hidden_act in FUSED_GELU:
            from albert_jax import kernels

            gelu = functools.partial(kernels.bias_gelu, approximate=FUSED_GELU[cfg.hidden_act])
            x = _per_shard(gelu, x, bias, axes=("batch", "length", "mlp"))
        else:
            x = ACTIVATIONS[cfg.hidden_act](x + bias)
        ffn_output = _Einsum(
            cfg, "BTI,IH->BTH", (i, h), ("mlp", "hidden"), (h,), ("hidden",), name="ffn_output"
        )
        kernel, bias = ffn_output()
        x = jnp.einsum(ffn_output.equation, x, kernel)
        dropout = nn.Dropout(cfg.hidden_dropout_prob)
        return _residual_layer_norm(cfg, "full_layer_layer_norm", x, bias, a, dropout, deterministic)


BLOCKS = ("attention", "ffn")


class AlbertLayer(nn.Module):
    """Attention block, then the feed-forward block with its own residual LayerNorm.

    The layer owns the parameters of `blocks`. Each other block runs on `shared[block]`, parameters that
    the scan over depth passes in (`sharing="attention"`/`"ffn"`), or is skipped where none are given:
    how `AlbertTransformer` creates the shared blocks' parameters at init.
    """

    config: AlbertConfig
    blocks: tuple[str, ...] = BLOCKS

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool, output_attentions: bool, shared=None):
        cfg = self.config
        a, weights = x, None
        if "attention" in self.blocks:
            a, weights = AlbertAttention(cfg, name="attention")(x, mask, deterministic, output_attentions)
        elif shared is not None:
            a, weights = self._shared(
                "attention", shared, x, mask, deterministic=deterministic, output_attentions=output_attentions
            )
        out = a
        if "ffn" in self.blocks:
            ffn = AlbertFFN(cfg)
            nn.share_scope(self, ffn)  # HF's names: layer_<j>/ffn, not layer_<j>/AlbertFFN_0/ffn
            out = ffn(a, deterministic)
        elif shared is not None:
            out = self._shared("ffn", shared, a, deterministic=deterministic)
        return nn.with_logical_constraint(out, ("batch", "length", "hidden")), weights

    def _shared(self, name: str, shared, *args, deterministic: bool, **kwargs):
        """Block `name` on its parameters in `shared` (a layer's tree), with this step's dropout key."""
        if name == "attention":
            cls, params = AlbertAttention, shared["attention"]
        else:  # the FFN's parameters sit in the layer's scope, beside `attention`
            cls, params = AlbertFFN, {k: v for k, v in shared.items() if k != "attention"}
        rngs = {"dropout": self.make_rng("dropout")} if not deterministic and self.has_rng("dropout") else {}
        return cls(self.config, parent=None).apply(
            {"params": params}, *args, deterministic=deterministic, rngs=rngs, **kwargs
        )


class AlbertLayerGroup(nn.Module):
    """`inner_group_num` distinct layers; the unit that ALBERT shares across depth.

    Written as a scan body: `(carry, mask, shared) -> (carry, per-step outputs)`; `blocks` and `shared`
    as in `AlbertLayer` (`shared` keyed `layer_<j>`). The flags are module attributes so that scan and
    remat see them as static.
    """

    config: AlbertConfig
    deterministic: bool = True
    output_attentions: bool = False
    output_hidden_states: bool = False
    blocks: tuple[str, ...] = BLOCKS

    @nn.compact
    def __call__(self, x: Array, mask: Array, shared=None):
        states, weights = [], []
        for j in range(self.config.inner_group_num):
            x, w = AlbertLayer(self.config, self.blocks, name=f"layer_{j}")(
                x,
                mask,
                self.deterministic,
                self.output_attentions,
                None if shared is None else shared[f"layer_{j}"],
            )
            states.append(x)
            weights.append(w)
        return x, (
            jnp.stack(states) if self.output_hidden_states else None,
            jnp.stack(weights) if self.output_attentions else None,
        )


class AlbertTransformer(nn.Module):
    """E→H mapping, then the layers, by `config.sharing`:

    - "all" (HF's ALBERT): layer i applies group int(i / (L / G)), each group's parameters broadcast
      over its repetitions (`group_<g>/layer_<j>/…`).
    - "none", "attention", "ffn": one scan over the L layers; each layer's own blocks are scanned
      parameters, stacked on a leading "layers" axis (`layers/layer_<j>/…` [L, …]), and the shared
      blocks (`shared/layer_<j>/…`, no layer axis) enter every step as a broadcast input.
    """

    config: AlbertConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: Array, deterministic: bool, output_attentions: bool, output_hidden_states: bool
    ):
        cfg = self.config
        x = dense(cfg, cfg.hidden_size, ("embed", "hidden"), "embedding_hidden_mapping_in")(
            x
        )  # 'BTE,EH->BTH'
        x = nn.with_logical_constraint(x, ("batch", "length", "hidden"))
        group_cls = AlbertLayerGroup
        policy = remat_policy(cfg)
        if policy != "none":
            group_cls = nn.remat(group_cls, policy=_REMAT_POLICIES[policy], prevent_cse=not cfg.scan_layers)
        flags = dict(
            deterministic=deterministic,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        all_states, all_weights = [x], []
        if cfg.sharing == "all":
            repeats = cfg.num_hidden_layers // cfg.num_hidden_groups
            for g in range(cfg.num_hidden_groups):
                if cfg.scan_layers:
                    # variable_broadcast: one set of group parameters, reused at every repetition (ALBERT's
                    # sharing); only dropout gets a fresh key per step.
                    scanned = nn.scan(
                        group_cls,
                        variable_broadcast="params",
                        split_rngs={"params": False, "dropout": True},
                        in_axes=nn.broadcast,
                        length=repeats,
                        unroll=min(cfg.scan_unroll, repeats),
                    )
                    x, outputs = scanned(cfg, **flags, name=f"group_{g}")(x, mask)
                    _extend(all_states, all_weights, outputs)
                else:  # Unrolled: the same module called `repeats` times shares its parameters too.
                    group = group_cls(cfg, **flags, name=f"group_{g}")
                    for _ in range(repeats):
                        x, outputs = group(x, mask)
                        _extend(all_states, all_weights, jax.tree.map(lambda a: a[None], outputs))
        else:
            shared_blocks = SHARED_BLOCKS[cfg.sharing]
            shared = None
            if shared_blocks:
                if self.is_initializing():  # creates shared/layer_<j>/<block>, read back just below
                    AlbertLayerGroup(cfg, blocks=shared_blocks, name="shared")(x, mask)
                shared = self.variables["params"]["shared"]
            # variable_axes: each layer's own parameters, stacked on a leading "layers" axis. scan_layers=False
            # unrolls the loop; the parameters stay the same.
            scanned = nn.scan(
                group_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=cfg.num_hidden_layers,
                unroll=min(cfg.scan_unroll, cfg.num_hidden_layers)
                if cfg.scan_layers
                else cfg.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: LAYERS_SCOPE},
            )
            own = tuple(b for b in BLOCKS if b not in shared_blocks)
            x, outputs = scanned(cfg, **flags, blocks=own, name=LAYERS_SCOPE)(x, mask, shared)
            _extend(all_states, all_weights, outputs)
        return (
            x,
            tuple(all_states) if output_hidden_states else None,
            tuple(all_weights) if output_attentions else None,
        )


def _extend(all_states: list, all_weights: list, outputs) -> None:
    """Appends a scan's per-step (hidden states, attention weights), [steps, inner, ...] or None, one
    entry per layer application, in order."""
    for collected, stacked in zip((all_states, all_weights), outputs):
        if stacked is not None:
            collected.extend(stacked.reshape(-1, *stacked.shape[2:]))


def check_inputs(
    config: AlbertConfig,
    input_ids,
    attention_mask=None,
    token_type_ids=None,
    position_ids=None,
    rank: int = 2,
) -> None:
    """Shape checks always; value checks when the arrays are concrete (not under jit)."""
    shape = np.shape(input_ids)
    if len(shape) != rank:
        layout = "[batch, seq]" if rank == 2 else "[batch, num_choices, seq]"
        raise errors.InputError(f"input_ids must have rank {rank} {layout}, got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(input_ids), jnp.integer):
        raise TypeError(f"input_ids must be integers, got dtype {jnp.result_type(input_ids)}")
    if shape[-1] > config.max_position_embeddings:
        raise errors.InputError(
            f"sequence length {shape[-1]} exceeds max_position_embeddings ({config.max_position_embeddings})"
        )
    limits = {
        "input_ids": (input_ids, config.vocab_size, "vocab_size"),
        "token_type_ids": (token_type_ids, config.type_vocab_size, "type_vocab_size"),
        "position_ids": (position_ids, config.max_position_embeddings, "max_position_embeddings"),
    }
    for name, array in (
        ("attention_mask", attention_mask),
        ("token_type_ids", token_type_ids),
        ("position_ids", position_ids),
    ):
        if array is None:
            continue
        arr_shape = np.shape(array)
        if arr_shape != shape and not (
            name == "position_ids"
            and len(arr_shape) == rank
            and arr_shape[0] == 1
            and arr_shape[1:] == shape[1:]
        ):
            raise errors.InputError(f"{name} has shape {arr_shape}, but input_ids has shape {shape}")
    for name, (array, limit, field) in limits.items():
        if array is None or isinstance(array, jax.core.Tracer) or np.size(array) == 0:
            continue
        array = np.asarray(array)  # on the host: jnp reductions inside a jit trace would be staged out
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi >= limit:
            raise errors.InputError(f"{name} must be in [0, {limit}) ({field}), got values in [{lo}, {hi}]")


class AlbertModel(nn.Module):
    """The ALBERT encoder: `last_hidden_state` [B, T, H] and, with the pooling layer, `pooler_output` [B, H]."""

    config: AlbertConfig
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> AlbertModelOutput:
        cfg = self.config
        check_inputs(cfg, input_ids, attention_mask, token_type_ids, position_ids)
        batch, length = np.shape(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((batch, length), jnp.int32)
        x = AlbertEmbeddings(cfg, name="embeddings")(input_ids, token_type_ids, position_ids, deterministic)
        mask = jnp.asarray(attention_mask).astype(bool)
        x, states, weights = AlbertTransformer(cfg, name="encoder")(
            x, mask, deterministic, output_attentions, output_hidden_states
        )
        pooled = None
        if self.add_pooling_layer:
            pooled = jnp.tanh(dense(cfg, cfg.hidden_size, ("hidden", None), "pooler")(x[:, 0]))  # 'BH,HH->BH'
        return AlbertModelOutput(
            last_hidden_state=x, pooler_output=pooled, hidden_states=states, attentions=weights
        )

    def word_embeddings(self) -> Array:
        """The [V, E] word-embedding table (the MLM decoder is tied to it)."""
        return nn.unbox(self.variables["params"]["embeddings"]["word_embeddings"]["embedding"])


# HF's call signature, `AlbertModel.__call__`'s, which every head takes too (`AlbertWithHead`).
_ENCODER_CALL = inspect.signature(AlbertModel.__call__)


# --- heads ---------------------------------------------------------------------------------------


class AlbertMLMHead(nn.Module):
    """dense H→E, activation, LayerNorm, then the decoder tied to the word embeddings plus a bias."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, x: Array, word_embeddings: Array) -> Array:
        cfg = self.config
        x = dense(cfg, cfg.embedding_size, ("hidden", "embed"), "dense")(x)  # 'B...H,HE->B...E'
        x = layer_norm(cfg, "embed", "LayerNorm")(ACTIVATIONS[cfg.hidden_act](x))
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
            (cfg.vocab_size,),
            cfg.jnp_param_dtype,
        )
        logits = jnp.einsum("...E,VE->...V", x, word_embeddings.astype(cfg.jnp_dtype))
        return (logits + bias).astype(jnp.float32)


def _classify(
    cfg: AlbertConfig, x: Array, num_outputs: int, dropout_rate: float | None, deterministic: bool
) -> Array:
    """Dropout then HF's `classifier` linear layer; called inside a head's compact method."""
    x = nn.Dropout(dropout_rate or 0.0)(x, deterministic=deterministic)
    return dense(cfg, num_outputs, ("hidden", None), "classifier")(x).astype(jnp.float32)


class AlbertSOPHead(nn.Module):
    """Sentence-order prediction on the pooled output (HF's `sop_classifier`), without dropout.

    The original applies `cls/seq_relationship` straight to the pooled output. HF's module adds a
    `classifier_dropout_prob` dropout (the only dropout left in v2 pretraining); in eval mode both agree.
    """

    config: AlbertConfig

    @nn.compact
    def __call__(self, pooled: Array) -> Array:
        cfg = self.config
        return dense(cfg, cfg.num_labels, ("hidden", None), "classifier")(pooled).astype(jnp.float32)


def classifier_dropout(cfg: AlbertConfig) -> float:
    """HF's head dropout rate: `classifier_dropout_prob`, or `hidden_dropout_prob` when that is None."""
    return cfg.classifier_dropout_prob if cfg.classifier_dropout_prob is not None else cfg.hidden_dropout_prob


class AlbertWithHead(nn.Module):
    """HF's call signature and the `albert` encoder, shared by every head; subclasses define `head`.

    Multiple choice (`choices=True`) takes [B, C, T] inputs and encodes them as [B*C, T].
    """

    config: AlbertConfig
    pooling: ClassVar[bool] = True  # HF builds AlbertModel(add_pooling_layer=...) per head
    choices: ClassVar[bool] = False

    @nn.compact
    def __call__(self, *args, **kwargs):
        """`AlbertModel.__call__`'s arguments, by position or name (HF's: input_ids, attention_mask,
        token_type_ids, position_ids, deterministic, output_hidden_states, output_attentions), then the
        head's own keyword arguments (`head`'s, e.g. `masked_lm_positions`)."""
        head_inputs = {k: kwargs.pop(k) for k in list(kwargs) if k not in _ENCODER_CALL.parameters}
        call = _ENCODER_CALL.bind(self, *args, **kwargs)  # a TypeError for a wrong argument, as a def's
        call.apply_defaults()
        encoder_args = {k: v for k, v in call.arguments.items() if k != "self"}
        inputs = [
            encoder_args.pop(k) for k in ("input_ids", "attention_mask", "token_type_ids", "position_ids")
        ]
        shape = np.shape(inputs[0])
        if self.choices:
            check_inputs(self.config, *inputs, rank=3)
            inputs = [
                None if a is None else jnp.reshape(a, (-1, np.shape(a)[-1])) for a in inputs
            ]  # 'BCT->(BC)T'
        albert = AlbertModel(self.config, add_pooling_layer=self.pooling, name="albert")
        out = albert(*inputs, **encoder_args)
        fields = self.head(albert, out, encoder_args["deterministic"], shape, **head_inputs)
        return self.output_cls(**fields, hidden_states=out.hidden_states, attentions=out.attentions)


class AlbertForPreTraining(AlbertWithHead):
    """MLM + sentence-order prediction. With `masked_lm_positions` [B, P] the vocabulary logits are
    computed at those positions only ([B, P, V], as the original ALBERT does), else at every position."""

    output_cls: ClassVar[type] = AlbertForPreTrainingOutput

    def head(self, albert, out, deterministic, shape, masked_lm_positions=None):
        x = out.last_hidden_state
        if masked_lm_positions is not None:
            x = jnp.take_along_axis(x, jnp.asarray(masked_lm_positions)[..., None], axis=1)  # 'BTH,BP->BPH'
        return {
            "prediction_logits": AlbertMLMHead(self.config, name="predictions")(x, albert.word_embeddings()),
            "sop_logits": AlbertSOPHead(self.config, name="sop_classifier")(out.pooler_output),
        }


class AlbertForMaskedLM(AlbertWithHead):
    """Vocabulary logits at every position, `logits` [B, T, V]."""

    pooling: ClassVar[bool] = False
    output_cls: ClassVar[type] = MaskedLMOutput

    def head(self, albert, out, deterministic, shape):
        mlm = AlbertMLMHead(self.config, name="predictions")
        return {"logits": mlm(out.last_hidden_state, albert.word_embeddings())}


class AlbertForSequenceClassification(AlbertWithHead):
    """Pooled [CLS] → dropout → classifier; `logits` [B, num_labels] (num_labels=1 is regression)."""

    output_cls: ClassVar[type] = ClassifierOutput

    def head(self, albert, out, deterministic, shape):
        cfg = self.config
        return {
            "logits": _classify(
                cfg, out.pooler_output, cfg.num_labels, cfg.classifier_dropout_prob, deterministic
            )
        }


class AlbertForTokenClassification(AlbertWithHead):
    """Every position → dropout → classifier; `logits` [B, T, num_labels]."""

    pooling: ClassVar[bool] = False
    output_cls: ClassVar[type] = ClassifierOutput

    def head(self, albert, out, deterministic, shape):
        cfg = self.config
        return {
            "logits": _classify(
                cfg, out.last_hidden_state, cfg.num_labels, classifier_dropout(cfg), deterministic
            )
        }


class AlbertForQuestionAnswering(AlbertWithHead):
    """Span extraction: `start_logits`, `end_logits` [B, T] from one linear layer (HF's `qa_outputs`)."""

    pooling: ClassVar[bool] = False
    output_cls: ClassVar[type] = QuestionAnsweringOutput

    def head(self, albert, out, deterministic, shape):
        if self.config.num_labels != 2:
            raise errors.InputError(
                f"AlbertForQuestionAnswering needs num_labels=2 (start, end), got {self.config.num_labels}"
            )
        logits = dense(self.config, 2, ("hidden", None), "qa_outputs")(out.last_hidden_state).astype(
            jnp.float32
        )
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}  # 'BT2->BT, BT'


class AlbertForMultipleChoice(AlbertWithHead):
    """Inputs [B, C, T]; each choice is encoded and pooled, then scored; `logits` [B, C]."""

    choices: ClassVar[bool] = True
    output_cls: ClassVar[type] = ClassifierOutput

    def head(self, albert, out, deterministic, shape):
        logits = _classify(
            self.config, out.pooler_output, 1, self.config.classifier_dropout_prob, deterministic
        )
        return {"logits": logits.reshape(shape[:2])}  # '(BC)1->BC'


HEADS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        AlbertModel,
        AlbertForPreTraining,
        AlbertForMaskedLM,
        AlbertForSequenceClassification,
        AlbertForMultipleChoice,
        AlbertForTokenClassification,
        AlbertForQuestionAnswering,
    )
}


def init_params(module: nn.Module, rng: Array, seq_len: int = 8) -> Any:
    """Initialise parameters (boxed with their logical axis names) from a dummy batch.

    Jitted: an eager `nn.scan` would trace and compile its body op by op, which is far slower.
    """
    rank = 3 if isinstance(module, AlbertForMultipleChoice) else 2
    ids = jnp.zeros((1,) * (rank - 1) + (seq_len,), jnp.int32)
    return jax.jit(lambda r: module.init({"params": r}, ids)["params"])(rng)
