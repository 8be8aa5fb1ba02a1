"""The run directory, named once. Pretraining and fine-tuning runs write the same layout:

    WORKDIR/
      config.json            the resolved experiment config (a resume compares against it: config_drift.py)
      run.lock               held by the live run (host, pid, heartbeat: run_lock.py)
      model_config.json      HF config.json of the model; `architectures` names the head class
      spiece.model  tokenizer_config.json   the vocabulary (trained by the run, or a copy of the one used)
      data.json              pretraining: corpus source and token cache
      checkpoints/<step>/    orbax: train state + input-pipeline position (resume)
      checkpoints/bad-<step>/  a checkpoint that did not restore, moved aside on resume
      best/<step>/           fine-tuning: parameters at the best evaluation
      metrics.jsonl  tensorboard/
      compilation_cache/     JAX's persistent compilation cache: a restarted run does not compile again
      eval_results.json  summary.json  predictions/   fine-tuning results
      seed_<k>/              fine-tuning with num_seeds > 1: one run directory per seed
"""

from __future__ import annotations

import glob
import json
import os

import ml_collections

from albert_jax.config import AlbertConfig
from albert_jax.tokenizer import AlbertTokenizer

CONFIG = "config.json"
MODEL_CONFIG = "model_config.json"
VOCAB = "spiece.model"
DATA = "data.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
METRICS = "metrics.jsonl"
EVAL_RESULTS = "eval_results.json"
SUMMARY = "summary.json"
PREDICTIONS = "predictions"
LOCK = "run.lock"
SEED_DIR = "seed_{}"
COMPILATION_CACHE = "compilation_cache"


def path(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)


def seed_dir(workdir: str, k: int | str) -> str:
    return path(workdir, SEED_DIR.format(k))


def saved_configs(workdir: str) -> list[str]:
    """The config.json of the run in WORKDIR and of its seed runs (fine-tuning), those that exist."""
    found = [path(workdir, CONFIG)] + sorted(glob.glob(path(seed_dir(workdir, "*"), CONFIG)))
    return [p for p in found if os.path.isfile(p)]


def check_local(workdir: str) -> None:
    if "://" in workdir:
        raise ValueError(
            f"WORKDIR must be a filesystem path, got {workdir!r}; mount the bucket (e.g. with gcsfuse) and pass the "
            "mount point"
        )


def is_run(directory: str) -> bool:
    """A directory written by a pretraining or fine-tuning run (it has a model config and checkpoints)."""
    return os.path.isfile(path(directory, MODEL_CONFIG)) and os.path.isdir(path(directory, CHECKPOINTS))


def write_run_files(
    workdir: str,
    config: ml_collections.ConfigDict,
    model_config: AlbertConfig,
    head: str,
    tokenizer: AlbertTokenizer,
) -> None:
    """The resolved config, the model's config.json (with its head class) and the vocabulary."""
    os.makedirs(workdir, exist_ok=True)
    with open(path(workdir, CONFIG), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    hf = model_config.to_hf_dict()
    hf["architectures"] = [head]
    for name in ("dtype", "param_dtype", "scan_layers", "remat_policy"):  # JAX-side settings, kept for reruns
        hf[f"albert_jax_{name}"] = getattr(model_config, name)
    with open(path(workdir, MODEL_CONFIG), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
    tokenizer.save_pretrained(workdir)


def tokenizer(workdir: str) -> AlbertTokenizer:
    return AlbertTokenizer.from_pretrained(workdir)


def read_model_config(workdir: str, **overrides) -> tuple[AlbertConfig, str]:
    """(AlbertConfig, head class name) of a run."""
    with open(path(workdir, MODEL_CONFIG)) as f:
        d = json.load(f)
    jax_side = {k[len("albert_jax_") :]: v for k, v in d.items() if k.startswith("albert_jax_")}
    head = (d.get("architectures") or ["AlbertForPreTraining"])[0]
    return AlbertConfig.from_hf_dict(d, **{**jax_side, **overrides}), head
