"""Multi-host fine-tuning: two local processes joined by `jax.distributed.initialize`, 4 CPU devices each.

Pretraining on two processes (against one, preempted, resumed on another host count) is in test_pod.py.
"""

import os
import socket
import subprocess

import pytest
from test_pretrain import REPO, read_metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(args: list[str]) -> None:
    """`args` as processes 0 and 1 of one jax.distributed job, 4 CPU devices each; both must succeed."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [
        subprocess.Popen(
            args + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_two_processes_fine_tune_like_one(tmp_path):
    """Fine-tuning on two processes: the same losses, the same metrics and one prediction per dev row
    (3 dev rows and 2 test rows, each a padded eval batch split over both processes)."""
    from test_finetune import FIXTURES, _cli, make_hf_dir

    init = make_hf_dir(tmp_path / "hf")
    data_dir = os.path.join(FIXTURES, "glue")
    overrides = dict(total_steps=4, eval_every=2, checkpoint_every=2, batch_size=8, eval_batch_size=8)
    single = str(tmp_path / "single")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    subprocess.run(
        _cli(single, init, data_dir, **overrides), cwd=REPO, env=env, check=True, capture_output=True
    )

    multi = str(tmp_path / "multi")
    _run_two_processes(_cli(multi, init, data_dir, **overrides))
    a = [m for m in read_metrics(single) if "train/loss" in m]
    b = [m for m in read_metrics(multi) if "train/loss" in m]
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert y["train/loss"] == pytest.approx(x["train/loss"], rel=2e-4), x["step"]
    for name in ("eval_results.json", "best.json"):
        assert open(os.path.join(multi, name)).read() == open(os.path.join(single, name)).read()
    for name, split in (("dev.tsv", "dev"), ("test.tsv", "test"), ("RTE.tsv", "test")):
        rows = open(os.path.join(multi, "predictions", name)).read()
        assert rows == open(os.path.join(single, "predictions", name)).read()
        source = open(os.path.join(data_dir, "RTE", f"{split}.tsv")).read().splitlines()
        assert len(rows.splitlines()) == len(source)  # a header and one prediction per row
