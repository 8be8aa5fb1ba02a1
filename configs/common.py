"""Defaults shared by every experiment config: mesh, logical axis rules, logging cadence."""

import dataclasses

import ml_collections

from albert_jax.config import AlbertConfig
from albert_jax.sharding import DEFAULT_RULES


def model_config(preset: str | None = None, **overrides) -> ml_collections.ConfigDict:
    """Every AlbertConfig field, so any of them can be overridden from the command line."""
    cfg = AlbertConfig.from_preset(preset, **overrides) if preset else AlbertConfig(**overrides)
    fields = dataclasses.asdict(cfg)
    fields["classifier_dropout_prob"] = (
        fields["classifier_dropout_prob"] or 0.0
    )  # a ConfigDict field needs a type
    return ml_collections.ConfigDict(fields)


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """Mesh axis sizes; -1 takes the devices the other axes leave."""
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def logical_axis_rules() -> list:
    return [list(rule) for rule in DEFAULT_RULES]
