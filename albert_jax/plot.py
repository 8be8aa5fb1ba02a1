"""Training curves of runs as a PNG: `python -m albert_jax.plot WORKDIR [WORKDIR ...] [--out FILE.png]`.

Reads each run's `metrics.jsonl`. Pretraining runs (their records have `mlm_loss`) get loss, MLM/SOP
accuracy, learning rate and throughput panels, held-out evaluations as points; fine-tuning runs get
the training loss and one panel per evaluation metric (`dev/accuracy`, ...). Several runs overlay on
one figure, one colour per run, named by their directories; a fine-tuning WORKDIR with `num_seeds > 1`
stands for its `seed_<k>` runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import sys
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from albert_jax import workdir as workdir_lib

# (title, [(metrics.jsonl key, legend name, line style)]); `eval_` keys are sparse points.
PRETRAIN_PANELS = (
    ("Loss", (("loss", "train", "-"), ("eval_loss", "held-out", "--"))),
    (
        "MLM / SOP accuracy",
        (
            ("mlm_accuracy", "MLM", "-"),
            ("sop_accuracy", "SOP", ":"),
            ("eval_mlm_accuracy", "MLM held-out", "--"),
            ("eval_mlm_replaced_accuracy", "MLM held-out, replaced pieces", (0, (5, 1, 1, 1, 1, 1))),
            ("eval_sop_accuracy", "SOP held-out", "-."),
        ),
    ),
    ("Learning rate", (("learning_rate", None, "-"),)),
    ("Throughput (tokens/s)", (("tokens_per_sec", None, "-"),)),
)
# Evaluation keys that are not curves: example counts and thresholds (SQuAD v2).
_NOT_CURVES = ("total", "_thresh")


@dataclasses.dataclass
class Run:
    name: str
    records: list[dict]

    @property
    def pretraining(self) -> bool:
        return any("mlm_loss" in r or "eval_mlm_accuracy" in r for r in self.records)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of the records that hold a finite number under `key`."""
        points = [
            (r["step"], float(r[key]))
            for r in self.records
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
        return [s for s, _ in points], [v for _, v in points]


def _read_records(path: str) -> list[dict]:
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the line a running job is writing
                continue
            if isinstance(record, dict) and "step" in record:
                records.append(record)
    return records


def load_runs(workdirs: Sequence[str]) -> list[Run]:
    """The runs of `workdirs`, named by their directories. Raises FileNotFoundError/ValueError with a
    one-line message for a missing directory or one without metrics."""
    found: list[tuple[str, str]] = []  # (directory, metrics file)
    for workdir in workdirs:
        if not os.path.isdir(workdir):
            raise FileNotFoundError(f"no such run directory: {workdir}")
        path = workdir_lib.path(workdir, workdir_lib.METRICS)
        seeds = sorted(glob.glob(os.path.join(workdir, "seed_*", workdir_lib.METRICS)))
        if os.path.isfile(path):
            found.append((workdir, path))
        elif seeds:
            found += [(os.path.dirname(p), p) for p in seeds]
        else:
            raise FileNotFoundError(
                f"{workdir} has no {workdir_lib.METRICS} (not a run, or no step logged yet)"
            )
    names = [os.path.basename(os.path.normpath(d)) for d, _ in found]
    if len(set(names)) < len(names):  # e.g. seed_0 of two sweeps: show more of the path
        names = [os.path.normpath(d) for d, _ in found]
    runs = []
    for name, (_, path) in zip(names, found):
        records = _read_records(path)
        if not records:
            raise ValueError(f"{path} has no records yet")
        runs.append(Run(name, records))
    if len({run.pretraining for run in runs}) > 1:
        raise ValueError("cannot overlay pretraining and fine-tuning runs; plot them separately")
    return runs


def _finetune_panels(runs: Sequence[Run]) -> list[tuple[str, tuple]]:
    keys = sorted(
        {k for run in runs for r in run.records for k in r if "/" in k and not k.endswith(_NOT_CURVES)}
    )
    return [("Train loss", (("loss", None, "-"),))] + [(k, ((k, None, "-"),)) for k in keys]


def _marker(key: str) -> str | None:
    """Evaluations are sparse: points joined by a line."""
    return "o" if key.startswith("eval_") or "/" in key else None


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m albert_jax.plot", description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    parser.add_argument(
        "--out",
        default=None,
        help="PNG to write (default: WORKDIR/metrics.png for one run, else ./metrics.png)",
    )
    args = parser.parse_args(argv)
    out = args.out or (
        os.path.join(args.workdirs[0], "metrics.png") if len(args.workdirs) == 1 else "metrics.png"
    )
    try:
        fig = plot_runs(args.workdirs)
        fig.savefig(out, dpi=100)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
