"""Presets against the published checkpoints' config.json, and the pretraining-from-scratch presets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from albert_jax import modeling
from albert_jax.config import JAX_ONLY_FIELDS, PRESETS, AlbertConfig
from configs import pretrain as pretrain_configs

# The published config.json of each checkpoint on the Hugging Face hub (huggingface.co/albert/<name>,
# current revisions, e.g. albert-large-v1 6d0a829 and albert-xxlarge-v2 05cb870, "Update config.json",
# which added transformers' defaults to the original files). Keys that all eight files share:
PUBLISHED_COMMON = {
    "architectures": ["AlbertForMaskedLM"],
    "model_type": "albert",
    "vocab_size": 30000,
    "embedding_size": 128,
    "num_hidden_groups": 1,
    "inner_group_num": 1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "classifier_dropout_prob": 0.1,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 3,
    # The original's unused structure knobs; AlbertConfig has none of them, so they must be at no-op values.
    "down_scale_factor": 1,
    "gap_size": 0,
    "net_structure_type": 0,
    "num_memory_blocks": 0,
}
PUBLISHED_COLUMNS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)
# fmt: off
PUBLISHED_ROWS = {
    "albert-base-v1":    (768,  12, 12, 3072,  "gelu",     0.1, 0.1),
    "albert-large-v1":   (1024, 24, 16, 4096,  "gelu",     0.1, 0.1),
    "albert-xlarge-v1":  (2048, 24, 16, 8192,  "gelu",     0.1, 0.1),
    "albert-xxlarge-v1": (4096, 12, 64, 16384, "gelu",     0,   0),  # no dropout, unlike the other v1
    "albert-base-v2":    (768,  12, 12, 3072,  "gelu_new", 0,   0),
    "albert-large-v2":   (1024, 24, 16, 4096,  "gelu_new", 0,   0),
    "albert-xlarge-v2":  (2048, 24, 16, 8192,  "gelu_new", 0,   0),
    "albert-xxlarge-v2": (4096, 12, 64, 16384, "gelu_new", 0,   0),
}
# fmt: on
PUBLISHED = {
    name: {**PUBLISHED_COMMON, **dict(zip(PUBLISHED_COLUMNS, row))} for name, row in PUBLISHED_ROWS.items()
}
NOOP_KNOBS = {"down_scale_factor": 1, "gap_size": 0, "net_structure_type": 0, "num_memory_blocks": 0}
# Every AlbertConfig field that HF's config.json carries (num_labels is written as id2label; `sharing`,
# not an HF field, only when not "all": tests/test_sharing.py).
HF_FIELDS = sorted(
    {f.name for f in dataclasses.fields(AlbertConfig)}
    - set(JAX_ONLY_FIELDS)
    - {"num_labels", "label_names", "sharing"}
)  # HF: id2label
PRESET_NAMES = [f"{size}-{v}" for size in PRESETS for v in ("v1", "v2")]


def test_table_covers_every_preset():
    assert sorted(PUBLISHED) == sorted(f"albert-{name}" for name in PRESET_NAMES)


@pytest.mark.parametrize("checkpoint", sorted(PUBLISHED))
def test_preset_equals_published_config(checkpoint):
    published = PUBLISHED[checkpoint]
    preset = AlbertConfig.from_preset(checkpoint.removeprefix("albert-"))
    ours = preset.to_hf_dict()
    missing = [k for k in HF_FIELDS if k not in published]
    assert not missing, f"the table lacks {missing}"
    keys = HF_FIELDS + ["model_type", "bos_token_id", "eos_token_id"]
    mismatches = {k: (ours[k], published[k]) for k in keys if ours[k] != published[k]}
    assert not mismatches, f"{checkpoint}: field: (preset, published) {mismatches}"
    # Reading the file gives the preset (the JAX-only fields at their defaults).
    assert AlbertConfig.from_hf_dict(published) == preset
    assert {k: published[k] for k in NOOP_KNOBS} == NOOP_KNOBS


def test_unsuffixed_preset_is_v2():
    for size in PRESETS:
        assert AlbertConfig.from_preset(size) == AlbertConfig.from_preset(f"{size}-v2")


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_pretraining_preset_uses_the_original_gelu(name):
    """Published v1 files say "gelu" (erf in HF); the original trained them with its tanh `gelu`."""
    published = AlbertConfig.from_preset(name)
    scratch = AlbertConfig.from_preset(name, for_pretraining=True)
    assert scratch == published.replace(hidden_act="gelu_new")


def test_gelu_new_is_the_original_gelu():
    """google-research/albert modeling.gelu: x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""
    x = np.linspace(-6, 6, 2001, dtype=np.float32)
    original = x * 0.5 * (1.0 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(np.asarray(modeling.ACTIVATIONS["gelu_new"](x)), original, atol=1e-6)
    # The erf GELU that HF reads from v1's "gelu" is measurably different.
    assert np.abs(np.asarray(modeling.ACTIVATIONS["gelu"](x)) - original).max() > 1e-4


@pytest.mark.parametrize("size", list(PRESETS))
def test_pretraining_recipes(size):
    """`size`: v2 model with the paper's 125k-step recipe; `size-v1`: the v1 recipe (v1 model, tanh GELU)."""
    for name in (size, f"{size}-v1"):
        c = pretrain_configs.get_config(name)
        assert AlbertConfig(**c.model.to_dict()) == AlbertConfig.from_preset(name, for_pretraining=True)
        assert c.model.hidden_act == "gelu_new"
        assert (c.seq_len, c.batch_size, c.total_steps, c.learning_rate, c.warmup_steps) == (
            512,
            4096,
            125_000,
            0.00176,
            3125,
        )
    v1_dropout = pretrain_configs.get_config(f"{size}-v1").model.hidden_dropout_prob
    assert v1_dropout == (0.0 if size == "xxlarge" else 0.1)
    assert pretrain_configs.get_config(size).model.hidden_dropout_prob == 0.0
