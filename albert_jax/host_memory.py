"""Huge pages for the host allocator under XLA's CPU backend, so that a step's temporaries are not
faulted in page by page every step.

On CPU, each execution of a compiled step allocates its temporaries as one block (81 MB for the
1.39M-parameter fine-tuning step at batch 32, seq 48) and frees it at the end. glibc serves a block
that large with a fresh `mmap` (its threshold stops at 32 MB), so every step faults in every 4 KiB
page again: about 20,000 page faults per step there, a fifth of the step's time on a 2-core VM.
glibc's `glibc.malloc.hugetlb=1` tunable maps such blocks with transparent huge pages (2 MiB), about
470 faults a step. A tunable is read when the process starts, so an entry point that sets
`ALBERT_JAX_HUGE_PAGES = True` before it imports albert_jax (`train.py`, `pretrain.py`, the
benchmarks) is restarted once, at import, with `GLIBC_TUNABLES` holding it (`os.execve`: same pid,
same arguments, about 0.1 s). Elsewhere (a notebook, a library user) set it in the environment:
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1 jupyter lab`.

Nothing is done off glibc 2.35+, where transparent huge pages are off (`never`), where JAX will
compute on an accelerator (step temporaries then live in device memory), once JAX has computed, when
the environment already sets glibc's malloc (`GLIBC_TUNABLES=glibc.malloc.…`, `MALLOC_…`), or with
`ALBERT_JAX_MALLOC=system`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import sys

log = logging.getLogger(__name__)

MARKER = "ALBERT_JAX_HUGE_PAGES"  # a module-level name of the entry point's __main__
ENV = "ALBERT_JAX_MALLOC"
TUNABLE = "glibc.malloc.hugetlb=1"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_has_tunable() -> bool:
    """glibc.malloc.hugetlb exists from glibc 2.35."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):  # not glibc (macOS, musl)
        return False
    return name == "glibc" and tuple(int(p) for p in version.split(".")[:2]) >= (2, 35)


def transparent_huge_pages() -> str:
    """The kernel's THP mode (`always`, `madvise`, `never`), or `unknown`."""
    try:
        with open(_THP) as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unknown"


def _user_set() -> bool:
    """glibc's allocator settings chosen in the environment are left as they are."""
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or any(
        k.startswith("MALLOC_") for k in os.environ
    )


def _backend_started() -> bool:
    """Once JAX has computed, a restart would lose the process's work."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def _computes_on_cpu() -> bool:
    """Whether JAX's default backend will be the CPU, decided without starting a backend."""
    platforms = os.environ.get("JAX_PLATFORMS", "") or os.environ.get("JAX_PLATFORM_NAME", "")
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    # JAX finds accelerators through plugins (the `jax_plugins` entry points and namespace) and libtpu.
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    return not any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu"))


def applies() -> bool:
    """Whether this process would be restarted with the tunable."""
    return (
        sys.platform.startswith("linux")
        and os.environ.get(ENV, "").lower() != "system"
        and not _user_set()
        and _glibc_has_tunable()
        and transparent_huge_pages() in ("always", "madvise")
        and not _backend_started()
        and _computes_on_cpu()
    )


def _asks_for_restart(main: object) -> bool:
    """The process's own script sets `MARKER`: not one run in-process (`runpy`, IPython's `%run`),
    whose restart would restart its host."""
    path = getattr(main, "__file__", None)
    if not getattr(main, MARKER, False) or not path:
        return False
    return any(os.path.realpath(arg) == os.path.realpath(path) for arg in sys.orig_argv[1:])


def restart_for_entry_point() -> None:
    """Called on import of albert_jax: restarts an entry point that asks for it (`MARKER`), once."""
    if _asks_for_restart(sys.modules.get("__main__")) and applies():
        tunables = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES", ""), TUNABLE)))
        env = {**os.environ, "GLIBC_TUNABLES": tunables}
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        except OSError as e:  # then run on as it is: the tunable is an optimisation only
            log.warning("could not restart with %s (%s); continuing without it", TUNABLE, e)
