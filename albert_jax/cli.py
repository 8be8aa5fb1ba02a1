"""What every entry point shares: multi-host start-up and one-line errors for user mistakes."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

import jax
from absl import flags
from ml_collections import config_flags

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
USER_ERRORS = (ValueError, TypeError, OSError, TrainingError)


def one_line(error: BaseException) -> str:
    """An exception's message on one line (ml_collections embeds whole tracebacks in its messages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return " ".join(lines)


def _flag_errors_on_one_line(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except flags.Error as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
    except AttributeError as e:  # ml_collections: the locked config has no such field
        print(f"error: unknown config key {e} (see the config file for the keys it has)", file=sys.stderr)
    except (KeyError, TypeError, ValueError, OSError) as e:
        print(f"error: invalid --config: {one_line(e)}", file=sys.stderr)
    sys.exit(1)


def define_config_flag(default: str) -> Any:
    """`--config=FILE:ARG` plus `--config.key=value` overrides (ml_collections reads those from argv
    while defining the flag, so a typo'd key surfaces here)."""
    return _flag_errors_on_one_line(
        lambda: config_flags.DEFINE_config_file("config", default, "Experiment config file (FILE:PRESET).")
    )


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config-override mistakes (a typo'd key, a wrong type) on one line."""
    return _flag_errors_on_one_line(lambda: flags.FLAGS(argv))


def initialize_distributed() -> None:
    if _COORDINATOR.value is not None:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


class _NoLibraryTracebacks(logging.Filter):
    """Orbax (through absl) and asyncio log a failed background save with tracebacks before the error
    reaches us; the `error:` line says what failed, so keep their log lines and drop the tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "asyncio" or "orbax" in record.pathname:
            record.exc_info, record.exc_text = None, None
        return True


def _unraisable(info: Any) -> None:
    """After a failed async save, tensorstore's late callbacks find orbax's event loop closed and
    report it as unraisable; that is noise next to the `error:` line. Everything else is shown."""
    if isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed":
        return
    sys.__unraisablehook__(info)


def run_guarded(fn: Callable[[], object]) -> int:
    """Run `fn`; a user mistake prints `error: …` on one line and exits 1, nothing else is touched."""
    logging.getLogger().setLevel(logging.INFO)
    # Orbax and JAX log every save and backend probe through absl at INFO; keep the console readable.
    for name in ("absl", "jax", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not _TRACEBACK.value:
        for handler in logging.getLogger().handlers:  # absl's handler: every logger's records pass it
            handler.addFilter(_NoLibraryTracebacks())
        sys.unraisablehook = _unraisable
    try:
        initialize_distributed()
        fn()
    except USER_ERRORS as e:
        if _TRACEBACK.value:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except ImportError as e:
        # fsspec's "Please install gcsfs to access Google Storage" for a gs:// path: an optional extra.
        if _TRACEBACK.value or "gcsfs" not in str(e):
            raise
        print(
            f"error: gs:// paths need gcsfs: pip install 'albert_jax[gcs]' ({one_line(e)})", file=sys.stderr
        )
        return 1
    return 0
