"""Stop and save requests that every host acts on at the same step.

A stop (SIGTERM from a preemption or a scheduler, SIGINT from Ctrl-C) reaches one host, and a timed
checkpoint (`checkpoint_every_minutes`) is due by one host's clock, but every step and every orbax
save is collective: a host that stops stepping while the others go on hangs the pod. So each request
becomes one agreed step, and at that step every host saves and, for a stop, leaves the loop.

`StepAgreement.poll(step)` is called by every host at every step boundary, after the loop has read the
previous step's metrics. With one process a request takes effect at once. With several, they agree
through the key-value store of the coordination service that `jax.distributed.initialize` starts: the
first host to act writes the step `its step + MARGIN` under `stop` (first writer wins) or, for timed
saves decided by process 0, under `save/<n>`; every host lists the store at every poll.

Why MARGIN = 2 is enough: step k-1 finishes only when every host has dispatched it, and each host reads
step k-1's metrics before it polls at k. So while a host r writes at its poll c, no host can have
polled past c + 1 (that would need r to have dispatched c + 1), and every host's next poll, at c + 2
at the latest, sees the request: all of them are still at or before the agreed step.

A second signal of either kind ends the process at once (the handlers before ours run). A host that
stopped on another's request keeps catching the first one after the loop (see `close`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import signal
import threading
import time
from typing import Callable

import jax
from orbax.checkpoint import multihost as ocp_multihost

log = logging.getLogger(__name__)

MARGIN = 2
_GENERATIONS = itertools.count()  # one key namespace per agreement (fine-tuning seeds run several fits)


@dataclasses.dataclass(frozen=True)
class Decision:
    save: bool = False  # a timed checkpoint is due at this step
    stop: bool = False  # save and leave the loop at this step


class _Signals:
    """SIGTERM and SIGINT set a flag the loop polls; a second one ends the process at once."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        del frame
        if self.received is not None:  # asked twice: do what the signal did before us
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            # None: a handler installed outside Python (e.g. the runtime's preemption notifier).
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}


class StepAgreement:
    """Decides, identically on every host, at which step to save (timed) and to stop."""

    def __init__(self, checkpoint_every_minutes: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self._signals = _Signals()
        self._interval_s = 60.0 * checkpoint_every_minutes if checkpoint_every_minutes > 0 else None
        self._clock = clock
        self._last_save = clock()
        self._client = ocp_multihost.get_jax_distributed_client() if jax.process_count() > 1 else None
        self._prefix = f"albert_jax/steps/{next(_GENERATIONS)}/"
        self._stop_at: int | None = None
        self._saves_at: set[int] = set()
        self._proposed_stop = False
        self._proposed_saves = 0
        self.reason = ""

    @property
    def stopping(self) -> bool:
        """A stop was requested here or agreed by the hosts."""
        return self._signals.received is not None or self._stop_at is not None

    def saved(self) -> None:
        """A checkpoint was written (any kind): the timed interval starts again."""
        self._last_save = self._clock()

    def _save_due(self) -> bool:
        return self._interval_s is not None and self._clock() - self._last_save >= self._interval_s

    def poll(self, step: int) -> Decision:
        """What every host does at `step` (call it once per step, on every host, in the same order)."""
        if self._client is None:
            if self._signals.received and not self.reason:
                self.reason = self._signals.received
            return Decision(save=self._save_due(), stop=self._signals.received is not None)
        if self._signals.received and not self._proposed_stop:
            self._proposed_stop = True
            self._propose("stop", step + MARGIN, first_wins=True)
            self.reason = f"{self._signals.received} on process {jax.process_index()}"
        if jax.process_index() == 0 and self._save_due() and len(self._saves_at) == 0:
            self._propose(f"save/{self._proposed_saves}", step + MARGIN)
            self._proposed_saves += 1
        for key, value in self._client.key_value_dir_get(self._prefix):
            at = int(value)
            if key.rsplit("/", 1)[-1] == "stop":
                if self._stop_at is None and not self.reason:
                    self.reason = "a stop requested on another process"
                self._stop_at = at
            elif at >= step:
                self._saves_at.add(at)
        if self._stop_at is not None and self._stop_at < step:
            raise RuntimeError(f"the hosts agreed to stop at step {self._stop_at}, but this one is at {step}")
        save = step in self._saves_at
        self._saves_at.discard(step)
        self._saves_at = {s for s in self._saves_at if s > step}
        return Decision(save=save, stop=self._stop_at == step)

    def _propose(self, name: str, step: int, first_wins: bool = False) -> None:
        try:
            self._client.key_value_set(self._prefix + name, str(step))
        except Exception:  # ALREADY_EXISTS: another host asked first, and its step stands
            if not first_wins:
                raise

    def close(self) -> None:
        """Gives the signals back, except after a stop agreed on another host's request: on a pod each
        host gets its own SIGTERM at its own time, and this host's may come only while it exits. That
        stop is served, so the signal is caught and ignored (a second one still ends the process)."""
        if self._stop_at is not None and self._signals.received is None:
            return
        self._signals.restore()
