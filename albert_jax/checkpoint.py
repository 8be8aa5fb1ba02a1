"""Orbax checkpoints of the train state together with the grain iterator state.

One checkpoint = `state` (params, optimizer state, step; sharded arrays) + `data` (this process's
input-pipeline position). Saves are asynchronous; restore picks the latest *complete* step (orbax
writes to a temporary directory and renames on success, so a run killed mid-save leaves the previous
checkpoint intact).
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """`WORKDIR/checkpoints`: async save every `every` steps, keep the `keep` most recent."""

    def __init__(self, directory: str | os.PathLike, every: int, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None = None, force: bool = False) -> bool:
        """Saves if `step` is on the interval (or `force`); returns whether a save was started."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: Any, data_iterator: Any | None = None, step: int | None = None) -> Any:
        """Restores `state` into the shapes/shardings of `abstract_state` (and the iterator in place)."""
        step = self.latest_step() if step is None else step
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def restore_params(self, step: int | None = None) -> Any:
        """Only the params, as host arrays; for export and fine-tuning from a pretraining run."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        state = restored["state"]
        params = state["params"] if isinstance(state, dict) else state.params
        return jax.tree.map(lambda x: jax.device_get(x), params)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
