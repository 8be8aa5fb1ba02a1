"""Training curves of runs as a PNG: `python -m albert_jax.plot WORKDIR [WORKDIR ...] [--out FILE.png]`.

Reads each run's `metrics.jsonl` (local or `gs://`). Pretraining runs (records with `train/mlm_loss`)
get loss, MLM/SOP accuracy, learning rate and throughput panels, held-out evaluations as points;
fine-tuning runs get the training loss and one panel per evaluation metric (`eval/dev/accuracy`, ...).
Runs written before the `train/`/`eval/` names (`loss`, `eval_mlm_accuracy`, `dev/accuracy`) read the
same. Several runs overlay on one figure, one colour per run, named by their directories; a
fine-tuning WORKDIR with `num_seeds > 1` stands for its `seed_<k>` runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import sys
from collections.abc import Sequence

from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from albert_jax import cli, errors
from albert_jax import workdir as workdir_lib

# (title, [(metrics.jsonl key, legend name, line style)]); `eval/` keys are sparse points.
PRETRAIN_PANELS = (
    ("Loss", (("train/loss", "train", "-"), ("eval/loss", "held-out", "--"))),
    (
        "MLM / sentence-objective accuracy",
        (
            ("train/mlm_accuracy", "MLM", "-"),
            ("train/sop_accuracy", "SOP", ":"),
            ("train/nsp_accuracy", "NSP", ":"),
            ("eval/mlm_accuracy", "MLM held-out", "--"),
            ("eval/mlm_replaced_accuracy", "MLM held-out, replaced pieces", (0, (5, 1, 1, 1, 1, 1))),
            ("eval/sop_accuracy", "SOP held-out", "-."),
            ("eval/nsp_accuracy", "NSP held-out", "-."),
        ),
    ),
    ("Learning rate", (("train/learning_rate", None, "-"),)),
    ("Throughput (tokens/s)", (("train/tokens_per_sec", None, "-"),)),
)
# Evaluation keys that are not curves: example counts and thresholds (SQuAD v2).
_NOT_CURVES = ("total", "_thresh")


@dataclasses.dataclass
class Run:
    name: str
    records: list[dict]

    @property
    def pretraining(self) -> bool:
        return any("train/mlm_loss" in r or "eval/mlm_accuracy" in r for r in self.records)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of the records that hold a finite number under `key`."""
        points = [
            (r["step"], float(r[key]))
            for r in self.records
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
        return [s for s, _ in points], [v for _, v in points]


def current_name(key: str) -> str:
    """A metrics.jsonl key under today's names: older runs wrote `loss` (train), `eval_x`
    (pretraining's held-out) and `dev/x` (fine-tuning's evaluations)."""
    train, held_out = workdir_lib.TRAIN_PREFIX, workdir_lib.EVAL_PREFIX
    if key == "step" or key.startswith((train, held_out)):
        return key
    if key.startswith("eval_"):
        return held_out + key.removeprefix("eval_")
    return (held_out if "/" in key else train) + key


def _read_records(path: epath.Path) -> list[dict]:
    records = workdir_lib.read_jsonl(path)
    return [{current_name(k): v for k, v in r.items()} for r in records if "step" in r]


def load_runs(workdirs: Sequence[str]) -> list[Run]:
    """The runs of `workdirs`, named by their directories. Raises errors.MissingError/InputError
    with a one-line message for a missing directory or one without metrics."""
    found: list[tuple[epath.Path, epath.Path]] = []  # (directory, metrics file)
    for workdir in map(epath.Path, workdirs):
        if not workdir.is_dir():
            raise errors.MissingError(f"no such run directory: {workdir}")
        path = workdir_lib.path(workdir, workdir_lib.METRICS)
        seeds = sorted(workdir.glob(f"seed_*/{workdir_lib.METRICS}"), key=str)
        if path.is_file():
            found.append((workdir, path))
        elif seeds:
            found += [(p.parent, p) for p in seeds]
        else:
            raise errors.MissingError(
                f"{workdir} has no {workdir_lib.METRICS} (not a run, or no step logged yet)"
            )
    names = [d.name for d, _ in found]
    if len(set(names)) < len(names):  # e.g. seed_0 of two sweeps: show more of the path
        names = [f"{d.parent.name}/{d.name}" for d, _ in found]
    runs = []
    for name, (_, path) in zip(names, found):
        records = _read_records(path)
        if not records:
            raise errors.InputError(f"{path} has no records yet")
        runs.append(Run(name, records))
    if len({run.pretraining for run in runs}) > 1:
        raise errors.InputError("cannot overlay pretraining and fine-tuning runs; plot them separately")
    return runs


def _finetune_panels(runs: Sequence[Run]) -> list[tuple[str, tuple]]:
    keys = sorted(
        {
            k
            for run in runs
            for r in run.records
            for k in r
            if k.startswith(workdir_lib.EVAL_PREFIX) and not k.endswith(_NOT_CURVES)
        }
    )
    return [("Train loss", (("train/loss", None, "-"),))] + [
        (k.removeprefix(workdir_lib.EVAL_PREFIX), ((k, None, "-"),)) for k in keys
    ]


def _marker(key: str) -> str | None:
    """Evaluations are sparse: points joined by a line."""
    return "o" if key.startswith(workdir_lib.EVAL_PREFIX) else None


def plot_runs(workdirs: Sequence[str]) -> Figure:
    """The figure of the runs in `workdirs` (see the module docstring)."""
    runs = load_runs(workdirs)
    panels = list(PRETRAIN_PANELS) if runs[0].pretraining else _finetune_panels(runs)
    ncols = 2 if len(panels) == 4 else min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(5.5 * ncols, 3.6 * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for i, (ax, (title, curves)) in enumerate(zip(axes, panels)):
        for run, colour in zip(runs, colours):
            for key, _, style in curves:
                steps, values = run.series(key)
                ax.plot(steps, values, linestyle=style, color=colour, marker=_marker(key), markersize=4)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        if i + ncols >= len(panels):  # nothing below it: this panel carries the step axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("step")
        named = [(k, name, style) for k, name, style in curves if name and any(r.series(k)[0] for r in runs)]
        if len(named) > 1:  # which line style is which metric; colours are runs (the figure legend)
            handles = [Line2D([], [], color="0.3", linestyle=st, marker=_marker(k)) for k, _, st in named]
            ax.legend(handles, [name for _, name, _ in named], fontsize="small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, linewidth=2) for c in colours]
    fig.legend(handles, [run.name for run in runs], loc="outside upper center", ncols=min(len(runs), 4))
    return fig


def write_plot(workdirs: Sequence[str], out: str | None = None) -> epath.Path:
    """Writes the figure of `workdirs` to `out` (default: WORKDIR/metrics.png for one run, else
    ./metrics.png; local or gs://) and returns where."""
    target = epath.Path(
        out or (workdir_lib.path(workdirs[0], "metrics.png") if len(workdirs) == 1 else "metrics.png")
    )
    buffer = io.BytesIO()
    plot_runs(workdirs).savefig(buffer, format="png", dpi=100)
    workdir_lib.write_file(target, buffer.getvalue())
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m albert_jax.plot", description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    parser.add_argument(
        "--out",
        default=None,
        help="PNG to write (default: WORKDIR/metrics.png for one run, else ./metrics.png)",
    )
    return cli.argparse_main(parser, lambda args: print(f"wrote {write_plot(args.workdirs, args.out)}"), argv)


if __name__ == "__main__":
    sys.exit(main())
