"""Faults a days-long run meets: damaged checkpoints, changed configs, a second run, a full disk.

Each one ends either in an exact resume or in one `error:` line that leaves WORKDIR as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_pretrain import REPO, _snapshot, _wait_for_step, cli_args, read_metrics, small_config

from albert_jax import cli, config_drift, run_lock
from albert_jax.checkpoint import COMMIT_MARKER, Checkpointer, CheckpointError
from albert_jax.training import finetune, pretrain, trainer
from configs import glue as glue_configs
from configs import pretrain as pretrain_configs

# Checkpoints at 4, 8 and 12 (orbax also saves step 1; keep 3 rotates it out).
RUN = dict(
    total_steps=12,
    warmup_steps=2,
    log_every=1,
    eval_every=0,
    checkpoint_every=4,
    keep_checkpoints=3,
    eval_steps=1,
)


# After a failed read or write, tensorstore's late callbacks find orbax's event loop closed and report
# it as unraisable (harmless; the CLI hides it, see cli._unraisable).
tensorstore_noise = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _losses(workdir):
    return {m["step"]: m for m in read_metrics(workdir) if "train/loss" in m}


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-step pretraining run; tests copy it, or rerun on it where nothing changes."""
    tmp = tmp_path_factory.mktemp("reference")
    workdir = str(tmp / "run")
    pretrain.run(small_config(**RUN), workdir)
    return tmp, workdir


def _shared(reference) -> dict:
    """A new run's settings that reuse the reference's vocabulary and token cache (no training them again)."""
    return {**RUN, "data.tokenizer": os.path.join(reference[1], "spiece.model")}


def _copy(reference, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[1], workdir)
    return workdir


# --- damaged checkpoints ------------------------------------------------------------------------------


def _damage(step_dir: str, how: str) -> None:
    if how == "truncated arrays":
        arrays = [os.path.join(r, f) for r, _, files in os.walk(step_dir) if r.endswith("/d") for f in files]
        assert arrays
        for path in arrays:
            os.truncate(path, os.path.getsize(path) // 2)
    else:  # the save never finished
        os.remove(os.path.join(step_dir, COMMIT_MARKER))


@tensorstore_noise
@pytest.mark.parametrize("how", ["truncated arrays", "no commit marker"])
def test_damaged_latest_checkpoint_falls_back_and_resumes_exactly(reference, tmp_path, caplog, how):
    workdir = _copy(reference, tmp_path)
    checkpoints = os.path.join(workdir, "checkpoints")
    _damage(os.path.join(checkpoints, "12"), how)
    with caplog.at_level(logging.WARNING, logger="albert_jax.checkpoint"):
        pretrain.run(small_config(**RUN), workdir)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "checkpoint 12" in warning and "resuming from step 8" in warning, warning
    assert ("incomplete" if how == "no commit marker" else "byte range") in warning, warning
    assert {"bad-12", "8", "12"} <= set(os.listdir(checkpoints))  # set aside, and saved afresh
    ref, got = _losses(reference[1]), _losses(workdir)
    assert sorted(got) == sorted(ref) == list(range(1, 13))
    for step in range(9, 13):
        for key in ("train/loss", "train/mlm_loss", "train/sop_loss", "train/grad_norm"):
            assert got[step][key] == ref[step][key], (step, key)


def test_fallback_through_the_cli_is_one_warning_and_no_traceback(reference, tmp_path):
    """What a user sees when the latest checkpoint is damaged: one warning line for it, nothing else."""
    workdir = _copy(reference, tmp_path)
    _damage(os.path.join(workdir, "checkpoints", "12"), "truncated arrays")
    proc = subprocess.run(cli_args(workdir, **RUN), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "is unusable" in line]
    assert len(warnings) == 1 and "checkpoint 12 " in warnings[0] and "resuming from step 8" in warnings[0]


class _Flaky:
    """Makes the first `failures` restores raise a storage error as tensorstore reports a 503."""

    def __init__(self, real, failures: int):
        self.real, self.failures, self.calls = real, failures, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise ValueError(
                'UNAVAILABLE: Error reading "checkpoints/12/state/manifest.ocdbt": HTTP response code: 503 '
                "with body: Service Unavailable"
            )
        return self.real(*args, **kwargs)


@pytest.fixture
def fast_retries(monkeypatch):
    from albert_jax import storage

    monkeypatch.setattr(storage, "POLICY", storage.RetryPolicy(attempts=4, initial_s=0.01, max_s=0.02))


def test_transient_storage_errors_are_retried_and_set_nothing_aside(
    reference, tmp_path, fast_retries, monkeypatch
):
    workdir = _copy(reference, tmp_path)
    flaky = _Flaky(Checkpointer.restore, failures=3)
    monkeypatch.setattr(Checkpointer, "restore", lambda self, *a, **k: flaky(self, *a, **k))
    pretrain.run(small_config(**{**RUN, "total_steps": 14}), workdir)
    assert flaky.calls == 4  # three 503s, then the restore of step 12
    assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.startswith("bad-")]
    assert sorted(_losses(workdir)) == list(range(1, 15))


