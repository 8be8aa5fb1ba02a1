"""Hugging Face interop: load and save transformers-format ALBERT checkpoints.

The mapping between HF's state-dict keys and our parameter paths is the table `TABLE`: one row per
tensor, with a transform (transpose for `nn.Linear`, transpose + reshape for the per-head attention
kernels, identity for embeddings and LayerNorm). A parameter stacked over the layers (`sharing` other
than "all") is one HF tensor per layer, in layer group i as HF's num_hidden_groups=num_hidden_layers
has it; a block shared by every layer is group 0's. `params_from_hf` / `params_to_hf` apply it;
`from_pretrained` / `save_pretrained` add the directories: a local one or a Hub id (`hub.local_dir`),
whose weights `hf_files` reads (safetensors, sharded indexes, `pytorch_model.bin` without torch).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from etils import epath
from flax import traverse_util

from albert_jax import errors, hub
from albert_jax.config import LAYERS_SCOPE, SHARED_BLOCKS, AlbertConfig
from albert_jax.hf_files import load_state_dict, to_numpy
from albert_jax.modeling import HEADS, AlbertModel, init_params

logger = logging.getLogger(__name__)

Params = dict[str, Any]


# --- the table -----------------------------------------------------------------------------------


class Transform(NamedTuple):
    """How one tensor changes between HF's layout and ours. `hf_shape` maps our shape to HF's."""

    to_hf: Callable[[np.ndarray], np.ndarray]
    to_ours: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
    hf_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


IDENTITY = Transform(lambda x: x, lambda x, s: x, lambda s: s)
# nn.Linear stores [out, in]; Dense stores [in, out].
LINEAR = Transform(lambda x: x.T, lambda x, s: x.T, lambda s: s[::-1])
# query/key/value: HF [N*D, H] ↔ ours [H, N, D]; their biases [N*D] ↔ [N, D].
HEADS_IN = Transform(
    lambda x: x.reshape(x.shape[0], -1).T, lambda x, s: x.T.reshape(s), lambda s: (s[1] * s[2], s[0])
)
HEADS_BIAS = Transform(lambda x: x.reshape(-1), lambda x, s: x.reshape(s), lambda s: (s[0] * s[1],))
# attention output dense: HF [H, N*D] ↔ ours [N, D, H].
HEADS_OUT = Transform(
    lambda x: x.reshape(-1, x.shape[-1]).T, lambda x, s: x.T.reshape(s), lambda s: (s[2], s[0] * s[1])
)


def _linear(hf: str, ours: str, kernel: Transform = LINEAR, bias: Transform = IDENTITY):
    return (f"{hf}.weight", f"{ours}/kernel", kernel), (f"{hf}.bias", f"{ours}/bias", bias)


def _embedding(name: str):
    return (f"albert.embeddings.{name}.weight", f"albert/embeddings/{name}/embedding", IDENTITY)


def _norm(hf: str, ours: str):
    return (f"{hf}.weight", f"{ours}/scale", IDENTITY), (f"{hf}.bias", f"{ours}/bias", IDENTITY)


_HF_LAYER = "albert.encoder.albert_layer_groups.{g}.albert_layers.{j}"
_OUR_LAYER = "albert/encoder/{group}/layer_{j}"

# (HF key, our path, transform), written for a head model; AlbertModel drops the `albert` prefix on
# both sides. `{g}` is the layer group, `{j}` the layer inside it; `{group}` our module holding it
# (`modeling.AlbertTransformer`: group_<g>, or `layers` and `shared`).
TABLE: tuple[tuple[str, str, Transform], ...] = (
    _embedding("word_embeddings"),
    _embedding("position_embeddings"),
    _embedding("token_type_embeddings"),
    *_norm("albert.embeddings.LayerNorm", "albert/embeddings/LayerNorm"),
    *_linear("albert.encoder.embedding_hidden_mapping_in", "albert/encoder/embedding_hidden_mapping_in"),
    *_linear(f"{_HF_LAYER}.attention.query", f"{_OUR_LAYER}/attention/query", HEADS_IN, HEADS_BIAS),
    *_linear(f"{_HF_LAYER}.attention.key", f"{_OUR_LAYER}/attention/key", HEADS_IN, HEADS_BIAS),
    *_linear(f"{_HF_LAYER}.attention.value", f"{_OUR_LAYER}/attention/value", HEADS_IN, HEADS_BIAS),
    *_linear(f"{_HF_LAYER}.attention.dense", f"{_OUR_LAYER}/attention/dense", HEADS_OUT),
    *_norm(f"{_HF_LAYER}.attention.LayerNorm", f"{_OUR_LAYER}/attention/LayerNorm"),
    *_linear(f"{_HF_LAYER}.ffn", f"{_OUR_LAYER}/ffn"),
    *_linear(f"{_HF_LAYER}.ffn_output", f"{_OUR_LAYER}/ffn_output"),
    *_norm(f"{_HF_LAYER}.full_layer_layer_norm", f"{_OUR_LAYER}/full_layer_layer_norm"),
    *_linear("albert.pooler", "albert/pooler"),
    *_linear("predictions.dense", "predictions/dense"),
    *_norm("predictions.LayerNorm", "predictions/LayerNorm"),
    ("predictions.bias", "predictions/bias", IDENTITY),
    *_linear("sop_classifier.classifier", "sop_classifier/classifier"),
    *_linear("classifier", "classifier"),
    *_linear("qa_outputs", "qa_outputs"),
)

# Checkpoint keys that carry nothing of their own: tied copies and non-persistent buffers.
_TIED_OR_BUFFERS = frozenset(
    {
        "predictions.decoder.weight",  # tied to the word embeddings
        "predictions.decoder.bias",  # tied to predictions.bias
        "albert.embeddings.position_ids",
        "albert.embeddings.token_type_ids",
    }
)
# Parts of the base model that a head checkpoint may legitimately lack (AlbertForMaskedLM has no pooler).
_OPTIONAL_BASE = ("albert/pooler/",)


class Row(NamedTuple):
    """Where one of our parameters lives in HF's state dict: one key, or one per layer (`stacked`)."""

    hf_keys: tuple[str, ...]
    transform: Transform
    stacked: bool = False


