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

import contextlib
import json
import logging
import os
import tempfile
from typing import Any

import ml_collections
from etils import epath

from albert_jax import storage
from albert_jax.config import JAX_ONLY_FIELDS, AlbertConfig
from albert_jax.tokenizer import AlbertTokenizer

log = logging.getLogger(__name__)

CONFIG = "config.json"
MODEL_CONFIG = "model_config.json"
VOCAB = "spiece.model"
DATA = "data.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
METRICS = "metrics.jsonl"
# One metric naming for every task, in metrics.jsonl and TensorBoard: `train/<name>` for the step's
# metrics, `eval/<name>` for the evaluator's (fine-tuning's names are `<split>/<metric>`).
TRAIN_PREFIX, EVAL_PREFIX = "train/", "eval/"
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


# --- run files that survive a crash ------------------------------------------------------------------


def write_file(target: PathLike, data: str | bytes) -> None:
    """Replace a run file whole, so that a crash leaves the old or the new contents, never part of
    them: a temporary file renamed over it on a filesystem, one object write (atomic) on an object
    store. Transient storage errors are retried."""
    target = epath.Path(target)
    payload = data.encode() if isinstance(data, str) else data

    def write() -> None:
        if is_url(target):
            target.write_bytes(payload)
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=os.fspath(target.parent))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    storage.retry(write, f"writing {target}")


def read_text(source: PathLike) -> str:
    """A run file's text (transient storage errors retried)."""
    return storage.retry(lambda: epath.Path(source).read_text(), f"reading {source}")


def read_json(source: PathLike, default: Any = None) -> Any:
    """A JSON run file; `default` if it does not exist. One that a crash left unparsable (written by
    a version without `write_file`) gives a warning naming it and `default`: the run rewrites it."""
    source = epath.Path(source)
    if not storage.retry(source.exists, f"reading {source}"):
        return default
    try:
        return json.loads(read_text(source))
    except json.JSONDecodeError as e:
        log.warning("%s is not valid JSON (%s; cut short by a crash?): ignoring it", source, e)
        return default


def read_jsonl(source: PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines run file (`metrics.jsonl`); [] if it does not exist. Lines a crash
    cut short (the last one, mid-append) are dropped with one warning naming the file and the lines."""
    source = epath.Path(source)
    if not storage.retry(source.exists, f"reading {source}"):
        return []
    records, torn = [], []
    for number, line in enumerate(read_text(source).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            torn.append(number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            torn.append(number)
    if torn:
        log.warning(
            "%s: dropped %d unreadable line(s) (%s), cut short by a crash", source, len(torn), _lines(torn)
        )
    return records


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:5]))
    return f"line {shown}" + (" …" if len(numbers) > 5 else "")


def write_run_files(
    workdir: PathLike,
    config: ml_collections.ConfigDict,
    model_config: AlbertConfig,
    head: str,
    tokenizer: AlbertTokenizer,
) -> None:
    """The resolved config, the model's config.json (with its head class) and the vocabulary."""
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    write_file(path(workdir, CONFIG), config.to_json_best_effort(indent=2, sort_keys=True))
    hf = model_config.to_hf_dict()
    hf["architectures"] = [head]
    for name in JAX_ONLY_FIELDS:  # kept for reruns
        hf[f"albert_jax_{name}"] = getattr(model_config, name)
    write_file(path(workdir, MODEL_CONFIG), json.dumps(hf, indent=2, sort_keys=True))
    with tempfile.TemporaryDirectory() as staged:  # the vocabulary's files, each replaced whole
        tokenizer.save_pretrained(staged)
        for name in sorted(os.listdir(staged)):
            with open(os.path.join(staged, name), "rb") as f:
                write_file(path(workdir, name), f.read())


def tokenizer(workdir: PathLike) -> AlbertTokenizer:
    return AlbertTokenizer.from_pretrained(workdir)


def read_model_config(workdir: PathLike, **overrides) -> tuple[AlbertConfig, str]:
    """(AlbertConfig, head class name) of a run."""
    d = json.loads(read_text(path(workdir, MODEL_CONFIG)))
    jax_side = {k[len("albert_jax_") :]: v for k, v in d.items() if k.startswith("albert_jax_")}
    head = (d.get("architectures") or ["AlbertForPreTraining"])[0]
    return AlbertConfig.from_hf_dict(d, **{**jax_side, **overrides}), head
