"""Prepare a pretraining corpus once (vocabulary + token cache) for runs on any number of hosts.

    python -m albert_jax.data.prepare --config=configs/pretrain.py:tiny --output=DIR [--config.key=value ...]

takes the vocabulary (``data.tokenizer``, or ``init_from``'s) or trains one on the corpus exactly as a
run would, and tokenizes the corpus with the run's own token-cache writer
(:meth:`TokenizedCorpus.build`, SentencePiece's multithreaded batch encode on every core). DIR gets::

    manifest.json                          written last: format version, source spec and fingerprint,
                                           vocabulary fingerprint and size, counts, the corpus folder
    spiece.model  tokenizer_config.json    the vocabulary
    pretrain-<kind>-v<N>-<key>/            the token cache, as a run's data.cache_dir holds it

A run with ``--config.data.prepared=DIR`` reads the vocabulary and the token cache from DIR and
tokenizes nothing; :func:`load` checks DIR against the run's config first. DIR may be a local path or
any ``etils.epath`` URL (``gs://…``): a remote DIR is built locally and uploaded, and a run copies it
into its ``data.cache_dir`` once (the cache is memory-mapped, which needs a local file).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import ml_collections
import sentencepiece as spm
from etils import epath

from albert_jax import errors
from albert_jax.data.pretraining import FORMAT_VERSION, TokenizedCorpus
from albert_jax.data.text import CorpusError, CorpusSpec, iter_documents, source_fingerprint
from albert_jax.tokenizer import TRAINING_VERSION, AlbertTokenizer, train_tokenizer

__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "PreparedCorpusError",
    "corpus_spec",
    "default_cache_dir",
    "load",
    "prepare",
    "vocabulary",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_VOCAB = "spiece.model"


class PreparedCorpusError(errors.InputError):
    """A prepared corpus is missing, incomplete, or does not match the run's config."""


def corpus_spec(data: ml_collections.ConfigDict) -> CorpusSpec:
    """The corpus source of a pretraining config's ``data`` section (the fields share their names)."""
    return CorpusSpec(**{f.name: data[f.name] for f in dataclasses.fields(CorpusSpec)})


def default_cache_dir(data: ml_collections.ConfigDict) -> str:
    return data.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "albert_jax")


def vocabulary(
    path: str, spec: CorpusSpec, vocab_size: int, own: str | os.PathLike, cache_dir: str | None = None
) -> AlbertTokenizer:
    """The spiece.model at ``path`` (a file or an HF/run directory); else ``own`` if it exists; else a
    ``vocab_size``-piece vocabulary trained on ``spec`` into ``own``. With ``cache_dir``, a vocabulary
    trained there earlier on the same source (`source_fingerprint`) with the same size is copied
    instead of trained again (training is deterministic, so it is the same file), and a new one is
    kept there.

    Raises:
      CorpusError: the corpus is missing or empty (checked before anything is written).
    """
    if path:
        return AlbertTokenizer.from_pretrained(path)
    own = epath.Path(own)
    if own.exists():
        return AlbertTokenizer(own)
    cached = _cached_vocabulary(spec, vocab_size, cache_dir) if cache_dir else None
    if cached is not None and cached.exists():
        log.info("reusing the %d-piece vocabulary %s trained on %s", vocab_size, cached, spec.describe())
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_bytes(cached.read_bytes())
        return AlbertTokenizer(own)
    sentences = (s for doc in iter_documents(spec) for s in doc)
    first = next(sentences, None)  # CorpusError for a missing/empty corpus before `own` is written
    if first is None:
        raise CorpusError(f"the corpus {spec.describe()} has no sentences")
    log.info("training a %d-piece vocabulary on %s", vocab_size, spec.describe())
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
    # sentencepiece writes local files (`own` may be gs://); trained beside the cache entry, the model
    # is renamed into it whole, so the cache never holds half a file.
    with tempfile.TemporaryDirectory(dir=cached.parent if cached is not None else None) as tmp:
        trained = train_tokenizer(
            _chain(first, sentences), os.path.join(tmp, "spiece"), vocab_size=vocab_size
        )
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_bytes(epath.Path(trained).read_bytes())
        if cached is not None:
            os.replace(trained, cached)
    return AlbertTokenizer(own)


