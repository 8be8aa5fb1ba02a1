"""Device mesh, logical-axis rules and the shardings of the train state and batches.

The model names every parameter dimension (`vocab`, `embed`, `hidden`, `heads`, `kv`, `mlp`) and
constrains activations to (`batch`, `length`, `hidden`); the rules below map those names onto the
mesh axes `data` (pure data parallel), `fsdp` (data parallel with sharded params and optimizer
state) and `tensor` (Megatron-style tensor parallel). The same config runs on one CPU (a 1x1x1 mesh)
and on a pod.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from albert_jax import errors

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes). Names not listed are replicated.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("hidden", "fsdp"),
    ("embed", None),
    ("kv", None),
    ("length", None),
)

Rules = Sequence[tuple[str, Any]]


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one axis may be -1 to take what is left."""
    devices = list(jax.devices() if devices is None else devices)
    shape = [data, fsdp, tensor]
    if shape.count(-1) > 1:
        raise errors.ConfigError(
            f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}"
        )
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise errors.ConfigError(
                f"{len(devices)} devices cannot be split into mesh data={data} fsdp={fsdp} tensor={tensor}"
            )
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise errors.ConfigError(
            f"mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} needs {int(np.prod(shape))} devices, "
            f"but {len(devices)} are available"
        )
    # Auto axes: XLA propagates shardings from the annotated params and batch (GSPMD).
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=auto, devices=devices)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
    """Normalise rules read from a config (lists become tuples, so they are hashable for flax)."""
    out = []
    for name, axes in rules:
        out.append((str(name), tuple(axes) if isinstance(axes, (list, tuple)) else axes))
    return tuple(out)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree whose leaves carry logical names (`nn.Partitioned`); others replicate."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, tuple(rules))


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """The leading (batch) dimension split over the mesh's data-parallel axes."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), tuple(rules)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