def _expand(config: AlbertConfig) -> dict[str, Row]:
    """Our path (head-model form) -> its Row, for every group (or layer) and inner layer."""
    rows = {}
    shared = SHARED_BLOCKS[config.sharing]
    for hf, ours, transform in TABLE:
        if "{g}" not in hf:
            rows[ours] = Row((hf,), transform)
            continue
        block = "attention" if "/attention/" in ours else "ffn"
        for j in range(config.inner_group_num):
            if config.sharing == "all":
                for g in range(config.num_hidden_groups):
                    rows[ours.format(group=f"group_{g}", j=j)] = Row((hf.format(g=g, j=j),), transform)
            elif block in shared:
                rows[ours.format(group="shared", j=j)] = Row((hf.format(g=0, j=j),), transform)
            else:
                keys = tuple(hf.format(g=i, j=j) for i in range(config.num_hidden_layers))
                rows[ours.format(group=LAYERS_SCOPE, j=j)] = Row(keys, transform, stacked=True)
    return rows


def _head_cls(cls: type[nn.Module] | str) -> type[nn.Module]:
    if isinstance(cls, str):
        if cls not in HEADS:
            raise errors.ConfigError(f"unknown ALBERT class {cls!r}; choose one of {', '.join(HEADS)}")
        return HEADS[cls]
    if cls not in HEADS.values():
        raise errors.ConfigError(f"{cls!r} is not an ALBERT model class; choose one of {', '.join(HEADS)}")
    return cls


