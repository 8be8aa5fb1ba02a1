"""Export a run to a Hugging Face directory (config.json, model.safetensors, spiece.model).

  python -m albert_jax.export WORKDIR OUT [--step N | --best]

The class is the run's own head (`AlbertForPreTraining` for pretraining, e.g.
`AlbertForSequenceClassification` for GLUE). transformers' `<Class>.from_pretrained(OUT)` and
`albert_jax.from_pretrained(OUT, cls)` both load the result. `--best` exports a fine-tuning run's
best evaluated checkpoint. WORKDIR and OUT may be local paths or gs:// URLs; id2label names the task's classes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from albert_jax import cli, errors
from albert_jax import workdir as workdir_lib
from albert_jax.checkpoint import Checkpointer
from albert_jax.hf import save_pretrained
from albert_jax.modeling import HEADS


def export(workdir: str, out: str, step: int | None = None, best: bool = False) -> str:
    """Writes a run's latest (or `step`, or its best fine-tuning) checkpoint as an HF directory of the
    run's own head class; returns `out`."""
    if not workdir_lib.is_run(workdir):
        raise errors.MissingError(f"{workdir} is not a run's WORKDIR (no model_config.json and checkpoints/)")
    config, head = workdir_lib.read_model_config(workdir)
    if head not in HEADS:
        raise errors.InputError(
            f"{workdir} trained a {head} head, which has no Hugging Face class to export to"
        )
    config.hf_equivalent()  # a ConfigError, before any checkpoint is read, for a layout HF does not have
    directory = workdir_lib.path(workdir, workdir_lib.BEST if best else workdir_lib.CHECKPOINTS)
    ckpt = Checkpointer(directory, every=1, keep=1, async_save=False)
    try:
        if ckpt.latest_step() is None:
            raise errors.MissingError(f"no checkpoint in {directory}")
        if step is not None and step not in ckpt.all_steps():
            raise errors.InputError(
                f"no checkpoint for step {step} in {directory}; available: {ckpt.all_steps()}"
            )
        params = ckpt.restore_params(step)
    finally:
        ckpt.close()
    save_pretrained(out, HEADS[head](config), params)
    workdir_lib.tokenizer(workdir).save_pretrained(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m albert_jax.export", description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("out")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument(
        "--best", action="store_true", help="the best evaluated checkpoint of a fine-tuning run"
    )
    return cli.argparse_main(
        parser, lambda args: print(f"wrote {export(args.workdir, args.out, args.step, args.best)}"), argv
    )


if __name__ == "__main__":
    sys.exit(main())
