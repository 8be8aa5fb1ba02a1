"""Orbax checkpoints of the train state together with the grain iterator state.

One checkpoint = `state` (params, optimizer state, step; sharded arrays) + `data` (this process's
input-pipeline position). Saves are asynchronous. Orbax writes each step to a temporary directory,
puts `commit_success.txt` in it and renames it, so a run killed mid-save leaves the previous
checkpoints intact; a step directory without that marker is incomplete (e.g. half copied).

Resume (`restore_latest`) takes the newest checkpoint that restores. Newer ones that are incomplete
or fail to restore (damaged files) are moved aside to `bad-<step>` with a warning: kept for a look,
but out of the way of later saves. A failed save (disk full, WORKDIR not writable) raises
`CheckpointError` naming the step and the checkpoints that are still intact.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import fsspec
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

# gs:// through epath is gcsfs, whose directory-listing cache never sees what tensorstore (orbax's
# arrays) or other hosts write, so a cached listing would hide new checkpoints: list afresh each time.
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)

COMMIT_MARKER = "commit_success.txt"  # written into every finalized step by orbax >= 0.12.3
BAD_PREFIX = "bad-"
# Bytes of the state that orbax hands to tensorstore at once while writing. Each in-flight byte is held
# a second time in tensorstore's write buffers (orbax's default, 96 GB, holds the whole state there).
WRITE_CONCURRENT_GB = 1


class CheckpointError(OSError):
    """A checkpoint could not be saved, or no checkpoint in the directory restores."""


def reason(error: BaseException, limit: int = 240) -> str:
    """A short one-line cause of an orbax/tensorstore error (their messages embed whole specs)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    code = re.search(r"os_error_code='(\d+)'", str(error))  # tensorstore's report of a failed system call
    if code:
        return os.strerror(int(code.group(1)))
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    text = re.sub(r"\s*\[tensorstore_spec.*$", "", text)
    if len(text) > limit:
        text = text[: limit // 4] + " … " + text[-(limit - limit // 4) :]
    return text or type(error).__name__


class Checkpointer:
    """`WORKDIR/checkpoints`: async save every `every` steps, keep the `keep` most recent.

    `cleanup_tmp`: remove the temporary directories of saves that never finished; only for the run
    that owns the directory (a reader, e.g. `init_from` pointing at a live run, must not).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        every: int,
        keep: int,
        async_save: bool = True,
        cleanup_tmp: bool = False,
    ):
        directory = epath.Path(directory)  # local or gs:// (a gs:// path counts as absolute)
        self.directory = directory if directory.is_absolute() else directory.resolve()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every,
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=cleanup_tmp,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data"),
            item_handlers={"state": ocp.StandardCheckpointHandler(save_concurrent_gb=WRITE_CONCURRENT_GB)},
        )
        self._pending: int | None = None  # the step of the save in flight: its errors surface later

    # --- what is on disk ------------------------------------------------------------------------

    def _step_dirs(self) -> list[int]:
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        return sorted(int(p.name) for p in entries if p.name.isdigit() and p.is_dir())

    def is_complete(self, step: int) -> bool:
        return (self.directory / str(step) / COMMIT_MARKER).exists()

    def all_steps(self) -> list[int]:
        """The complete checkpoints' steps, oldest first."""
        return [s for s in self._step_dirs() if self.is_complete(s)]

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # --- saving ---------------------------------------------------------------------------------

    def save(self, step: int, state: Any, data_iterator: Any | None = None, force: bool = False) -> bool:
        """Saves if `step` is on the interval (or `force`); returns whether a save was started.

        Raises `CheckpointError` if this save, or the previous one still in flight, fails.
        """
        if not force and not self._manager.should_save(step):
            return False
        self.wait()  # the previous async save's errors are raised here, named by its own step
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            started = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:
            raise CheckpointError(self._save_failed(step, e)) from e
        if started:
            self._pending = step
        return started

    def _save_failed(self, step: int | None, error: BaseException) -> str:
        kept = [s for s in self.all_steps() if s != step]
        intact = "there is no earlier checkpoint"
        if kept:
            intact = f"checkpoints {', '.join(map(str, kept))} are intact"
        which = "a checkpoint" if step is None else f"checkpoint {step}"
        return (
            f"saving {which} in {self.directory} failed: {reason(error)}; {intact}. Free space or make the "
            "directory writable, then rerun the same command to resume"
        )

    def wait(self) -> None:
        """Waits for the save in flight; raises `CheckpointError` if it failed."""
        step, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(self._save_failed(step, e)) from e

    def close(self, raise_errors: bool = True) -> None:
        """Finishes the save in flight and closes; `raise_errors=False` logs a failure instead (for
        a run that is already failing with another error)."""
        try:
            self.wait()
        except CheckpointError as e:
            if raise_errors:
                self._manager.close()
                raise
            log.error("%s", e)
        self._manager.close()

    # --- restoring ------------------------------------------------------------------------------

    def restore(self, abstract_state: Any, data_iterator: Any | None = None, step: int | None = None) -> Any:
        """Restores `state` into the shapes/shardings of `abstract_state` (and the iterator in place)."""
        step = self.latest_step() if step is None else step
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def restore_latest(self, abstract_state: Any, data_iterator: Any | None = None) -> tuple[Any, int] | None:
        """(state, step) of the newest checkpoint that restores; None if there is no checkpoint at all.

        Newer ones that are incomplete or fail to restore are moved aside (`bad-<step>`) with a
        warning. Raises `CheckpointError` (one line, nothing moved) if none restores. Every process
        tries the same steps and they agree on the outcome of each.
        """
        bad: list[tuple[int, str]] = []
        for step in reversed(self._step_dirs()):
            why = None
            state = None
            if not self.is_complete(step):
                why = f"incomplete (no {COMMIT_MARKER}: its save never finished)"
            else:
                try:
                    state = self.restore(abstract_state, data_iterator, step)
                except Exception as e:  # whatever a damaged checkpoint makes orbax/tensorstore raise
                    why = reason(e)
            # A failure on one process only (its shard's file is damaged) fails the step for all.
            # Caveat: such a process skips orbax's end-of-restore barrier that the others wait in.
            why = _agree(why)
            if why is None:
                self._set_aside(bad, step)
                return state, step
            bad.append((step, why))
        if not bad:
            return None
        listing = "; ".join(f"step {s}: {w}" for s, w in bad)
        raise CheckpointError(
            f"no checkpoint in {self.directory} restores ({listing}); to start over move them away, or use "
            "a new WORKDIR"
        )

    def _set_aside(self, bad: list[tuple[int, str]], restored: int) -> None:
        for step, why in bad:
            target = _free_name(self.directory, f"{BAD_PREFIX}{step}")
            log.warning(
                "checkpoint %d in %s is unusable: %s; moved it to %s and resuming from step %d",
                step,
                self.directory,
                why,
                target.name,
                restored,
            )
            if jax.process_index() == 0:
                (self.directory / str(step)).rename(target)
        if bad:
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("albert_jax: bad checkpoints set aside")
            self._manager.reload()  # orbax caches its step list

    def restore_params(self, step: int | None = None) -> Any:
        """Only the params, as host arrays; for export and fine-tuning from a pretraining run."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        state = restored["state"]
        params = state["params"] if isinstance(state, dict) else state.params
        return jax.tree.map(lambda x: jax.device_get(x), params)


def _agree(why: str | None) -> str | None:
    """None if the step restored on every process, else this process's reason (or another's)."""
    if jax.process_count() == 1:
        return why
    ok = multihost_utils.process_allgather(np.int32(why is None))
    if np.all(ok):
        return None
    return why or "it failed to restore on another process"


def _free_name(directory: epath.Path, name: str) -> epath.Path:
    target, k = directory / name, 1
    while target.exists():
        target, k = directory / f"{name}.{k}", k + 1
    return target
