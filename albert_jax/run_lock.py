"""One run per WORKDIR: a lock file that names its holder (host, pid) and notices when it is stale.

`WORKDIR/run.lock` is created exclusively and holds JSON: host, pid, the process's start time and
the machine's boot id. While the run lives, a thread touches the file every `HEARTBEAT_S` seconds.
A lock is stale, and is taken over with a warning, when

- it was written on this host (same boot) and its process is gone (or the pid now belongs to a
  different process): a run killed by SIGKILL does not block its own restart;
- it was written on another host and its heartbeat is older than `STALE_AFTER_S` (that host's
  processes cannot be checked from here).

Take-overs are serialised by a second exclusive file, so two restarts racing for a stale lock end
with one holder.

A `gs://` WORKDIR has no hard links, exclusive opens or mtimes to touch. There the lock is an object
created with GCS's generation precondition (`ifGenerationMatch=0`, which gcsfs sends for mode "x"),
after an existence check, and read back to confirm it is ours; the heartbeat rewrites it (the object's
update time is its age). On GCS the precondition makes creation exclusive; a store that ignores it
(the local emulator the tests use) gets only check-then-write, which a race in between can defeat.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any, Iterator

import fsspec
from etils import epath

from albert_jax import errors
from albert_jax import workdir as workdir_lib

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # another host's lock without a heartbeat for this long is stale
_BREAK_STALE_AFTER_S = 60.0  # a take-over that left its marker behind (killed mid-way) is abandoned


class WorkdirInUse(errors.StorageError):
    """Another live run holds WORKDIR."""


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    if fields[0] == "Z":  # a zombie has exited
        return -1
    return int(fields[19])


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _me() -> dict[str, Any]:
    pid = os.getpid()
    host, start, boot = socket.gethostname(), _proc_start(pid), _boot_id()
    return {"host": host, "pid": pid, "start": start, "boot_id": boot, "time": time.time()}


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether a lock written on this host still belongs to a running process."""
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return False  # written before a reboot
    pid = int(holder.get("pid", -1))
    if pid == os.getpid():
        return False  # our pid, before we took the lock: a previous incarnation (e.g. a restarted container)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    start = _proc_start(pid)
    if start == -1:
        return False
    return holder.get("start") is None or start is None or start == holder["start"]


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a run that is still writing its lock"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {since})"


def _create_object(path: epath.Path, text: str) -> bool:
    """Create a gs:// object holding `text` unless it exists (see the module docstring)."""
    fs, key = fsspec.core.url_to_fs(os.fspath(path))
    if fs.exists(key):
        return False
    try:
        with fs.open(key, "xb") as f:  # gcsfs: ifGenerationMatch=0, a 412 is FileExistsError
            f.write(text.encode())
    except FileExistsError:
        return False
    return path.read_text() == text  # without a precondition a racer may have written after us


class RunLock:
    """`WORKDIR/run.lock`, held from `acquire()` to `release()`."""

    def __init__(self, workdir: workdir_lib.PathLike):
        self.workdir = epath.Path(workdir)
        self.path = workdir_lib.path(workdir, workdir_lib.LOCK)
        self._url = workdir_lib.is_url(workdir)
        self._created_dir = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading --------------------------------------------------------------------------------

    def _read(self) -> tuple[dict[str, Any] | None, float, str]:
        """(holder, age of its last heartbeat in seconds, the file's text); holder None: no lock file."""
        try:
            text = self.path.read_text()
            age = time.time() - self._mtime(self.path)
        except FileNotFoundError:
            return None, 0.0, ""
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            holder = {}  # being written right now, or garbage
        return holder if isinstance(holder, dict) else {}, age, text

    def _mtime(self, path: epath.Path) -> float:
        return path.stat().mtime if self._url else os.stat(path).st_mtime  # epath's local stat is in seconds

    def _stale(self, holder: dict[str, Any], age: float) -> bool:
        if not holder:  # unreadable: give a writer a moment before calling it garbage
            return age > HEARTBEAT_S
        if holder.get("host") == socket.gethostname():
            return not _alive_here(holder)
        return age > STALE_AFTER_S

    # --- taking ---------------------------------------------------------------------------------

    def _create(self) -> bool:
        """Create the lock with its contents in one step (a hard link of a finished file), so another
        process never reads a lock that exists but is still empty."""
        if self._url:
            return _create_object(self.path, json.dumps(_me()))
        tmp = f"{self.path}.{os.getpid()}.new"
        try:
            with open(tmp, "w") as f:
                json.dump(_me(), f)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: exclusive create, then write
                return self._create_exclusive()
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)

    def _create_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(_me(), f)
                f.flush()
                os.fsync(f.fileno())
        except OSError:  # e.g. a full disk: leave no empty lock behind
            with contextlib.suppress(OSError):
                os.remove(self.path)
            raise
        return True

    def _take_over(self, stale_text: str) -> bool:
        """Replace the lock if it still holds `stale_text`; only one process at a time tries."""
        marker = self.path.with_name(self.path.name + ".takeover")
        if not self._create_marker(marker):
            with contextlib.suppress(OSError):
                if time.time() - self._mtime(marker) > _BREAK_STALE_AFTER_S:
                    marker.unlink()
            return False
        try:
            try:
                if self.path.read_text() != stale_text:
                    return False  # someone else took it meanwhile
            except FileNotFoundError:
                pass
            if self._url:
                self.path.write_text(json.dumps(_me()))  # an object write replaces it whole
                return True
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(_me(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return True
        finally:
            with contextlib.suppress(OSError):
                marker.unlink()

    def _create_marker(self, marker: epath.Path) -> bool:
        if self._url:
            return _create_object(marker, json.dumps(_me()))
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        return True

    def acquire(self) -> None:
        """Take the lock, or raise `WorkdirInUse` naming the live holder."""
        if not self.workdir.is_dir():
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._created_dir = not self._url  # a gs:// "directory" is only a name prefix
        holder = None
        for _ in range(5):
            if self._create():
                break
            holder, age, text = self._read()
            if holder is None:
                continue  # released between our attempts
            if not self._stale(holder, age):
                raise WorkdirInUse(
                    f"WORKDIR {self.workdir} is in use by another run: {describe(holder)}; wait for it to "
                    f"end or stop it, or use another WORKDIR (if that run is surely gone, delete {self.path})"
                )
            if self._take_over(text):
                log.warning("took over the stale lock %s of %s", self.path, describe(holder))
                break
        else:
            raise WorkdirInUse(f"WORKDIR {self.workdir} is in use by another run: {describe(holder)}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # a full or flaky disk must not kill the run from here
                if self._url:
                    self.path.write_text(self.path.read_text())
                else:
                    os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder, _, _ = self._read()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(OSError):
                self.path.unlink()
        if self._created_dir:  # a run refused before writing anything leaves no empty WORKDIR behind
            with contextlib.suppress(OSError):  # os.rmdir: epath's rmdir is a check, then rmtree
                os.rmdir(self.workdir)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def held(workdir: workdir_lib.PathLike) -> Iterator[RunLock]:
    """`with held(workdir):` the lock for the block."""
    lock = RunLock(workdir)
    with lock:
        yield lock
