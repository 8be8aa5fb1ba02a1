"""What every entry point shares: multi-host start-up and one-line errors for user mistakes."""

from __future__ import annotations

import logging
import sys
from typing import Callable

import jax
from absl import flags

from albert_jax.training.trainer import TrainingError

_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show full tracebacks instead of one-line errors.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (auto-detected on TPU pods, SLURM, …)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")

# Mistakes a user can make (bad paths, bad values, a diverged run); anything else is a bug and keeps
# its traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError, TrainingError)


def initialize_distributed() -> None:
    if _COORDINATOR.value is not None:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


def run_guarded(fn: Callable[[], object]) -> int:
    """Run `fn`; a user mistake prints `error: …` on one line and exits 1, nothing else is touched."""
    logging.getLogger().setLevel(logging.INFO)
    # Orbax and JAX log every save and backend probe through absl at INFO; keep the console readable.
    for name in ("absl", "jax", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        initialize_distributed()
        fn()
    except USER_ERRORS as e:
        if _TRACEBACK.value:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