@tensorstore_noise
def test_storage_errors_that_persist_stop_with_one_line_and_set_nothing_aside(
    reference, tmp_path, fast_retries, monkeypatch
):
    workdir = _copy(reference, tmp_path)
    checkpoints, metrics = os.path.join(workdir, "checkpoints"), os.path.join(workdir, "metrics.jsonl")
    before = _snapshot(checkpoints), open(metrics).read()
    flaky = _Flaky(Checkpointer.restore, failures=100)
    monkeypatch.setattr(Checkpointer, "restore", lambda self, *a, **k: flaky(self, *a, **k))
    with pytest.raises(CheckpointError) as err:
        pretrain.run(small_config(**{**RUN, "total_steps": 14}), workdir)
    message = cli.one_line(err.value)
    assert "checkpoint 12" in message and "storage error" in message and "nothing was set aside" in message
    assert "move them away" not in message  # never a suggestion to throw good checkpoints away
    assert flaky.calls == 4
    assert (_snapshot(checkpoints), open(metrics).read()) == before


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.json"])
def test_a_run_file_torn_by_a_crash_is_dropped_with_a_warning_and_the_run_resumes(
    reference, tmp_path, caplog, name
):
    workdir = _copy(reference, tmp_path)
    path = os.path.join(workdir, name)
    text = open(path).read()
    torn = (
        text + '{"step": 13, "train/loss": 5.1, "train/mlm_lo'
        if name == "metrics.jsonl"
        else text[: len(text) // 2]
    )
    with open(path, "w") as f:
        f.write(torn)
    with caplog.at_level(logging.WARNING):
        pretrain.run(small_config(**{**RUN, "total_steps": 14}), workdir)
    assert any(name in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records), caplog.text
    assert sorted(_losses(workdir)) == list(range(1, 15))
    ref = _losses(reference[1])
    assert all(_losses(workdir)[s]["train/loss"] == ref[s]["train/loss"] for s in ref)
    json.load(open(os.path.join(workdir, "config.json")))  # rewritten whole


@tensorstore_noise
def test_no_checkpoint_restores_is_one_line_and_starts_nothing(reference, tmp_path):
    workdir = _copy(reference, tmp_path)
    for step in ("4", "8", "12"):
        _damage(os.path.join(workdir, "checkpoints", step), "truncated arrays")
    before = _snapshot(workdir)
    with pytest.raises(CheckpointError) as err:
        pretrain.run(small_config(**RUN), workdir)
    message = cli.one_line(err.value)
    assert message == str(err.value) and "no checkpoint in" in message and "step 4:" in message
    assert _snapshot(workdir) == before  # nothing moved aside, metrics not truncated, no lock left


# --- config drift ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value",
    [
        ("model.hidden_size", 32),
        ("data.masked_lm_prob", 0.2),
        ("seq_len", 32),
        ("optimizer", "adamw"),
        ("learning_rate", 0.02),
        ("seed", 1),
    ],
)
def test_refused_change_names_the_key_on_one_line(reference, key, value):
    tmp, workdir = reference
    before = _snapshot(workdir)
    with pytest.raises(config_drift.ConfigDriftError) as err:
        pretrain.run(small_config(**{**RUN, key: value}), workdir)
    message = cli.one_line(err.value)
    assert message == str(err.value)
    old = json.dumps(_saved(workdir, key))
    assert f"{key} {old} → {json.dumps(value)}" in message, message
    assert "allow_config_change" in message and "new WORKDIR" in message
    assert _snapshot(workdir) == before


