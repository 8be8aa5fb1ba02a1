"""AlbertConfig: the model's hyperparameters, with HF's field names, presets and config.json I/O."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

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
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class AlbertConfig:
    """ALBERT hyperparameters. Field names and defaults follow transformers' AlbertConfig (xxlarge)."""

    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    inner_group_num: int = 1
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
    # JAX-side settings (not part of HF's config.json).
    dtype: str = "float32"  # activations / compute
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        errors = []
        for name in (
            "vocab_size",
            "embedding_size",
            "hidden_size",
            "num_hidden_layers",
            "num_hidden_groups",
            "inner_group_num",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "num_labels",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(f"{name} must be a positive integer, got {value!r}")
        if not errors:
            if self.hidden_size % self.num_attention_heads:
                errors.append(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                    f"({self.num_attention_heads})"
                )
            if self.num_hidden_layers % self.num_hidden_groups:
                errors.append(
                    f"num_hidden_layers ({self.num_hidden_layers}) is not divisible by num_hidden_groups "
                    f"({self.num_hidden_groups})"
                )
            if not 0 <= self.pad_token_id < self.vocab_size:
                errors.append(
                    f"pad_token_id ({self.pad_token_id}) is outside the vocabulary (size {self.vocab_size})"
                )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                errors.append(f"{name} must be in [0, 1), got {value!r}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            errors.append(f"hidden_act {self.hidden_act!r} is not one of {', '.join(SUPPORTED_ACTIVATIONS)}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                errors.append(f"{name} {getattr(self, name)!r} is not one of {', '.join(_DTYPES)}")
        if self.remat_policy not in REMAT_POLICIES:
            errors.append(f"remat_policy {self.remat_policy!r} is not one of {', '.join(REMAT_POLICIES)}")
        if errors:
            raise ValueError("invalid AlbertConfig: " + "; ".join(errors))

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
            raise ValueError(f"unknown AlbertConfig field(s): {', '.join(sorted(unknown))}")
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
            raise ValueError(
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

    def to_hf_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _JAX_ONLY}
        d.update(
            model_type="albert",
            architectures=["AlbertForPreTraining"],
            bos_token_id=2,
            eos_token_id=3,
            position_embedding_type="absolute",
        )
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        del d["num_labels"]  # HF derives it from id2label
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> "AlbertConfig":
        if d.get("model_type", "albert") != "albert":
            raise ValueError(f"config.json describes a {d['model_type']!r} model, not an ALBERT model")
        names = {f.name for f in dataclasses.fields(cls)} - _JAX_ONLY
        values = {k: v for k, v in d.items() if k in names}
        if "num_labels" not in d and "id2label" in d:
            values["num_labels"] = len(d["id2label"])
        return cls(**{**values, **overrides})

    def save_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_hf_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides: Any) -> "AlbertConfig":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_hf_dict(d, **overrides)


_JAX_ONLY = frozenset({"dtype", "param_dtype", "scan_layers", "remat_policy"})

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
