"""What every entry point shares: multi-host start-up and the one error path.

`run_guarded(fn)` prints the project's user-error types (`errors.UserError`), and the machine's own
conditions (no permission, a full disk), as one `error: …` line and exits 1; anything else is a bug
and keeps its traceback. absl entry points (`pretrain.py`,
`train.py`, `python -m albert_jax.data.prepare`) define their config with `define_config_flag` and
parse with `parse_flags`; argparse ones (`python -m albert_jax.export|plot|tokenizer`) go through
`argparse_main`. This module imports nothing of albert_jax but `errors`, so any module may use it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import runpy
import sys
from typing import Any, Callable, Sequence

import jax
from absl import flags
from ml_collections import config_flags

from albert_jax import errors

_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show full tracebacks instead of one-line errors.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (auto-detected on TPU pods, SLURM, …)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")


def one_line(error: BaseException) -> str:
    """An exception's message on one line (ml_collections embeds whole tracebacks in its messages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return " ".join(lines)


def unknown_key(error: BaseException, argv: Sequence[str]) -> str:
    """`unknown config key 'model.hiden_size' (did you mean 'model.hidden_size'?)` from ml_collections'
    KeyError/AttributeError, with the dotted path taken from the override that named it."""
    text = str(error).replace("\\'", "'").replace("\\n", "\n")
    found = re.search(r"'([^'\s]+)'", text)
    key = found.group(1) if found else text.strip("'\" \n")
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    prefix = ""
    for arg in argv:
        path = arg.split("=", 1)[0].removeprefix("--config.").split(".")
        if arg.startswith("--config.") and key in path:
            prefix = ".".join(path[: path.index(key)])
            break
    dotted = f"{prefix}.{key}" if prefix else key
    hint = f" (did you mean '{prefix + '.' if prefix else ''}{suggestion.group(1)}'?)" if suggestion else ""
    return f"unknown config key '{dotted}'{hint}"


def _flag_errors_on_one_line(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except flags.Error as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
    except (AttributeError, KeyError) as e:  # ml_collections: the locked config has no such field
        print(f"error: {unknown_key(e, sys.argv)}", file=sys.stderr)
    except (TypeError, ValueError, OSError) as e:  # the config file or an override's value
        print(f"error: invalid --config: {one_line(e)}", file=sys.stderr)
    sys.exit(1)


def define_config_flag(default: str) -> Any:
    """`--config=FILE:ARG` plus `--config.key=value` overrides (ml_collections reads those from argv
    while defining the flag, so a typo'd key surfaces here)."""
    return _flag_errors_on_one_line(
        lambda: config_flags.DEFINE_config_file("config", default, "Experiment config file (FILE:PRESET).")
    )


def config_defaults() -> Any:
    """The `--config` file's config without the `--config.*` overrides: today's default of every key,
    which `config_drift` compares with a WORKDIR whose config.json predates some of them."""
    path, _, arg = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
    get_config = runpy.run_path(path)["get_config"]
    return get_config(arg) if arg else get_config()


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
    """After a failed read or write, tensorstore's late callbacks find orbax's event loop closed, and
    coroutines of the abandoned operation are collected unawaited; Python reports both as unraisable,
    which is noise next to the one warning or `error:` line. Everything else is shown."""
    if isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed":
        return
    if "coroutine" in repr(getattr(info, "object", "")):
        return
    sys.__unraisablehook__(info)


# Conditions of the machine, not of the code (no permission, a full or read-only disk, a quota): one
# line, as the project's own errors. Any other OSError keeps its traceback.
_MACHINE_ERRNO = frozenset({errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT})


def run_guarded(fn: Callable[[], object], *, traceback: bool | None = None, distributed: bool = True) -> int:
    """Run `fn`; a user error prints `error: …` on one line and returns 1, nothing else is touched.

    `traceback` defaults to the `--traceback` flag; `distributed` joins a multi-host job first (absl
    entry points, whose flags name it)."""
    show = _TRACEBACK.value if traceback is None else traceback
    logging.getLogger().setLevel(logging.INFO)
    # Orbax and JAX log every save and backend probe through absl at INFO; keep the console readable.
    for name in ("absl", "jax", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not show:
        for handler in logging.getLogger().handlers:  # absl's handler: every logger's records pass it
            handler.addFilter(_NoLibraryTracebacks())
        sys.unraisablehook = _unraisable
    try:
        if distributed:
            initialize_distributed()
        fn()
    except errors.UserError as e:
        if show:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        if show or e.errno not in _MACHINE_ERRNO:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except ImportError as e:
        # fsspec's "Please install gcsfs to access Google Storage" for a gs:// path: an optional extra.
        if show or "gcsfs" not in str(e):
            raise
        print(
            f"error: gs:// paths need gcsfs: pip install 'albert_jax[gcs]' ({one_line(e)})", file=sys.stderr
        )
        return 1
    return 0


def argparse_main(
    parser: argparse.ArgumentParser, fn: Callable[[argparse.Namespace], object], argv=None
) -> int:
    """An argparse entry point on the same error path (with its own `--traceback`)."""
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks, not one-line errors")
    args = parser.parse_args(argv)
    return run_guarded(lambda: fn(args), traceback=args.traceback, distributed=False)