def _cached_vocabulary(spec: CorpusSpec, vocab_size: int, cache_dir: str) -> epath.Path:
    """Where `vocabulary` keeps what it trained on ``spec``: keyed by the source, the size, the training
    recipe's version and sentencepiece's."""
    key = f"{source_fingerprint(spec)}|{vocab_size}|{TRAINING_VERSION}|{spm.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return epath.Path(cache_dir) / f"vocab-{spec.kind}-{vocab_size}-{digest}.model"


def _chain(first: str, rest):
    yield first
    yield from rest


def _is_local(path: str) -> bool:
    return "://" not in path


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
    """Copies every file under ``src`` to the same place under ``dst`` (through etils.epath)."""
    for folder, _, files in src.walk():  # not rglob: epath refuses "**" patterns
        for name in sorted(files):
            target = dst / (folder / name).relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            (folder / name).copy(target, overwrite=True)


def prepare(config: ml_collections.ConfigDict, output: str) -> dict[str, Any]:
    """Writes the vocabulary, the token cache and ``manifest.json`` into ``output``; returns the manifest.

    Rerunning on a complete ``output`` reuses what is there (the vocabulary and a cache with the same key).
    """
    spec = corpus_spec(config.data)
    if config.init_from and config.data.tokenizer:
        raise errors.ConfigError("init_from brings its own vocabulary; leave data.tokenizer empty")
    if (epath.Path(output) / MANIFEST).exists():  # a rerun: only for the same corpus and vocabulary size
        vocab_size = None if config.init_from or config.data.tokenizer else config.model.vocab_size
        _check(f"--output={output}", _read_manifest(output), spec, vocab_size)
    staging = output if _is_local(output) else tempfile.mkdtemp(prefix="albert_jax-prepare-")
    os.makedirs(staging, exist_ok=True)
    t0 = time.perf_counter()
    tok = vocabulary(
        config.init_from or config.data.tokenizer,
        spec,
        config.model.vocab_size,
        os.path.join(staging, _VOCAB),
    )
    tok.save_pretrained(staging)  # a taken vocabulary is copied, so DIR is self-contained
    reused = os.path.exists(os.path.join(staging, TokenizedCorpus.cache_key(spec, tok), "meta.json"))
    t1, cpu1 = time.perf_counter(), time.process_time()
    corpus = TokenizedCorpus.build(spec, tok, staging)
    t2, cpu2 = time.perf_counter(), time.process_time()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "corpus_format_version": FORMAT_VERSION,
        "source": spec.describe(),
        "spec": dataclasses.asdict(spec),
        "source_fingerprint": source_fingerprint(spec),
        "vocabulary": {"file": _VOCAB, "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size},
        "corpus": os.path.basename(corpus.path),
        "num_documents": corpus.num_documents,
        "num_sentences": corpus.num_sentences,
        "num_tokens": corpus.num_tokens,
    }
    if not _is_local(output):
        _copy_tree(epath.Path(staging), epath.Path(output))
        shutil.rmtree(staging, ignore_errors=True)
    (epath.Path(output) / MANIFEST).write_text(json.dumps(manifest, indent=1))
    counts = f"{corpus.num_documents} documents, {corpus.num_sentences} sentences, {corpus.num_tokens} tokens"
    if reused:
        print(f"prepared {output} (reused): {counts}")
        return manifest
    seconds, cpu_seconds = t2 - t1, cpu2 - cpu1
    print(
        f"prepared {output}: {counts}; vocabulary {t1 - t0:.1f}s; tokenizing {seconds:.1f}s wall, "
        f"{cpu_seconds:.1f}s CPU = {corpus.num_tokens / seconds:,.0f} tokens/s on {cores} cores, "
        f"{corpus.num_tokens / max(cpu_seconds, 1e-9):,.0f} tokens/s per core"
    )
    return manifest


