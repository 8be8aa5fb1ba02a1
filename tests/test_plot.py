"""`python -m albert_jax.plot`: PNG curves from synthetic metrics.jsonl files."""

import json
import math
import os

import pytest

from albert_jax import plot

PNG = b"\x89PNG\r\n\x1a\n"


def legacy(record):
    """A record under the names runs wrote before `train/` and `eval/`: `loss`, `eval_x`, `dev/x`."""
    return {
        k.removeprefix("train/").replace("eval/dev/", "dev/").replace("eval/", "eval_"): v
        for k, v in record.items()
    }


def write_metrics(workdir, records, names="current"):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r if names == "current" else legacy(r)) + "\n" for r in records)
    return str(workdir)


def pretraining_records(steps=60, log_every=10, eval_every=30):
    out = []
    for s in range(log_every, steps + 1, log_every):
        t = s / steps
        out.append(
            {
                "step": s,
                "train/loss": 8.0 - 3 * t,
                "train/mlm_loss": 7.3 - 3 * t,
                "train/mlm_accuracy": 0.05 + 0.3 * t,
                "train/sop_loss": 0.69 - 0.2 * t,
                "train/sop_accuracy": 0.5 + 0.3 * t,
                "train/learning_rate": 1e-3 * min(1.0, 5 * t) * (1 - t),
                "train/grad_norm": 1.0,
                "train/tokens_per_sec": 5000 + 1000 * t,
                "train/steps_per_sec": 2.0,
            }
        )
        if s % eval_every == 0:
            out.append(
                {"step": s, "eval/loss": 8.2 - 3 * t, "eval/mlm_accuracy": 0.28 * t, "eval/sop_accuracy": 0.6}
            )
    return out


def finetune_records(seed, steps=20):
    out = [
        {
            "step": s,
            "train/loss": 0.7 - s / (3 + seed) / steps,
            "train/learning_rate": 1e-5,
            "train/tokens_per_sec": 900,
        }
        for s in range(2, steps + 1, 2)
    ]
    out += [
        {
            "step": s,
            "eval/dev/accuracy": 0.5 + 0.2 * s / steps / (1 + seed),
            "eval/dev/f1": 0.4 + 0.3 * s / steps,
            "eval/dev/total": 21,
        }
        for s in range(steps // 2, steps + 1, steps // 2)
    ]
    return out


def check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG
    assert os.path.getsize(path) > 10_000


@pytest.mark.parametrize("names", ["current", "legacy"])
def test_pretraining_run(tmp_path, names):
    run = write_metrics(tmp_path / "tiny", pretraining_records(), names)
    fig = plot.plot_runs([run])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["Loss", "MLM / sentence-objective accuracy", "Learning rate", "Throughput (tokens/s)"]
    loss = fig.axes[0]
    assert len(loss.lines) == 2 and list(loss.lines[1].get_xdata()) == [30, 60]  # train and held-out
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["tiny"]
    assert plot.main([run]) == 0
    check_png(os.path.join(run, "metrics.png"))


@pytest.mark.parametrize("names", ["current", "legacy"])
def test_two_finetuning_runs_overlay(tmp_path, names):
    runs = [write_metrics(tmp_path / f"rte-{k}", finetune_records(k), names) for k in (0, 1)]
    fig = plot.plot_runs(runs)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["Train loss", "dev/accuracy", "dev/f1"]  # counts such as dev/total are not curves
    assert all(len(ax.lines) == 2 for ax in fig.axes if ax.get_visible())
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["rte-0", "rte-1"]
    out = str(tmp_path / "both.png")
    assert plot.main([*runs, "--out", out]) == 0
    check_png(out)


def test_seed_runs_and_skipped_values(tmp_path):
    sweep = tmp_path / "sweep"
    records = finetune_records(0)
    records[0]["train/loss"] = math.nan  # a non-finite step is left out, not plotted
    for k in (0, 1):
        write_metrics(sweep / f"seed_{k}", records)
    with open(sweep / "seed_0" / "metrics.jsonl", "a") as f:
        f.write('{"step": 22, "lo')  # a line still being written
    fig = plot.plot_runs([str(sweep)])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["seed_0", "seed_1"]
    assert list(fig.axes[0].lines[0].get_xdata()) == list(range(4, 21, 2))


@pytest.mark.parametrize("case", ["missing", "empty_dir", "mixed"])
def test_errors_are_one_line(tmp_path, capsys, case):
    if case == "missing":
        args, message = [str(tmp_path / "nope")], "no such run directory"
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        args, message = [str(tmp_path / "empty")], "has no metrics.jsonl"
    else:
        args = [
            write_metrics(tmp_path / "p", pretraining_records()),
            write_metrics(tmp_path / "f", finetune_records(0)),
        ]
        message = "cannot overlay pretraining and fine-tuning runs"
    assert plot.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
