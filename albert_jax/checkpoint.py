"""Orbax checkpoints of the train state together with the grain iterator state.

One checkpoint = `state` (params, optimizer state, step; sharded arrays) + `data` (each process's
input-pipeline position). Saves are asynchronous. Orbax writes each step to a temporary directory
(on an object store: in place), puts `commit_success.txt` in it and then renames it, so a run killed
mid-save leaves the previous checkpoints intact; a step without that marker is incomplete.

A checkpoint restores on any topology and any number of processes:
- the state into the current run's shardings (`restore`), or only the parameters as host numpy
  arrays, whatever mesh and host count wrote them (`restore_params`: export, `init_from`);
- the data position: every process of our pipelines holds the same one (the count of global batches
  consumed), so a run saved by M processes resumes exactly on N (`_DataPosition`).

Resume (`restore_latest`) takes the newest checkpoint that restores. A transient storage error (HTTP
429/5xx, a reset connection, a timeout) is retried (`storage.retry`) and, if it persists, stops the run
with nothing set aside: it says nothing about the checkpoint. Only evidence of damage (an incomplete
step, missing or short files, decode errors) sets a checkpoint aside, agreed by every process: on a
filesystem it is renamed to `bad-<step>`; on an object store, where a rename copies every object, its
commit marker is deleted instead (orbax then treats it as unfinished and reclaims it) and
`bad-<step>.json` records why. Restores run without orbax's end-of-restore barrier, so a process whose
shard fails does not leave the others waiting in it. A failed save raises `CheckpointError` naming the
step and the checkpoints that are still intact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from typing import Any

import fsspec
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from albert_jax import errors, storage

log = logging.getLogger(__name__)

# gs:// through epath is gcsfs, whose directory-listing cache never sees what tensorstore (orbax's
# arrays) or other hosts write, so a cached listing would hide new checkpoints: list afresh each time.
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)

COMMIT_MARKER = "commit_success.txt"  # written into every finalized step by orbax >= 0.12.3
BAD_PREFIX = "bad-"
# Bytes of the state that orbax hands to tensorstore at once while writing. Each in-flight byte is held
# a second time in tensorstore's write buffers (orbax's default, 96 GB, holds the whole state there).
WRITE_CONCURRENT_GB = 1

_OK, _DAMAGED, _UNREADABLE = 0, 1, 2  # a restore's outcome on one process, ordered by precedence


class CheckpointError(errors.StorageError):
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


class _DataPosition(grain.checkpoint.CheckpointHandler):
    """grain's handler, restoring from whichever process files the checkpoint has.

    grain names each process's file `process_<i>-of-<n>.json`. Our pipelines give every process the
    same state (the number of global batches consumed), so a checkpoint written by another number of
    processes restores exactly from any of its files; if they differ (a pipeline whose state is per
    process), process `i` takes file `i mod m`, with a warning that the data order may no longer match.
    """

    def restore(self, directory: epath.Path, item: Any = None, args: Any = None) -> Any:
        item = item or args.item
        text = _position_text(epath.Path(directory))
        item.set_state(json.loads(text) if isinstance(item, grain.DatasetIterator) else text.encode())
        item.start_prefetch()
        return item


def _position_text(directory: epath.Path) -> str:
    index, count = jax.process_index(), jax.process_count()
    own = directory / f"process_{index}-of-{count}.json"
    if own.exists():
        return own.read_text()
    saved = sorted(directory.glob("process_*-of-*.json"))
    counts = {int(p.stem.rsplit("-of-", 1)[1]) for p in saved}
    if len(counts) != 1 or len(saved) != next(iter(counts)):
        raise errors.MissingError(
            f"{directory} has no complete set of data positions ({[p.name for p in saved]})"
        )
    texts = [p.read_text() for p in saved]
    states = [json.loads(t) for t in texts]
    if all(s == states[0] for s in states):
        if index == 0:
            log.info(
                "the checkpoint was written by %d processes, resuming on %d: same data position",
                len(saved),
                count,
            )
        return texts[0]
    if index == 0:
        log.warning(
            "the checkpoint was written by %d processes with different data positions; resuming on %d, each "
            "process continues from one of them, so the data order no longer matches an uninterrupted run",
            len(saved),
            count,
        )
    return texts[index % len(saved)]


@ocp.args.register_with_handler(_DataPosition, for_save=True, for_restore=True)
@dataclasses.dataclass
class _DataRestore(ocp.args.CheckpointArgs):
    item: Any  # the iterator, set in place


def _restore_args(metadata: Any) -> Any:
    """Restore every leaf as a host numpy array: no shardings, so any topology reads it."""
    return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)


class Checkpointer:
    """`WORKDIR/checkpoints`: async save every `every` steps, keep the `keep` most recent.

    Reading (`restore*`, the step listing) needs no orbax manager; one is made at the first save, so
    a reader (export, `init_from`) never writes to the directory. `cleanup_tmp`: remove the temporary
    directories of saves that never finished; only for the run that owns the directory.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        every: int = 1,
        keep: int = 1,
        async_save: bool = True,
        cleanup_tmp: bool = False,
    ):
        directory = epath.Path(directory)  # local or gs:// (a gs:// path counts as absolute)
        self.directory = directory if directory.is_absolute() else directory.resolve()
        self._options = ocp.CheckpointManagerOptions(
            save_interval_steps=every,
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=cleanup_tmp,
        )
        self._manager: ocp.CheckpointManager | None = None
        self._pending: int | None = None  # the step of the save in flight: its errors surface later
        # The manager is made at the first save, after `restore_latest`: its clean-up of unfinished saves
        # runs in a background thread, which would race the listing here (a step directory half
        # deleted). Restores go through the handlers themselves: orbax's Checkpointer ends a restore in a barrier
        # that a process whose restore failed never reaches. Processes agree afterwards (`_agree`).
        self._reader = ocp.CompositeCheckpointHandler(
            state=ocp.PyTreeCheckpointHandler(), data=_DataPosition()
        )

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=self._options,
                item_names=("state", "data"),
                item_handlers={
                    "state": ocp.StandardCheckpointHandler(save_concurrent_gb=WRITE_CONCURRENT_GB)
                },
            )
        return self._manager

    # --- what is on disk ------------------------------------------------------------------------

    def _step_dirs(self) -> list[int]:
        def listing() -> list[int]:
            try:
                entries = list(self.directory.iterdir())
            except FileNotFoundError:
                return []
            return sorted(int(p.name) for p in entries if p.name.isdigit() and p.is_dir())

        return storage.retry(listing, f"listing {self.directory}")

    def is_complete(self, step: int) -> bool:
        return storage.retry(
            lambda: (self.directory / str(step) / COMMIT_MARKER).exists(), "checking a checkpoint"
        )

    def all_steps(self) -> list[int]:
        """The complete checkpoints' steps, oldest first."""
        return [s for s in self._step_dirs() if self.is_complete(s)]

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # --- saving ---------------------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state: Any, data_iterator: Any | None = None, force: bool = False) -> bool:
        """Saves if `step` is on the interval (or `force`); returns whether a save was started.

        Raises `CheckpointError` if this save, or the previous one still in flight, fails.
        """
        if not force and not self.manager.should_save(step):
            return False
        self.wait()  # the previous async save's errors are raised here, named by its own step
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            started = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
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
        fix = "Free space or make the directory writable, then rerun"
        if storage.is_transient(error):
            fix = "The storage failed after retries; rerun"
        return f"saving {which} in {self.directory} failed: {reason(error)}; {intact}. {fix} the same command to resume"

    def wait(self) -> None:
        """Waits for the save in flight; raises `CheckpointError` if it failed."""
        step, self._pending = self._pending, None
        if self._manager is None:
            return
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
                self._close_manager()
                raise
            log.error("%s", e)
        self._close_manager()

    def _close_manager(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    # --- restoring ------------------------------------------------------------------------------

    def restore(self, abstract_state: Any, data_iterator: Any | None = None, step: int | None = None) -> Any:
        """Restores `state` into the shapes/shardings of `abstract_state` (and the iterator in place)."""
        step = self.latest_step() if step is None else step
        items = {
            "state": ocp.args.PyTreeRestore(
                abstract_state, ocp.checkpoint_utils.construct_restore_args(abstract_state)
            )
        }
        if data_iterator is not None:
            items["data"] = _DataRestore(data_iterator)
        return self._reader.restore(self.directory / str(step), args=ocp.args.Composite(**items))["state"]

    def restore_latest(self, abstract_state: Any, data_iterator: Any | None = None) -> tuple[Any, int] | None:
        """(state, step) of the newest checkpoint that restores; None if there is no checkpoint at all.

        Newer ones that are damaged are set aside with a warning. Raises `CheckpointError` (one line,
        nothing set aside) if none restores, or if storage errors persist through the retries. Every
        process tries the same steps and they agree on the outcome of each.
        """
        bad: list[tuple[int, str]] = []
        for step in reversed(self._step_dirs()):
            if not self.is_complete(step) and self._on_object_store:
                # On an object store orbax writes a save under its final name: without the marker it is
                # a save that never finished (or one set aside before), which orbax itself deletes.
                log.info("checkpoint %d in %s is an unfinished save; orbax removes it", step, self.directory)
                continue
            if not self.is_complete(step):
                outcome, why, state = (
                    _DAMAGED,
                    f"incomplete (no {COMMIT_MARKER}: its save never finished)",
                    None,
                )
            else:
                outcome, why, state = self._try_restore(abstract_state, data_iterator, step)
            outcome, why = _agree(outcome, why)
            if outcome == _UNREADABLE:
                raise CheckpointError(
                    f"checkpoint {step} in {self.directory} could not be read: {why}. This is a storage error, "
                    "not damage, and it persisted through retries; nothing was set aside. Rerun the same "
                    "command to resume when the storage answers"
                )
            if outcome == _OK:
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

    def _try_restore(self, abstract_state: Any, data_iterator: Any, step: int) -> tuple[int, str, Any]:
        try:
            state = storage.retry(
                lambda: self.restore(abstract_state, data_iterator, step), f"restoring checkpoint {step}"
            )
        except Exception as e:  # whatever a damaged checkpoint makes orbax/tensorstore raise
            return (_UNREADABLE if storage.is_transient(e) else _DAMAGED), reason(e), None
        return _OK, "", state

    @property
    def _on_object_store(self) -> bool:
        return "://" in os.fspath(self.directory)

    def _set_aside(self, bad: list[tuple[int, str]], restored: int) -> None:
        for step, why in bad:
            if self._on_object_store:
                record = self.directory / f"{BAD_PREFIX}{step}.json"
                what = f"recorded it in {record.name} (its files stay until orbax reclaims the step)"
            else:
                target = _free_name(self.directory, f"{BAD_PREFIX}{step}")
                what = f"moved it to {target.name}"
            log.warning(
                "checkpoint %d in %s is unusable: %s; %s and resuming from step %d",
                step,
                self.directory,
                why,
                what,
                restored,
            )
            if jax.process_index() != 0:
                continue
            # On an object store no object is copied: the marker goes, so orbax no longer counts the step.
            if self._on_object_store:
                body = {"step": step, "reason": why, "time": time.time()}
                storage.retry(lambda r=record, b=body: r.write_text(json.dumps(b)), f"writing {record}")
                marker = self.directory / str(step) / COMMIT_MARKER
                storage.retry(lambda m=marker: m.unlink(missing_ok=True), f"removing {marker}")
            else:
                (self.directory / str(step)).rename(target)
        if bad and jax.process_count() > 1:
            multihost_utils.sync_global_devices("albert_jax: bad checkpoints set aside")
        if bad and self._manager is not None:
            self._manager.reload()  # orbax caches its step list

    def restore_params(self, step: int | None = None) -> Any:
        """Only the params, as host numpy arrays, from any topology and host count: for export,
        `init_from` and evaluation of a finished run."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise errors.MissingError(f"no checkpoint in {self.directory}")
        directory = self.directory / str(step)
        metadata = storage.retry(
            lambda: ocp.PyTreeCheckpointHandler().metadata(directory / "state").tree, f"reading {directory}"
        )
        if "params" not in metadata:
            raise errors.InputError(f"the checkpoint {directory} holds no params (it has {sorted(metadata)})")
        want = {"params": metadata["params"]}
        args = ocp.args.PyTreeRestore(want, _restore_args(want), partial_restore=True)
        composite = ocp.args.Composite(state=args)
        restored = storage.retry(
            lambda: self._reader.restore(directory, args=composite), f"reading {directory}"
        )
        return restored["state"]["params"]


def _agree(outcome: int, why: str) -> tuple[int, str]:
    """The outcome every process acts on: the worst of theirs (unreadable > damaged > ok), with this
    process's reason where it has one."""
    if jax.process_count() == 1:
        return outcome, why
    worst = int(np.max(multihost_utils.process_allgather(np.int32(outcome))))
    if worst == outcome:
        return outcome, why
    return worst, {
        _DAMAGED: "it failed to restore on another process",
        _UNREADABLE: "a storage error on another process",
    }[worst]


def _free_name(directory: epath.Path, name: str) -> epath.Path:
    target, k = directory / name, 1
    while target.exists():
        target, k = directory / f"{name}.{k}", k + 1
    return target