def _saved(workdir, key):
    node = json.load(open(os.path.join(workdir, "config.json")))
    for part in key.split("."):
        node = node[part]
    return node


def test_refusal_through_the_cli_is_one_error_line(reference):
    tmp, workdir = reference
    before = _snapshot(workdir)
    proc = subprocess.run(
        cli_args(workdir, **{**RUN, "model.hidden_size": 32}), cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert _errors(proc.stderr) == [
        f"error: WORKDIR {workdir} holds a run with a different config: model.hidden_size 64 → 32. "
        "Rerun with the settings in its config.json, use a new WORKDIR, or pass "
        "--config.allow_config_change=true to resume anyway"
    ]
    assert _snapshot(workdir) == before


def test_allowed_warned_and_overridden_changes_resume(reference, tmp_path, caplog):
    workdir = _copy(reference, tmp_path)
    changed = dict(
        RUN, total_steps=14, eval_every=7, batch_size=8, learning_rate=0.02, allow_config_change=True
    )
    with caplog.at_level(logging.INFO, logger="albert_jax.config_drift"):
        pretrain.run(small_config(**changed), workdir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert any("batch_size 16 → 8" in w and "no longer matches" in w for w in warnings), warnings
    override = [w for w in warnings if w.startswith("allow_config_change=true")]
    assert len(override) == 1 and "learning_rate 0.01 → 0.02" in override[0], warnings
    infos = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert "total_steps 12 → 14" in infos and "eval_every 0 → 7" in infos
    assert sorted(_losses(workdir))[-3:] == [12, 13, 14]
    assert json.load(open(os.path.join(workdir, "config.json")))["batch_size"] == 8  # the new baseline


@pytest.mark.parametrize(
    "key,action",
    [
        ("model.hidden_size", "refuse"),  # groups
        ("data.masked_lm_prob", "refuse"),
        ("mesh.fsdp", "warn"),
        ("model.remat_policy", "allow"),  # exceptions inside a group
        ("model.fused_kernels", "allow"),
        ("data.cache_dir", "allow"),
        ("data.prepared", "warn"),
        ("total_steps", "allow"),
        ("eval_every", "allow"),
        ("checkpoint_every_minutes", "allow"),
        ("compilation_cache_dir", "allow"),  # where, not what
        ("batch_size", "warn"),
        ("seed", "refuse"),  # what is not an exception is what the checkpoint was trained with
        ("learning_rate", "refuse"),
        ("a_key_added_next_year", "refuse"),
    ],
)
def test_keys_are_classified_by_group_with_explicit_exceptions(key, action):
    assert config_drift.rule(key)[1] == action


def test_a_workdir_from_before_a_key_existed_resumes(reference, tmp_path, caplog):
    """An old run's config.json lacks keys added since: that version's default is today's, so the run
    resumes when the key holds today's default and refuses a REFUSE key set to something else."""
    workdir = _copy(reference, tmp_path)
    path = os.path.join(workdir, "config.json")
    saved = json.load(open(path))
    del saved["checkpoint_every_minutes"], saved["data"]["dynamic_masking"]  # "before they existed"
    open(path, "w").write(json.dumps(saved))
    defaults = pretrain_configs.get_config("tiny")  # what cli.config_defaults() gives the entry point
    before = _snapshot(workdir)
    changed = small_config(**{**RUN, "data.dynamic_masking": False})  # not today's default
    with pytest.raises(config_drift.ConfigDriftError, match=r"data.dynamic_masking \(absent\) → false"):
        pretrain.run(changed, workdir, defaults=defaults)
    assert _snapshot(workdir) == before
    with caplog.at_level(logging.WARNING, logger="albert_jax.config_drift"):
        pretrain.run(small_config(**{**RUN, "total_steps": 14}), workdir, defaults=defaults)
    drift = [
        r for r in caplog.records if r.name == "albert_jax.config_drift" and r.levelno >= logging.WARNING
    ]
    assert not drift, caplog.text
    assert sorted(_losses(workdir))[-2:] == [13, 14]
    assert "checkpoint_every_minutes" in json.load(open(path))  # the new baseline has every key


def test_a_workdir_from_before_the_original_recipe_is_refused():
    """Pretraining runs from before `data.sentence_objective` and `data.single_sentence_chunks` made
    their examples another way (per-chunk targets, no random-document B): no value of today's keys
    reproduces that, so their absence is a change, refused like any change of the data."""
    today = config_drift.as_plain(pretrain_configs.get_config("tiny"))
    old = json.loads(json.dumps(today))
    del old["data"]["sentence_objective"], old["data"]["single_sentence_chunks"]
    found = {c.key: c for c in config_drift.changes(old, today, today)}
    assert set(found) == {"data.sentence_objective", "data.single_sentence_chunks"}
    assert all(c.action == config_drift.REFUSE for c in found.values())
    assert "merge, from before the original's example construction" in str(
        found["data.single_sentence_chunks"]
    )
    # A fine-tuning config has neither key: nothing to compare.
    assert config_drift.changes({"task": "rte"}, {"task": "rte"}, {"task": "rte"}) == []


def test_a_library_resume_without_defaults_assumes_them_with_a_warning(reference, tmp_path, caplog):
    workdir = _copy(reference, tmp_path)
    path = os.path.join(workdir, "config.json")
    saved = json.load(open(path))
    del saved["checkpoint_every_minutes"]
    open(path, "w").write(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="albert_jax.config_drift"):
        pretrain.run(small_config(**{**RUN, "total_steps": 13}), workdir)
    assert "checkpoint_every_minutes (absent) → 0.0" in caplog.text and "predates" in caplog.text


# --- one run per WORKDIR --------------------------------------------------------------------------------


def test_lock_refuses_live_holders_and_takes_over_stale_ones(tmp_path):
    workdir = str(tmp_path / "run")
    path = os.path.join(workdir, "run.lock")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = {"host": socket.gethostname(), "pid": sleeper.pid, "start": run_lock._proc_start(sleeper.pid)}
        cases = {
            "live process here": (here, 0, True),
            "dead process here": ({**here, "pid": 2**22 + 12345}, 0, False),
            "reused pid here": ({**here, "start": 1}, 0, False),
            "other host, fresh heartbeat": ({**here, "host": "elsewhere"}, 0, True),
            "other host, no heartbeat": ({**here, "host": "elsewhere"}, run_lock.STALE_AFTER_S + 60, False),
        }
        for case, (holder, age, refused) in cases.items():
            os.makedirs(workdir, exist_ok=True)
            with open(path, "w") as f:
                json.dump({**holder, "time": time.time()}, f)
            os.utime(path, (time.time() - age, time.time() - age))
            if refused:
                with pytest.raises(run_lock.WorkdirInUse, match=f"pid {sleeper.pid} on "):
                    run_lock.RunLock(workdir).acquire()
                assert json.load(open(path))["pid"] == sleeper.pid, case
            else:
                with run_lock.held(workdir):
                    assert json.load(open(path))["pid"] == os.getpid(), case
                assert not os.path.exists(path), case  # released
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_runs_on_one_workdir_leave_one_and_sigkill_does_not_block_the_rerun(reference, tmp_path):
    workdir = str(tmp_path / "run")
    args = cli_args(workdir, **{**_shared(reference), "total_steps": 300, "checkpoint_every": 2})
    pipe = subprocess.PIPE
    procs = [subprocess.Popen(args, cwd=REPO, stdout=pipe, stderr=pipe, text=True) for _ in range(2)]
    try:
        deadline = time.time() + 240
        while all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.2)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        err = loser.stderr.read()
        assert loser.returncode == 1 and "Traceback" not in err, err[-3000:]
        assert len(_errors(err)) == 1, err[-3000:]
        assert f"error: WORKDIR {workdir} is in use by another run: pid {winner.pid} on " in err
        assert winner.poll() is None  # still running
        _wait_for_step(workdir, 3, winner)
        winner.send_signal(signal.SIGKILL)
        winner.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rerun = subprocess.run(
        cli_args(workdir, **{**_shared(reference), "total_steps": 6, "checkpoint_every": 2}),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "took over the stale lock" in rerun.stderr and "resumed from step" in rerun.stderr
    assert not os.path.exists(os.path.join(workdir, "run.lock"))


# --- a full disk ------------------------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path):
    """A 12 MB tmpfs (needs root, as in CI containers)."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(directory: str, leave: int) -> str:
    filler = os.path.join(directory, "filler")
    st = os.statvfs(directory)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))
    return filler


@tensorstore_noise
def test_disk_full_during_save_is_one_line_and_a_rerun_resumes(reference, small_filesystem):
    workdir = os.path.join(small_filesystem, "run")
    run = dict(_shared(reference), total_steps=4, checkpoint_every=2, keep_checkpoints=10)
    pretrain.run(small_config(**run), workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    saved = sorted(int(s) for s in os.listdir(checkpoints) if s.isdigit())
    filler = _fill(small_filesystem, leave=400_000)  # room for logs, not for a ~1 MB checkpoint

    args = cli_args(workdir, **{**run, "total_steps": 8})
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = _errors(proc.stderr)
    assert len(errors) == 1 and "No space left on device" in errors[0], proc.stderr[-3000:]
    assert sorted(int(s) for s in os.listdir(checkpoints) if s.isdigit()) == saved  # nothing earlier lost
    assert not os.path.exists(os.path.join(workdir, "run.lock"))

    os.remove(filler)
    pretrain.run(small_config(**{**run, "total_steps": 8}), workdir)
    assert sorted(_losses(workdir)) == list(range(1, 9))
    assert "8" in os.listdir(checkpoints)
    assert not [n for n in os.listdir(checkpoints) if "tmp" in n]  # the failed save's leftovers are gone


def test_synchronous_checkpointing_saves_the_same_run(reference, tmp_path, monkeypatch):
    made = []
    real = trainer.Checkpointer

    def spy(*args, **kwargs):
        made.append(kwargs.get("async_save", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "Checkpointer", spy)
    workdir = str(tmp_path / "run")
    pretrain.run(small_config(**_shared(reference), async_checkpointing=False), workdir)
    assert made == [False]
    assert {k: m["train/loss"] for k, m in _losses(workdir).items()} == {
        k: m["train/loss"] for k, m in _losses(reference[1]).items()
    }
    dirs = [os.path.join(w, "checkpoints") for w in (workdir, reference[1])]
    assert sorted(os.listdir(dirs[0])) == sorted(os.listdir(dirs[1]))
    ours, theirs = (Checkpointer(d, every=1, keep=1) for d in dirs)
    try:
        for a, b in zip(jax.tree.leaves(ours.restore_params()), jax.tree.leaves(theirs.restore_params())):
            np.testing.assert_array_equal(a, b)
    finally:
        ours.close()
        theirs.close()


# --- fine-tuning shares all of it -------------------------------------------------------------------------


def test_finetuning_refuses_drift_and_falls_back_from_a_damaged_checkpoint(tmp_path, caplog):
    from test_finetune import FIXTURES, make_hf_dir, small

    hf_dir = make_hf_dir(tmp_path / "hf")
    workdir = str(tmp_path / "run")

    def config(**overrides):
        data_dir = os.path.join(FIXTURES, "glue")
        return small(glue_configs.get_config("task=rte"), init_from=hf_dir, data_dir=data_dir, **overrides)

    finetune.run(config(), workdir)  # checkpoints at 3 and 6
    before = _snapshot(workdir)
    for key, value in (("learning_rate", 0.01), ("dropout", 0.2), ("max_seq_length", 128)):
        with pytest.raises(config_drift.ConfigDriftError, match=f"{key} "):
            finetune.run(config(**{key: value}), workdir)
    assert _snapshot(workdir) == before

    os.remove(os.path.join(workdir, "checkpoints", "6", COMMIT_MARKER))
    with caplog.at_level(logging.WARNING):
        summary = finetune.run(config(total_steps=7, eval_every=7), workdir)
    assert "checkpoint 6" in caplog.text and "resuming from step 3" in caplog.text
    assert summary["last"]["step"] == 7
    assert "bad-6" in os.listdir(os.path.join(workdir, "checkpoints"))


def test_gs_path_without_gcsfs_is_one_error_line():
    # gcsfs is an optional extra ([gcs]); None in sys.modules makes its import fail as if absent.
    code = (
        "import runpy, sys; sys.modules['gcsfs'] = None; "
        "sys.argv = ['pretrain.py', '--config=configs/pretrain.py:tiny', '--workdir=gs://bucket/run']; "
        "runpy.run_path('pretrain.py', run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    [error] = _errors(proc.stderr)
    assert error.startswith("error: gs:// paths need gcsfs: pip install 'albert_jax[gcs]'"), error
