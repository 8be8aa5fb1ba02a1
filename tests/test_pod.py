"""Pod runs survive the pod: preemption agreed and exact on every host, checkpoints that move between
topologies and host counts. Real command lines: one process with 8 CPU devices, or two processes with
4 each joined by `jax.distributed` (the same data=2 x fsdp=4 mesh). Every subprocess has a timeout, so a
hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from test_pretrain import REPO, cli_args, read_metrics

# Long enough that a signal sent a few steps in arrives well before the end; checkpoints only where
# the run stops (and orbax's save of the first step).
RUN = dict(
    total_steps=40,
    warmup_steps=2,
    log_every=1,
    eval_every=0,
    checkpoint_every=1000,
    keep_checkpoints=3,
    **{"mesh.data": 2, "mesh.fsdp": 4},
)
TIMEOUT = 300
KEYS = ("train/loss", "train/mlm_loss", "train/sop_loss", "train/grad_norm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], processes: int, log_dir) -> list[subprocess.Popen]:
    """`args` as one process with 8 CPU devices, or as `processes` processes of one jax.distributed job
    (8 devices in all); their output goes to files in `log_dir` (a pipe nobody reads would block them)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
    extra = [[]]
    if processes > 1:
        port = _free_port()
        extra = [
            [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={i}"]
            for i in range(processes)
        ]
    procs = []
    for i, more in enumerate(extra):
        out = open(os.path.join(log_dir, f"process_{i}.log"), "w")
        procs.append(subprocess.Popen(args + more, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
        procs[-1].log = out.name
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[str]:
    """Waits for every process (killing all of them past `timeout`); returns their logs; each must exit 0."""
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        logs = [open(p.log).read()[-2000:] for p in procs]
        raise AssertionError(f"hung: still running after {timeout} s; logs: {logs}") from None
    logs = [open(p.log).read() for p in procs]
    for p, text in zip(procs, logs):
        assert p.returncode == 0, text[-3000:]
    return logs


def run(workdir: str, tmp_path, processes: int, **overrides) -> list[str]:
    log_dir = tmp_path / f"logs-{os.path.basename(workdir)}-{processes}-{time.time_ns()}"
    log_dir.mkdir()
    return _finish(_start(cli_args(workdir, **{**RUN, **overrides}), processes, log_dir))


def _losses(workdir: str) -> dict[int, dict]:
    return {m["step"]: m for m in read_metrics(workdir) if "train/loss" in m}


def _steps(workdir: str) -> list[int]:
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def _wait_for_step(workdir: str, step: int, procs, timeout: float = TIMEOUT) -> None:
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"run ended early: {[open(p.log).read()[-2000:] for p in procs]}")
        if os.path.exists(path):
            lines = [line for line in open(path).read().splitlines() if line.endswith("}")]
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the run")


def preempt(workdir: str, tmp_path, processes: int, signalled: tuple[int, ...], stagger: float = 0.0) -> int:
    """Starts the run, SIGTERMs the processes in `signalled` (`stagger` seconds apart) once step 3 is
    logged, and checks that every process saved the same step and exited 0; returns that step."""
    log_dir = tmp_path / f"logs-preempted-{processes}-{time.time_ns()}"
    log_dir.mkdir()
    procs = _start(cli_args(workdir, **RUN), processes, log_dir)
    try:
        _wait_for_step(workdir, 3, procs)
        for k, i in enumerate(signalled):
            if k:
                time.sleep(stagger)
            procs[i].send_signal(signal.SIGTERM)
        logs = _finish(procs, timeout=120)
    finally:
        for p in procs:
            p.kill()
    saved = [s for s in _steps(workdir) if s > 1]
    assert len(saved) == 1 and 3 <= saved[0] < RUN["total_steps"], (saved, logs)
    stopped = [line for text in logs for line in text.splitlines() if "stop requested" in line]
    assert len(stopped) == processes and all(f"saved step {saved[0]} " in line for line in stopped), stopped
    data = os.listdir(os.path.join(workdir, "checkpoints", str(saved[0]), "data"))
    assert sorted(f for f in data if f.endswith(".json")) == [
        f"process_{i}-of-{processes}.json" for i in range(processes)
    ]
    # The data position is the number of batches consumed: a step-k checkpoint says k.
    for name in data:
        if name.endswith(".json"):
            state = json.load(open(os.path.join(workdir, "checkpoints", str(saved[0]), "data", name)))
            assert state["next_index"] == saved[0], state
    return saved[0]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs: one process (8 devices) and two processes (4 + 4), the same mesh. The
    two-process run also saves every 0.1 s of process 0's clock (`checkpoint_every_minutes`)."""
    tmp = tmp_path_factory.mktemp("pod")
    out = {1: str(tmp / "reference-1"), 2: str(tmp / "reference-2")}
    run(out[1], tmp, 1)
    run(out[2], tmp, 2, checkpoint_every_minutes=0.1 / 60)
    return tmp, out


def assert_same_losses(workdir: str, reference: str, exact: bool = True) -> None:
    ref, got = _losses(reference), _losses(workdir)
    assert sorted(got) == sorted(ref) == list(range(1, RUN["total_steps"] + 1))
    for step in ref:
        for key in KEYS:
            if exact:
                assert got[step][key] == ref[step][key], (step, key, got[step][key], ref[step][key])
            else:  # another process count sums the same numbers in another order
                assert got[step][key] == pytest.approx(ref[step][key], rel=1e-5), (step, key)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_preempted_run_resumes_bit_for_bit_and_on_another_host_count(references, tmp_path, processes):
    """SIGTERM to one host: every host saves the same step and exits 0. The rerun on the same host count
    reproduces every loss of the uninterrupted run bit for bit; the same checkpoint resumed on the other
    host count (1 -> 2, 2 -> 1) continues the same data order."""
    tmp, refs = references
    workdir = str(tmp_path / "preempted")
    stop = preempt(workdir, tmp, processes, signalled=(processes - 1,))
    moved = str(tmp_path / "moved")
    shutil.copytree(workdir, moved)

    run(workdir, tmp, processes)
    assert_same_losses(workdir, refs[processes])

    other = 3 - processes
    logs = run(moved, tmp, other)
    assert f"resumed from step {stop}" in logs[0], logs[0][-3000:]
    assert_same_losses(moved, refs[other], exact=False)


@pytest.mark.slow
def test_damage_on_one_host_only_falls_back_on_both_without_a_hang(references, tmp_path):
    """The newest checkpoint's shard files written by process 1 are cut in half: both processes judge it
    unusable, fall back to the one before and reproduce the uninterrupted run (under a timeout)."""
    tmp, refs = references
    workdir = str(tmp_path / "damaged")
    shutil.copytree(refs[2], workdir)
    latest, previous = _steps(workdir)[-1], _steps(workdir)[-2]
    shards = os.path.join(workdir, "checkpoints", str(latest), "state", "ocdbt.process_1", "d")
    assert os.listdir(shards)
    for name in os.listdir(shards):
        os.truncate(os.path.join(shards, name), os.path.getsize(os.path.join(shards, name)) // 2)
    logs = run(workdir, tmp, 2, checkpoint_every_minutes=0.1 / 60)
    for text in logs:
        unusable = [line for line in text.splitlines() if "is unusable" in line]
        assert len(unusable) == 1 and f"checkpoint {latest} " in unusable[0], unusable
        assert f"resuming from step {previous}" in unusable[0], unusable
        assert "Traceback" not in text
    assert_same_losses(workdir, refs[2])


@pytest.mark.slow
def test_sigterm_to_both_hosts_staggered_stops_once_at_one_step(references, tmp_path):
    tmp, refs = references
    workdir = str(tmp_path / "staggered")
    stop = preempt(workdir, tmp, 2, signalled=(1, 0), stagger=1.0)
    ref, got = _losses(refs[2]), _losses(workdir)
    assert sorted(got) == list(range(1, stop + 1))
    for step in got:
        for key in KEYS:
            assert got[step][key] == ref[step][key], (step, key)


def test_second_signal_ends_the_process_at_once(tmp_path):
    """The first SIGTERM asks for an agreed stop; a second one is not swallowed."""
    code = (
        "import os, signal, time\n"
        "from albert_jax.training import preemption\n"
        "agreement = preemption.StepAgreement()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "assert agreement.poll(1).stop\n"
        "print('first signal: stop requested', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "first signal: stop requested" in proc.stdout, proc.stderr
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stderr)


def test_host_stopped_by_another_catches_its_own_late_signal(tmp_path):
    """A host that stopped at the step another host asked for gets its own SIGTERM only later, maybe
    while it exits: that one is caught (the stop is served), and a second one still ends the process."""
    code = (
        "import os, signal, time\n"
        "from albert_jax.training import preemption\n"
        "class Store:  # the coordination service's key-value store: another host asked to stop at 2\n"
        "    def key_value_dir_get(self, prefix): return [(prefix + 'stop', '2')]\n"
        "agreement = preemption.StepAgreement()\n"
        "agreement._client = Store()\n"
        "assert not agreement.poll(1).stop and agreement.poll(2).stop\n"
        "agreement.close()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('late signal caught', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "late signal caught" in proc.stdout, proc.stderr
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stderr)


def test_timed_saves_come_from_one_clock():
    """`checkpoint_every_minutes` on one process: due once the interval has passed since the last save."""
    from albert_jax.training import preemption

    now = [0.0]
    agreement = preemption.StepAgreement(checkpoint_every_minutes=1.0, clock=lambda: now[0])
    try:
        assert not agreement.poll(1).save
        now[0] = 59.0
        assert not agreement.poll(2).save
        now[0] = 61.0
        assert agreement.poll(3).save
        agreement.saved()
        assert not agreement.poll(4).save
        now[0] = 122.0
        assert agreement.poll(5).save and not agreement.poll(5).stop
    finally:
        agreement.close()
    off = preemption.StepAgreement()
    try:
        now[0] = 1e9
        assert not off.poll(1).save
    finally:
        off.close()


@pytest.mark.slow
def test_two_processes_match_one_and_agree_on_timed_checkpoints(references):
    """Two processes give one process's losses and held-out metrics (summed in another order), and the timed checkpoints of
    the two-process run were taken by both at the same steps (one data position each); those saves
    change no loss (the preemption test compares runs without them against this one, bit for bit)."""
    _, refs = references
    assert_same_losses(refs[2], refs[1], exact=False)
    # Held-out metrics are over every host's rows: the baselines (counted on the host) equal exactly.
    evals = [[m for m in read_metrics(w) if "eval/mlm_accuracy" in m] for w in (refs[1], refs[2])]
    assert [m["step"] for m in evals[0]] == [m["step"] for m in evals[1]] == [RUN["total_steps"]]
    for key in ("eval/mlm_majority_accuracy", "eval/mlm_replaced_majority_accuracy"):
        assert evals[1][0][key] == evals[0][0][key], key
    for key in ("eval/mlm_accuracy", "eval/sop_accuracy", "eval/mlm_loss"):
        assert evals[1][0][key] == pytest.approx(evals[0][0][key], rel=1e-5), key
    saved = _steps(refs[2])
    assert saved[-1] == RUN["total_steps"] and len(saved) == RUN["keep_checkpoints"], saved
    assert saved[0] > 1 and any(step % RUN["checkpoint_every"] for step in saved[:-1]), (
        saved
    )  # not the interval
    for step in saved:
        data = sorted(os.listdir(os.path.join(refs[2], "checkpoints", str(step), "data")))
        assert [f for f in data if f.endswith(".json")] == ["process_0-of-2.json", "process_1-of-2.json"]


def _hf_outputs(directory: str, ids: np.ndarray):
    import torch
    from transformers import AlbertForPreTraining

    model = AlbertForPreTraining.from_pretrained(directory).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids))
    return out.prediction_logits.numpy(), out.sop_logits.numpy()


def _export_on_one_device(workdir: str, out: str) -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    command = [sys.executable, "-m", "albert_jax.export", workdir, out]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_pod_checkpoints_export_and_fine_tune_on_one_device(references, tmp_path):
    """Runs on the 8-device data x fsdp mesh (one process, and two) are exported on one device;
    transformers loads each export and gives our outputs for the run's last parameters. Fine-tuning
    starts from the one-process run on one device."""
    import jax
    from test_finetune import FIXTURES
    from test_finetune import _cli as finetune_cli

    from albert_jax import from_pretrained
    from albert_jax.checkpoint import Checkpointer
    from albert_jax.modeling import AlbertForPreTraining

    tmp, refs = references
    ids = np.random.default_rng(0).integers(5, 1000, (2, 16))
    for processes, workdir in refs.items():
        out = str(tmp_path / f"hf-{processes}")
        _export_on_one_device(workdir, out)
        hf_mlm, hf_sop = _hf_outputs(out, ids)
        model, params = from_pretrained(out, AlbertForPreTraining)
        ours = model.apply({"params": params}, jax.numpy.asarray(ids), deterministic=True)
        np.testing.assert_allclose(np.asarray(ours.prediction_logits), hf_mlm, atol=1e-4)
        np.testing.assert_allclose(np.asarray(ours.sop_logits), hf_sop, atol=1e-4)
        saved = Checkpointer(
            os.path.join(workdir, "checkpoints")
        ).restore_params()  # host arrays, any topology
        np.testing.assert_array_equal(
            np.asarray(params["albert"]["embeddings"]["word_embeddings"]["embedding"]),
            saved["albert"]["embeddings"]["word_embeddings"]["embedding"],
        )
        # A notebook loads the WORKDIR itself (here on this process's single device).
        _, from_run = from_pretrained(workdir, AlbertForPreTraining)
        for a, b in zip(jax.tree.leaves(from_run), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    finetuned = str(tmp_path / "rte")
    args = finetune_cli(finetuned, refs[1], os.path.join(FIXTURES, "glue"), total_steps=2, eval_every=2)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(os.path.join(finetuned, "summary.json")))["last"]["step"] == 2