def _canonical(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Keys in head-model form: bare AlbertModel keys get `albert.`; legacy gamma/beta are renamed."""
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
        if key.split(".", 1)[0] in ("embeddings", "encoder", "pooler"):
            key = "albert." + key
        out[key] = value
    if "predictions.bias" not in out and "predictions.decoder.bias" in out:
        out["predictions.bias"] = out["predictions.decoder.bias"]
    return out


def _abstract_params(module: nn.Module) -> dict[str, jax.ShapeDtypeStruct]:
    # seq_len=1: shapes do not depend on it, and it never exceeds max_position_embeddings.
    shapes = jax.eval_shape(lambda: nn.unbox(init_params(module, jax.random.key(0), seq_len=1)))
    return traverse_util.flatten_dict(shapes, sep="/")


# --- pure conversion -----------------------------------------------------------------------------


def params_from_hf(
    config: AlbertConfig,
    cls: type[nn.Module] | str,
    state_dict: Mapping[str, Any],
    *,
    rng_seed: int = 0,
) -> Params:
    """HF state dict (numpy or torch tensors) -> unboxed params for `cls(config)`, in config.param_dtype.

    Head parameters (and the pooler) absent from the checkpoint are initialised fresh from `rng_seed`
    and logged; checkpoint tensors the model does not use are logged too. A missing encoder tensor or
    a shape mismatch raises ValueError.
    """
    module_cls = _head_cls(cls)
    module = module_cls(config)
    prefix = "albert/" if module_cls is AlbertModel else ""
    table = _expand(config)
    state = _canonical(state_dict)
    params, missing, used, mismatched = {}, {}, set(), []
    for path, abstract in _abstract_params(module).items():
        row = table[prefix + path]
        absent = [k for k in row.hf_keys if k not in state]
        if absent:
            missing[path] = absent
            continue
        shape = abstract.shape[1:] if row.stacked else abstract.shape  # one layer's
        slices = []
        for hf_key in row.hf_keys:
            x = to_numpy(state[hf_key])
            expected = row.transform.hf_shape(shape)
            if x.shape != expected:
                mismatched.append(f"checkpoint tensor {hf_key!r} has shape {x.shape}, expected {expected}")
                break  # one message per parameter, not one per layer
            slices.append(row.transform.to_ours(x, shape))
            used.add(hf_key)
        if len(slices) == len(row.hf_keys):
            value = np.stack(slices) if row.stacked else slices[0]
            params[path] = jnp.asarray(value, dtype=abstract.dtype)
    if mismatched:
        raise errors.ConfigError(
            f"shape mismatch loading {module_cls.__name__} (check config.json and the overrides): "
            + "; ".join(mismatched)
        )
    required = [
        hf
        for path, keys in missing.items()
        if (prefix + path).startswith("albert/") and not (prefix + path).startswith(_OPTIONAL_BASE)
        for hf in keys
    ]
    if required:
        shown = ", ".join(sorted(required)[:6]) + (", …" if len(required) > 6 else "")
        raise errors.ConfigError(
            f"the checkpoint lacks {len(required)} encoder tensor(s) that {module_cls.__name__} needs: "
            + shown
        )
    if missing:
        paths = sorted(missing)

        @jax.jit
        def fresh(rng):  # jit lets XLA drop the initialisers of everything we do not keep
            flat = traverse_util.flatten_dict(nn.unbox(init_params(module, rng, seq_len=1)), sep="/")
            return {p: flat[p] for p in paths}

        params.update(fresh(jax.random.key(rng_seed)))
        logger.warning(
            "%s: not in the checkpoint, initialised fresh (train before use): %s",
            module_cls.__name__,
            ", ".join(paths),
        )
    unused = sorted(set(state) - used - _TIED_OR_BUFFERS)
    if unused:
        logger.info("%s: checkpoint tensors not used: %s", module_cls.__name__, ", ".join(unused))
    return traverse_util.unflatten_dict(params, sep="/")


def params_to_hf(module_or_config: nn.Module | AlbertConfig, params: Params) -> dict[str, np.ndarray]:
    """Params (boxed or not) -> HF state dict with HF's exact key set (tied decoder weights omitted), for
    `config.hf_equivalent()`. Under sharing="attention"/"ffn" the keys are HF's, but only group 0 holds
    the shared block: albert_jax's own transit format (`pretrained.load`), which HF cannot load."""
    config = module_or_config if isinstance(module_or_config, AlbertConfig) else module_or_config.config
    flat = traverse_util.flatten_dict(nn.unbox(params), sep="/")
    head_model = any(path.startswith("albert/") for path in flat)
    table = _expand(config)
    out = {}
    for path, value in flat.items():
        canonical = path if head_model else "albert/" + path
        if canonical not in table:
            raise ValueError(f"parameter {path} has no Hugging Face name (does the config match the params?)")
        row = table[canonical]
        value = to_numpy(value)
        for i, hf_key in enumerate(row.hf_keys):
            if not head_model:
                hf_key = hf_key.removeprefix("albert.")
            out[hf_key] = np.ascontiguousarray(row.transform.to_hf(value[i] if row.stacked else value))
    return out


# --- directories ---------------------------------------------------------------------------------


def from_pretrained(
    path: str | os.PathLike,
    cls: type[nn.Module] | str = "AlbertModel",
    *,
    rng_seed: int = 0,
    dtype: Any = None,
    **config_overrides: Any,
) -> tuple[nn.Module, Params]:
    """Load an HF ALBERT directory (or Hub id) into `cls`; returns `(module, unboxed params)`.

    `cls` is a class or its name (`modeling.HEADS`). `dtype` (e.g. "bfloat16") sets both compute and
    parameter dtype, as HF's `dtype=` does; a `param_dtype=` override wins (mixed precision). Other
    overrides replace config.json fields (e.g. `num_labels=3`).
    """
    module_cls = _head_cls(cls)
    directory = hub.local_dir(path)
    if dtype is not None:
        name = jnp.dtype(dtype).name
        config_overrides = {"dtype": name, "param_dtype": name, **config_overrides}
    config = AlbertConfig.from_json(directory / "config.json", **config_overrides)
    state = load_state_dict(directory)
    module = module_cls(config)
    return module, params_from_hf(config, module_cls, state, rng_seed=rng_seed)


def save_pretrained(path: str | os.PathLike, module: nn.Module, params: Params) -> None:
    """Write config.json and model.safetensors (local or gs://), which
    `transformers.<Class>.from_pretrained` loads cleanly."""
    config = module.config.hf_equivalent()  # a ConfigError for a layout HF does not have
    directory = epath.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    config_dict = config.to_hf_dict()
    config_dict["architectures"] = [type(module).__name__]
    config_dict["dtype"] = module.config.param_dtype
    tensors = safetensors.numpy.save(params_to_hf(module, params), metadata={"format": "pt"})
    (directory / "model.safetensors").write_bytes(tensors)
    (directory / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))
