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

WORKDIR is a local path (or a gcsfuse mount) or a `gs://` URL: every path here is an `etils.epath.Path`,
which reads and writes `gs://` through gcsfs, and orbax writes the arrays through tensorstore.
"""

from __future__ import annotations

import json
import os

import ml_collections
from etils import epath

from albert_jax.config import JAX_ONLY_FIELDS, AlbertConfig
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


PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
    """A `gs://` (or other fsspec) URL, not a filesystem path (a gcsfuse mount is a filesystem path)."""
    return "://" in os.fspath(path)


def path(workdir: PathLike, name: str) -> epath.Path:
    return epath.Path(workdir) / name


def seed_dir(workdir: PathLike, k: int | str) -> epath.Path:
    return path(workdir, SEED_DIR.format(k))


def saved_configs(workdir: PathLike) -> list[epath.Path]:
    """The config.json of the run in WORKDIR and of its seed runs (fine-tuning), those that exist."""
    root = epath.Path(workdir)
    if not root.is_dir():
        return []
    found = [path(root, CONFIG)] + sorted(root.glob(f"{SEED_DIR.format('*')}/{CONFIG}"))
    return [p for p in found if p.is_file()]


def is_run(directory: PathLike) -> bool:
    """A directory written by a pretraining or fine-tuning run (it has a model config and checkpoints)."""
    return path(directory, MODEL_CONFIG).is_file() and path(directory, CHECKPOINTS).is_dir()


def write_run_files(
    workdir: PathLike,
    config: ml_collections.ConfigDict,
    model_config: AlbertConfig,
    head: str,
    tokenizer: AlbertTokenizer,
) -> None:
    """The resolved config, the model's config.json (with its head class) and the vocabulary."""
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    path(workdir, CONFIG).write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    hf = model_config.to_hf_dict()
    hf["architectures"] = [head]
    for name in JAX_ONLY_FIELDS:  # kept for reruns
        hf[f"albert_jax_{name}"] = getattr(model_config, name)
    path(workdir, MODEL_CONFIG).write_text(json.dumps(hf, indent=2, sort_keys=True))
    tokenizer.save_pretrained(workdir)


def tokenizer(workdir: PathLike) -> AlbertTokenizer:
    return AlbertTokenizer.from_pretrained(workdir)


def read_model_config(workdir: PathLike, **overrides) -> tuple[AlbertConfig, str]:
    """(AlbertConfig, head class name) of a run."""
    d = json.loads(path(workdir, MODEL_CONFIG).read_text())
    jax_side = {k[len("albert_jax_") :]: v for k, v in d.items() if k.startswith("albert_jax_")}
    head = (d.get("architectures") or ["AlbertForPreTraining"])[0]
    return AlbertConfig.from_hf_dict(d, **{**jax_side, **overrides}), head
