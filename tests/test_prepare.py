"""A corpus prepared once (`python -m albert_jax.data.prepare`) trains exactly like on-the-fly tokenizing."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from etils import epath
from test_pretrain import REPO, SMALL, cli_args, read_metrics, small_config

from albert_jax.data import prepare, pretraining, text
from albert_jax.data.pretraining import TokenizedCorpus
from albert_jax.tokenizer import train_tokenizer
from albert_jax.training import pretrain

RUN = {
    "total_steps": 3,
    "warmup_steps": 1,
    "log_every": 1,
    "eval_every": 0,
    "eval_steps": 1,
    "checkpoint_every": 3,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """CPython's documentation topics (a part of the embedded corpus) in the one-sentence-per-line layout."""
    path = tmp_path_factory.mktemp("corpus") / "topics.txt"
    path.write_text("\n\n".join("\n".join(doc) for doc in text._pydoc_topic_documents()) + "\n")
    return {"data.files": str(path)}


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    """The corpus prepared with the CLI at the small test model's vocabulary size."""
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    args = [
        sys.executable,
        "-m",
        "albert_jax.data.prepare",
        "--config=configs/pretrain.py:tiny",
        f"--output={out}",
    ]
    args += [f"--config.{k}={v}" for k, v in {**SMALL, **corpus}.items()]
    proc = subprocess.run(args, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens/s per core" in proc.stdout
    return str(out)


def _forbid(*_, **__):
    raise AssertionError("a run on a prepared corpus must not read or tokenize the raw corpus")


def test_prepared_run_equals_on_the_fly_run(corpus, prepared, tmp_path, monkeypatch):
    with open(os.path.join(prepared, prepare.MANIFEST)) as f:
        manifest = json.load(f)
    assert manifest["vocabulary"]["vocab_size"] == SMALL["model.vocab_size"]
    assert (
        manifest["num_tokens"] == TokenizedCorpus(os.path.join(prepared, manifest["corpus"])).num_tokens > 0
    )

    fly = str(tmp_path / "on_the_fly")
    pretrain.run(small_config(**RUN, **corpus), fly)
    # The run trained its vocabulary on the same text with the same code: the same file.
    assert (
        pathlib.Path(fly, "spiece.model").read_bytes() == pathlib.Path(prepared, "spiece.model").read_bytes()
    )

    for module, name in (
        (pretraining, "iter_documents"),
        (prepare, "iter_documents"),
        (text, "iter_documents"),
    ):
        monkeypatch.setattr(module, name, _forbid)
    monkeypatch.setattr(prepare, "train_tokenizer", _forbid)
    monkeypatch.setattr(TokenizedCorpus, "_write", staticmethod(_forbid))
    ready = str(tmp_path / "prepared_run")
    config = small_config(
        **RUN, **corpus, **{"data.prepared": prepared, "data.cache_dir": str(tmp_path / "empty")}
    )
    pretrain.run(config, ready)
    assert not os.path.exists(tmp_path / "empty")  # no token cache was built

    ref = [{k: v for k, v in m.items() if not k.endswith("_per_sec")} for m in read_metrics(fly)]
    got = [{k: v for k, v in m.items() if not k.endswith("_per_sec")} for m in read_metrics(ready)]
    assert [m["step"] for m in got if "train/loss" in m] == [1, 2, 3]
    assert got == ref  # loss for loss, exactly


def test_a_trained_vocabulary_is_kept_in_the_data_cache_and_reused(corpus, tmp_path, monkeypatch):
    """A run with no data.tokenizer trains once per corpus and size: another WORKDIR with the same data
    cache copies that file (no training); another size or a changed corpus file trains its own."""
    spec = prepare.corpus_spec(small_config(**corpus).data)
    cache = str(tmp_path / "cache")
    first = prepare.vocabulary("", spec, 1000, tmp_path / "a" / "spiece.model", cache)
    names = [p.name for p in pathlib.Path(cache).iterdir()]
    assert len(names) == 1 and names[0].startswith("vocab-files-1000-") and names[0].endswith(".model"), names
    with monkeypatch.context() as m:
        m.setattr(prepare, "train_tokenizer", _forbid)
        again = prepare.vocabulary("", spec, 1000, tmp_path / "b" / "spiece.model", cache)
    assert (tmp_path / "b" / "spiece.model").read_bytes() == (tmp_path / "a" / "spiece.model").read_bytes()
    assert again.fingerprint == first.fingerprint

    trained = []
    real = prepare.train_tokenizer
    monkeypatch.setattr(
        prepare, "train_tokenizer", lambda *a, **k: trained.append(k["vocab_size"]) or real(*a, **k)
    )
    prepare.vocabulary("", spec, 900, tmp_path / "c" / "spiece.model", cache)
    changed = tmp_path / "changed.txt"
    changed.write_text(
        pathlib.Path(corpus["data.files"]).read_text() + "One more sentence here. And another one.\n"
    )
    other = prepare.corpus_spec(small_config(**{"data.files": str(changed)}).data)
    prepare.vocabulary("", other, 1000, tmp_path / "d" / "spiece.model", cache)
    prepare.vocabulary("", spec, 1000, tmp_path / "e" / "spiece.model")  # no cache: trains
    assert trained == [900, 1000, 1000]
    assert len(list(pathlib.Path(cache).glob("vocab-*.model"))) == 3
    assert not list(pathlib.Path(cache).glob(".*"))  # no temporary file left


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"model.vocab_size": 1234}, "1000-piece vocabulary but model.vocab_size is 1234"),
        ({"data.format": "paragraphs"}, "data.format: 'auto' → 'paragraphs'"),
        ({"data.tokenizer": "x/spiece.model"}, "leave data.tokenizer empty"),
    ],
)
def test_prepared_corpus_mismatch_is_refused(corpus, prepared, tmp_path, overrides, needle):
    config = small_config(**{**corpus, "data.prepared": prepared, **overrides})
    with pytest.raises(ValueError, match=needle):
        pretrain.resolve(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_missing_manifest_is_one_error_line(tmp_path):
    not_prepared = tmp_path / "not_prepared"
    not_prepared.mkdir()
    args = cli_args(str(tmp_path / "run"), **RUN) + [f"--config.data.prepared={not_prepared}"]
    proc = subprocess.run(args, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is not a prepared corpus (no manifest.json)" in errors[0], proc.stderr[
        -2000:
    ]
    assert not os.path.exists(tmp_path / "run")


def test_copied_prepared_corpus_loads_and_a_swapped_vocabulary_is_refused(corpus, prepared, tmp_path):
    """DIR copied file by file through etils.epath (as to or from gs://) loads; a vocabulary that is not
    the one the cache was tokenized with is refused."""
    copy = tmp_path / "copy"
    prepare._copy_tree(epath.Path(prepared), epath.Path(copy))
    spec = prepare.corpus_spec(small_config(**corpus).data)
    _, loaded = prepare.load(str(copy), spec, SMALL["model.vocab_size"], str(tmp_path / "cache"))
    with open(os.path.join(prepared, prepare.MANIFEST)) as f:
        assert loaded.num_tokens == json.load(f)["num_tokens"]
    assert loaded.path.startswith(str(copy))
    # A remote DIR (gs://...) is copied once into data.cache_dir, since the cache is memory-mapped.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prepare, "_is_local", lambda path: False)
        _, remote = prepare.load(str(copy), spec, SMALL["model.vocab_size"], str(tmp_path / "cache"))
    assert remote.path.startswith(str(tmp_path / "cache" / "prepared-"))
    assert remote.num_tokens == loaded.num_tokens

    other = train_tokenizer(
        ["alpha beta gamma delta."] * 50, tmp_path / "other", vocab_size=30, hard_vocab_limit=False
    )
    (copy / "spiece.model").write_bytes(pathlib.Path(other).read_bytes())
    with pytest.raises(prepare.PreparedCorpusError, match="does not match manifest.json"):
        prepare.load(str(copy), spec, SMALL["model.vocab_size"], str(tmp_path / "cache"))


def test_rerun_reuses_and_another_corpus_into_the_same_dir_is_refused(corpus, prepared, tmp_path, capsys):
    with open(os.path.join(prepared, prepare.MANIFEST)) as f:
        before = json.load(f)
    assert prepare.prepare(small_config(**corpus), prepared) == before
    assert "(reused)" in capsys.readouterr().out
    with pytest.raises(
        prepare.PreparedCorpusError, match=f"--output={prepared} holds another prepared corpus"
    ):
        prepare.prepare(small_config(**{**corpus, "data.format": "paragraphs"}), prepared)