def _read_manifest(prepared: str) -> dict[str, Any]:
    path = epath.Path(prepared) / MANIFEST
    if not path.exists():
        raise PreparedCorpusError(
            f"data.prepared={prepared!r} is not a prepared corpus (no {MANIFEST}); make one with "
            f"python -m albert_jax.data.prepare --config=... --output={prepared}"
        )
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise PreparedCorpusError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("manifest_version") != MANIFEST_VERSION or (
        manifest.get("corpus_format_version") != FORMAT_VERSION
    ):
        raise PreparedCorpusError(
            f"{path} was written by another version of albert_jax; prepare the corpus again"
        )
    return manifest


def _check(where: str, manifest: dict[str, Any], spec: CorpusSpec, vocab_size: int | None) -> None:
    """The manifest at ``where`` is for ``spec`` and (unless None) a ``vocab_size``-piece vocabulary."""
    want = dataclasses.asdict(spec)
    diff = [
        f"data.{k}: {manifest['spec'].get(k)!r} → {v!r}"
        for k, v in want.items()
        if manifest["spec"].get(k) != v
    ]
    if diff:
        raise PreparedCorpusError(
            f"{where} holds another prepared corpus ({manifest['source']}); the config differs in "
            f"{', '.join(diff)}"
        )
    have = manifest["vocabulary"]["vocab_size"]
    if vocab_size is not None and have != vocab_size:
        raise PreparedCorpusError(
            f"{where} has a {have}-piece vocabulary but model.vocab_size is {vocab_size}; set "
            f"--config.model.vocab_size={have} or prepare the corpus again"
        )


def _local_copy(prepared: str, manifest: dict[str, Any], cache_dir: str) -> str:
    """``prepared`` itself when local; else a copy in ``cache_dir``, made once per manifest."""
    if _is_local(prepared):
        return prepared
    key = hashlib.sha256(f"{prepared}|{json.dumps(manifest, sort_keys=True)}".encode()).hexdigest()[:16]
    local = os.path.join(cache_dir, f"prepared-{key}")
    if not os.path.exists(os.path.join(local, MANIFEST)):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".prepared-{key}.tmp-", dir=cache_dir)
        try:
            _copy_tree(epath.Path(prepared), epath.Path(tmp))
            os.replace(tmp, local)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.exists(os.path.join(local, MANIFEST)):  # not another host's finished copy
                raise
    return local


def load(
    prepared: str, spec: CorpusSpec, vocab_size: int, cache_dir: str
) -> tuple[AlbertTokenizer, TokenizedCorpus]:
    """The vocabulary and token cache of a prepared corpus, after checking that it is what the run's
    config asks for (same source spec, ``vocab_size`` pieces). Reads nothing of the raw corpus.

    Raises:
      PreparedCorpusError: no manifest, another format version, a different source or vocabulary size,
        or files that do not match the manifest.
    """
    manifest = _read_manifest(prepared)
    _check(f"data.prepared={prepared!r}", manifest, spec, vocab_size)
    local = _local_copy(prepared, manifest, cache_dir)
    tok = AlbertTokenizer.from_pretrained(local)
    corpus = TokenizedCorpus(os.path.join(local, manifest["corpus"]))
    if not tok.fingerprint == manifest["vocabulary"]["fingerprint"] == corpus.meta["tokenizer_fingerprint"]:
        raise PreparedCorpusError(
            f"data.prepared={prepared!r}: the vocabulary or token cache does not match {MANIFEST}; "
            "prepare it again"
        )
    return tok, corpus


def main() -> None:
    """``python -m albert_jax.data.prepare``: absl flags and config overrides as in pretrain.py."""
    from absl import app, flags  # pylint: disable=g-import-not-at-top

    from albert_jax import cli  # entry-point start-up (one-line errors); the library above does not need it

    config = cli.define_config_flag("configs/pretrain.py:tiny")
    output = flags.DEFINE_string("output", None, "Directory (local or gs://) for the prepared corpus.")
    flags.mark_flags_as_required(["output"])

    def run(argv: list[str]) -> int:
        del argv
        return cli.run_guarded(lambda: prepare(config.value, output.value))

    app.run(run, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    main()
