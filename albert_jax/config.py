"""AlbertConfig: the model's hyperparameters, with HF's field names, presets and config.json I/O."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from typing import Any

import jax.numpy as jnp

from albert_jax import errors

# Activations HF's ACT2FN knows for ALBERT checkpoints (see modeling.ACTIVATIONS).
SUPPORTED_ACTIVATIONS = (
    "gelu",
    "gelu_new",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "relu",
    "silu",
    "swish",
    "tanh",
)
# "auto": "dots" when the layers are scanned, else "none". A scan saves every intermediate its backward
# reads, stacked per layer (26 stacks at ALBERT-large, 961 MiB at batch 2, seq 128), where the unrolled
# graph lets XLA recompute the elementwise ones inside the backward's fusions; "dots" saves only the
# matmul outputs (9 stacks, 312 MiB) and recomputes the rest, as the unrolled graph does.
REMAT_POLICIES = ("auto", "none", "full", "dots", "dots_with_no_batch_dims")
# auto: cuDNN's fused attention on a GPU in bfloat16/float16, XLA's einsum attention otherwise.
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
# Cross-layer sharing (Lan et al., 2019, Table 4) -> the blocks of a layer that every depth shares. A layer's
# blocks: "attention" (query/key/value/dense and its LayerNorm) and "ffn" (ffn, ffn_output and
# full_layer_layer_norm, the LayerNorm after the FFN's residual). "all" is HF's ALBERT (whole layer groups).
SHARED_BLOCKS: dict[str, tuple[str, ...]] = {
    "all": ("attention", "ffn"),
    "attention": ("attention",),
    "ffn": ("ffn",),
    "none": (),
}
# The encoder scope of the per-layer parameters of sharing none/attention/ffn, stacked on a leading [L]
# axis (`layers/layer_<j>/…`); also the axis's logical name. The optimizer's per-layer trust ratio and
# the HF mapping find stacked leaves by it.
LAYERS_SCOPE = "layers"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Upper bounds that catch corrupt or hostile config.json files before init allocates for them; each is
# far above any published model (ALBERT xxlarge: hidden 4096, 223M parameters).
_MAX_FIELD = {
    "vocab_size": 1 << 22,
    "embedding_size": 1 << 16,
    "hidden_size": 1 << 16,
    "num_hidden_layers": 1 << 10,
    "num_hidden_groups": 1 << 10,
    "inner_group_num": 1 << 10,
    "num_attention_heads": 1 << 12,
    "intermediate_size": 1 << 18,
    "max_position_embeddings": 1 << 20,
    "type_vocab_size": 1 << 16,
    "num_labels": 1 << 20,
}
_MAX_PARAMETERS = 1 << 34  # ~17e9, 64 GiB in float32
_MAX_JSON_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class AlbertConfig:
    """ALBERT hyperparameters. Field names and defaults follow transformers' AlbertConfig (xxlarge)."""

    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    inner_group_num: int = 1
    # Which blocks the layers share across depth (SHARED_BLOCKS); not an HF field: written to config.json
    # only when not "all", and exported to HF only as "all" or "none" (`hf_equivalent`).
    sharing: str = "all"
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    classifier_dropout_prob: float | None = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2
    # The classes' names, written as config.json's id2label/label2id (HF's `LABEL_<i>` when empty).
    label_names: tuple[str, ...] = ()
    # JAX-side settings (not part of HF's config.json).
    dtype: str = "float32"  # activations / compute
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "auto"
    attention_impl: str = "auto"
    # Layers per iteration of the scan over depth (1: a loop of L steps; L: unrolled, as scan_layers=False).
    scan_unroll: int = 1
    # Q, K and V as one [H, 3, N, D] matmul at apply time (the parameters stay HF's query/key/value).
    fused_qkv: bool = False
    # The bias + residual + LayerNorm and bias + GELU passes as Pallas kernels (albert_jax.kernels), one
    # pass over the activations each, forward and backward; on a CPU they run in Pallas's interpreter.
    fused_kernels: bool = False

    def __post_init__(self):
        problems = []

        def brief(value: Any) -> str:  # values may come from a hostile config.json
            if isinstance(value, int) and value.bit_length() > 64:
                return f"a {value.bit_length()}-bit integer"
            text = repr(value) if isinstance(value, (int, float, str, type(None))) else type(value).__name__
            return text if len(text) <= 40 else text[:39] + "…"

        for name, limit in _MAX_FIELD.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {brief(value)}")
            elif value > limit:
                problems.append(f"{name} is {brief(value)}, above the sanity limit {limit}")
        if not isinstance(self.label_names, tuple) or not all(isinstance(n, str) for n in self.label_names):
            problems.append(f"label_names must be a tuple of str, got {brief(self.label_names)}")
        elif self.label_names and len(self.label_names) != self.num_labels:
            problems.append(f"{len(self.label_names)} label_names for num_labels={brief(self.num_labels)}")
        if not problems:
            if self.hidden_size % self.num_attention_heads:
                problems.append(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                    f"({self.num_attention_heads})"
                )
            if self.num_hidden_layers % self.num_hidden_groups:
                problems.append(
                    f"num_hidden_layers ({self.num_hidden_layers}) is not divisible by num_hidden_groups "
                    f"({self.num_hidden_groups})"
                )
            if not isinstance(self.pad_token_id, int) or isinstance(self.pad_token_id, bool):
                problems.append(f"pad_token_id must be an integer, got {brief(self.pad_token_id)}")
            elif not 0 <= self.pad_token_id < self.vocab_size:
                problems.append(
                    f"pad_token_id ({self.pad_token_id}) is outside the vocabulary (size {self.vocab_size})"
                )
            # The weight matrices, to within a few vectors: embeddings, the shared groups, pooler, heads.
            h, e, i = self.hidden_size, self.embedding_size, self.intermediate_size
            shared = SHARED_BLOCKS.get(self.sharing, ()) if isinstance(self.sharing, str) else ()
            copies = {  # how many copies of each block the parameters hold
                block: self.num_hidden_groups if block in shared else self.num_hidden_layers
                for block in ("attention", "ffn")
            }
            layers = self.inner_group_num * (copies["attention"] * 4 * h * h + copies["ffn"] * 2 * h * i)
            tables = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * e
            count = tables + e * h + layers + h * (h + e + self.num_labels)
            if count > _MAX_PARAMETERS:
                problems.append(
                    f"the model would have about {count:.2e} parameters, above the sanity limit "
                    f"{_MAX_PARAMETERS:.2e}"
                )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"):
            value = getattr(self, name)
            if value is None and name == "classifier_dropout_prob":
                continue
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                problems.append(f"{name} must be a number in [0, 1), got {brief(value)}")
        for name in ("initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value < math.inf:
                problems.append(f"{name} must be a non-negative finite number, got {brief(value)}")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in SUPPORTED_ACTIVATIONS:
            problems.append(
                f"hidden_act {brief(self.hidden_act)} is not one of {', '.join(SUPPORTED_ACTIVATIONS)}"
            )
        for name in ("dtype", "param_dtype"):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in _DTYPES:
                problems.append(f"{name} {brief(getattr(self, name))} is not one of {', '.join(_DTYPES)}")
        if not isinstance(self.remat_policy, str) or self.remat_policy not in REMAT_POLICIES:
            problems.append(
                f"remat_policy {brief(self.remat_policy)} is not one of {', '.join(REMAT_POLICIES)}"
            )
        if not isinstance(self.sharing, str) or self.sharing not in SHARED_BLOCKS:
            problems.append(f"sharing {brief(self.sharing)} is not one of {', '.join(SHARED_BLOCKS)}")
        elif self.sharing != "all" and self.num_hidden_groups != 1:
            problems.append(
                f"sharing={self.sharing!r} needs num_hidden_groups=1, got {brief(self.num_hidden_groups)} "
                "(layer groups split only sharing='all', HF's layout)"
            )
        if (
            not isinstance(self.scan_unroll, int)
            or isinstance(self.scan_unroll, bool)
            or self.scan_unroll < 1
        ):
            problems.append(f"scan_unroll must be a positive integer, got {brief(self.scan_unroll)}")
        for name in ("fused_qkv", "fused_kernels"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {brief(getattr(self, name))}")
        if not isinstance(self.attention_impl, str) or self.attention_impl not in ATTENTION_IMPLS:
            problems.append(
                f"attention_impl {brief(self.attention_impl)} is not one of {', '.join(ATTENTION_IMPLS)}"
            )
        if problems:
            raise errors.ConfigError("invalid AlbertConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def jnp_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self):
        return _DTYPES[self.param_dtype]

    def replace(self, **changes: Any) -> "AlbertConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise errors.InputError(f"unknown AlbertConfig field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    # --- presets --------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, *, for_pretraining: bool = False, **overrides: Any) -> "AlbertConfig":
        """`base`, `large`, `xlarge`, `xxlarge`, optionally suffixed `-v1`/`-v2` (default v2).

        By default a preset equals the published config.json of its checkpoint (`albert-base-v2`, …),
        field by field, so that it describes those weights as HF loads them. `for_pretraining=True`
        gives the model as google-research/albert trains it, for pretraining from scratch: the same
        except for the `-v1` activation, the original's tanh GELU (see `V1_PUBLISHED_ACT`).
        """
        size, _, version = name.partition("-")
        version = version or "v2"
        if size not in PRESETS or version not in ("v1", "v2"):
            raise errors.InputError(
                f"unknown ALBERT preset {name!r}; choose one of {', '.join(f'{s}[-v1|-v2]' for s in PRESETS)}"
            )
        values = dict(PRESETS[size])
        if version == "v1":
            dropout = V1_DROPOUT[size]
            values.update(
                hidden_act=ORIGINAL_GELU if for_pretraining else V1_PUBLISHED_ACT,
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
            )
        return cls(**{**values, **overrides})

    # --- HF config.json ------------------------------------------------------------------------

    def hf_equivalent(self) -> "AlbertConfig":
        """The same model in HF's terms, where whole layer groups are the only sharing: `sharing="none"` is
        num_hidden_groups=num_hidden_layers. The partial variants have no HF layout: a ConfigError."""
        if self.sharing == "all":
            return self
        if self.sharing == "none":
            return self.replace(sharing="all", num_hidden_groups=self.num_hidden_layers)
        shared, own = ("attention", "FFN") if self.sharing == "attention" else ("FFN", "attention")
        raise errors.ConfigError(
            f"sharing={self.sharing!r} cannot be exported to Hugging Face: HF's ALBERT shares whole layers "
            f"or none, it has no layout for a shared {shared} with a per-layer {own}; use the run's "
            "checkpoint (albert_jax.from_pretrained(WORKDIR)) instead"
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """config.json's fields; `sharing` appears only when not "all" (transformers ignores it, so such a
        dict describes the model to albert_jax only: `hf.save_pretrained` writes `hf_equivalent()`'s)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in JAX_ONLY_FIELDS}
        if self.sharing == "all":
            del d["sharing"]
        d.update(
            model_type="albert",
            architectures=["AlbertForPreTraining"],
            bos_token_id=2,
            eos_token_id=3,
            position_embedding_type="absolute",
        )
        names = self.label_names or tuple(f"LABEL_{i}" for i in range(self.num_labels))
        d["id2label"] = {str(i): name for i, name in enumerate(names)}
        d["label2id"] = {name: i for i, name in enumerate(names)}
        del d["num_labels"], d["label_names"]  # HF derives the count from id2label
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> "AlbertConfig":
        if not isinstance(d, dict):
            raise errors.InputError(f"an HF config must be a JSON object, got a {type(d).__name__}")
        model_type = d.get("model_type", "albert")
        if model_type != "albert":
            shown = (
                repr(model_type) if isinstance(model_type, str) and len(model_type) <= 40 else "non-ALBERT"
            )
            raise errors.InputError(f"config.json describes a {shown} model, not an ALBERT model")
        names = {f.name for f in dataclasses.fields(cls)} - set(JAX_ONLY_FIELDS)
        values = {k: v for k, v in d.items() if k in names}
        values.pop("label_names", None)
        if "id2label" in d:
            id2label = d["id2label"]
            if not isinstance(id2label, dict):
                raise errors.InputError(f"id2label must be a JSON object, got a {type(id2label).__name__}")
            if "num_labels" not in d:
                values["num_labels"] = len(id2label)
            names = tuple(id2label.get(str(i)) for i in range(len(id2label)))
            if all(isinstance(n, str) for n in names) and names != tuple(
                f"LABEL_{i}" for i in range(len(names))
            ):
                values["label_names"] = names
        if overrides.get("num_labels", values.get("num_labels")) != len(values.get("label_names", ())):
            values.pop("label_names", None)  # a new head: its classes are not the checkpoint's
        return cls(**{**values, **overrides})

    def save_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_hf_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides: Any) -> "AlbertConfig":
        """Read an HF config.json; anything wrong with it is a one-line ValueError that names the file."""
        try:
            size = os.path.getsize(path)
            if size > _MAX_JSON_BYTES:
                raise errors.InputError(f"{path} is {size} bytes, too large for a config.json")
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise errors.MissingError(f"no config.json at {path}") from None
        try:
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise errors.InputError(f"{path} is not UTF-8 text") from None
        except RecursionError:
            raise errors.InputError(f"{path} nests too deeply to be a config.json") from None
        except json.JSONDecodeError as e:
            raise errors.InputError(f"{path} is not valid JSON: {e}") from None
        except ValueError as e:  # e.g. an integer with more digits than int() accepts
            raise errors.InputError(
                f"{path} is not a usable config.json: {str(e).splitlines()[0][:200]}"
            ) from None
        if not isinstance(d, dict):
            raise errors.InputError(f"{path} must hold a JSON object, not a {type(d).__name__}")
        try:
            return cls.from_hf_dict(d, **overrides)
        except ValueError as e:
            with_overrides = f" (with overrides {', '.join(sorted(overrides))})" if overrides else ""
            raise errors.InputError(f"{path}{with_overrides}: {e}") from None


# Settings of how the model runs, not what it computes: not in HF's config.json, and a run keeps its own
# when it loads a checkpoint.
JAX_ONLY_FIELDS = (
    "dtype",
    "param_dtype",
    "scan_layers",
    "remat_policy",
    "attention_impl",
    "scan_unroll",
    "fused_qkv",
    "fused_kernels",
)

# Published shapes (Lan et al., 2019, Table 1; HF albert-*-v1/-v2 config.json). The v2 checkpoints use the
# class defaults otherwise: gelu_new (the tanh approximation, as the original's `gelu`) and no dropout.
PRESETS: dict[str, dict[str, Any]] = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "xlarge": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192),
    "xxlarge": dict(hidden_size=4096, num_hidden_layers=12, num_attention_heads=64, intermediate_size=16384),
}
# v1 hidden and attention dropout. xxlarge-v1 was trained without dropout: its published config has 0, as do
# the defaults of the original AlbertConfig (which describe xxlarge).
V1_DROPOUT: dict[str, float] = {"base": 0.1, "large": 0.1, "xlarge": 0.1, "xxlarge": 0.0}
# The original's `gelu` (google-research/albert modeling.py) is the tanh approximation, HF's "gelu_new".
ORIGINAL_GELU = "gelu_new"
# The published v1 config.json files say "gelu", which HF maps to the exact erf GELU: a mislabel, since the
# v1 checkpoints were trained with the original's tanh GELU. The `-v1` presets keep the published label (a
# preset equals its checkpoint's config.json, and loaded checkpoints follow their config.json, for HF parity);
# `from_preset(..., for_pretraining=True)` uses ORIGINAL_GELU.
V1_PUBLISHED_ACT = "gelu"
