"""Export a pretraining run to a Hugging Face directory (config.json, model.safetensors, spiece.model).

  python -m albert_jax.export WORKDIR OUT [--step N]

transformers' `AlbertForPreTraining.from_pretrained(OUT)` and `albert_jax.from_pretrained(OUT, cls)`
both load the result.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from albert_jax.checkpoint import Checkpointer
from albert_jax.config import AlbertConfig
from albert_jax.hf import save_pretrained
from albert_jax.modeling import AlbertForPreTraining
from albert_jax.tokenizer import AlbertTokenizer


def export(workdir: str, out: str, step: int | None = None) -> str:
    """Writes the run's latest (or `step`) checkpoint as an HF directory; returns `out`."""
    config_path = os.path.join(workdir, "model_config.json")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isfile(config_path) or not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(
            f"{workdir} is not a pretraining workdir (no model_config.json and checkpoints/)"
        )
    config = AlbertConfig.from_json(config_path)
    ckpt = Checkpointer(ckpt_dir, every=1, keep=1, async_save=False)
    try:
        if step is not None and step not in ckpt.all_steps():
            raise ValueError(f"no checkpoint for step {step} in {ckpt_dir}; available: {ckpt.all_steps()}")
        params = ckpt.restore_params(step)
    finally:
        ckpt.close()
    save_pretrained(out, AlbertForPreTraining(config), params)
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    tokenizer = AlbertTokenizer.from_pretrained(
        tokenizer_dir if os.path.isdir(tokenizer_dir) else os.path.join(workdir, "spiece.model")
    )
    tokenizer.save_pretrained(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m albert_jax.export", description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("out")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    args = parser.parse_args(argv)
    try:
        export(args.workdir, args.out, args.step)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
