"""Fine-tuning end to end: real GLUE data, learning, resume, export round trip, every task's wiring, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from test_pretrain import REPO, _snapshot, _wait_for_step, read_metrics, set_keys

from albert_jax import AlbertConfig, AlbertForPreTraining, init_params, save_pretrained, train_tokenizer
from albert_jax.training import finetune
from configs import glue as glue_configs
from configs import ner as ner_configs
from configs import race as race_configs
from configs import squad as squad_configs

SHARED_GLUE = os.path.join(os.path.dirname(REPO), "shared", "data", "glue")
needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED_GLUE), reason=f"real GLUE data not found at {SHARED_GLUE} (../shared is absent)"
)
FIXTURES = os.path.join(REPO, "tests", "fixtures")
TINY = dict(
    vocab_size=2000,
    embedding_size=32,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=128,
)


def make_hf_dir(path, texts=None):
    """A tiny random ALBERT in HF layout with a vocabulary (trained on `texts`, or the test fixture's)."""
    os.makedirs(path, exist_ok=True)
    if texts is None:
        shutil.copy(os.path.join(FIXTURES, "tokenizer", "spiece.model"), os.path.join(path, "spiece.model"))
    else:
        train_tokenizer(texts, os.path.join(path, "spiece"), vocab_size=TINY["vocab_size"])
    model = AlbertForPreTraining(AlbertConfig(**TINY))
    save_pretrained(path, model, nn.unbox(init_params(model, jax.random.key(0))))
    return str(path)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_dir(tmp_path_factory.mktemp("hf") / "albert-tiny")


def small(config, **overrides):
    """A config for a few steps of a tiny model."""
    # The same shapes and schedule everywhere, so that the session's compilation cache (conftest.py)
    # compiles each task's step once.
    settings = dict(
        max_seq_length=64,
        length_buckets=(64,),
        batch_size=4,
        eval_batch_size=4,
        total_steps=6,
        warmup_steps=1,
        log_every=2,
        eval_every=3,
        checkpoint_every=3,
        progress_bar=False,
        learning_rate=1e-3,
    )
    set_keys(config, {**settings, **overrides})
    return config


def glue_slice(tmp, task_dir, train_rows, dev_rows):
    """The first rows of a shared GLUE task (header kept) in a data_dir of our own."""
    out = tmp / "glue" / task_dir
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", train_rows), ("dev.tsv", dev_rows)):
        with open(os.path.join(SHARED_GLUE, task_dir, name), encoding="utf-8") as f:
            lines = [next(f) for _ in range(rows + 1)]
        (out / name).write_text("".join(lines), encoding="utf-8")
    return str(tmp / "glue")


def read_tsv(path):
    with open(path) as f:
        return [line.rstrip("\n").split("\t") for line in f]


# --- real data ------------------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize(
    "task,task_dir,metrics",
    [
        ("rte", "RTE", {"accuracy"}),
        ("sst2", "SST-2", {"accuracy"}),
        ("stsb", "STS-B", {"pearson", "spearmanr"}),
    ],
)
def test_real_glue_end_to_end_writes_every_output(tmp_path, hf_dir, task, task_dir, metrics):
    data_dir = glue_slice(tmp_path, task_dir, 64, 21)  # 21 dev rows: not a multiple of eval_batch_size
    workdir = str(tmp_path / "run")
    summary = finetune.run(
        small(glue_configs.get_config(f"task={task}"), init_from=hf_dir, data_dir=data_dir), workdir
    )
    assert set(summary["best"]["metrics"]["dev"]) >= metrics
    results = json.load(open(os.path.join(workdir, "eval_results.json")))
    assert set(results) == {"dev"} and set(results["dev"]) >= metrics
    for value in results["dev"].values():
        assert np.isnan(value) or -1.0 <= value <= 1.0  # fractions, not percentages
    assert summary["last"]["step"] == 6 and summary["best"]["step"] in (3, 6)
    rows = read_tsv(os.path.join(workdir, "predictions", "dev.tsv"))
    assert rows[0] == ["index", "prediction"] and [int(r[0]) for r in rows[1:]] == list(range(21))
    labels = {"rte": {"entailment", "not_entailment"}, "sst2": {"0", "1"}}.get(task)
    for _, prediction in rows[1:]:
        assert prediction in labels if labels else 0.0 <= float(prediction) + 10  # STS-B: a float score
    evals = [m for m in read_metrics(workdir) if "eval/dev/" + sorted(metrics)[0] in m]
    assert [m["step"] for m in evals] == [3, 6]
    for name in ("config.json", "model_config.json", "spiece.model", "best.json", "summary.json"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, "best")) == [str(summary["best"]["step"])]


@needs_shared
def test_learns_sst2_slice_beyond_majority_class(tmp_path):
    """A tiny random-init model (vocabulary trained on the slice) on 4000 SST-2 sentences, 600 steps
    (about 0.77 dev accuracy against a majority class of 0.58)."""
    data_dir = glue_slice(tmp_path, "SST-2", 4000, 600)
    texts = [r[0] for r in read_tsv(os.path.join(data_dir, "SST-2", "train.tsv"))[1:]]
    init = make_hf_dir(tmp_path / "hf", texts)
    config = small(
        glue_configs.get_config("task=sst2"),
        init_from=init,
        data_dir=data_dir,
        batch_size=32,
        eval_batch_size=64,
        length_buckets=(),
        total_steps=600,
        warmup_steps=60,
        learning_rate=5e-4,
        eval_every=300,
        checkpoint_every=600,
        log_every=50,
    )
    summary = finetune.run(config, str(tmp_path / "run"))
    dev = [r[1] for r in read_tsv(os.path.join(data_dir, "SST-2", "dev.tsv"))[1:]]
    majority = max(dev.count("0"), dev.count("1")) / len(dev)
    accuracy = summary["best"]["metrics"]["dev"]["accuracy"]
    assert accuracy > majority + 0.1, (accuracy, majority)
    losses = [m["train/loss"] for m in read_metrics(str(tmp_path / "run")) if "train/loss" in m]
    assert losses[-1] < losses[0] - 0.1


# --- every task's wiring, on fixtures ------------------------------------------------------------------


def _squad_file(path, version):
    context = "The Grimm brothers collected tales in Kassel. " * 6 + "Jacob was born in 1785 in Hanau."
    qas = [
        {
            "id": "q1",
            "question": "Where was Jacob born?",
            "answers": [{"text": "Hanau", "answer_start": context.index("Hanau")}],
        },
        {
            "id": "q2",
            "question": "When was Jacob born?",
            "answers": [{"text": "1785", "answer_start": context.index("1785")}],
        },
        {
            "id": "q3",
            "question": "Who collected tales?",
            "answers": [{"text": "The Grimm brothers", "answer_start": 0}],
        },
    ]
    if version == "2.0":
        for q in qas:
            q["is_impossible"] = False
        qas.append({"id": "q4", "question": "Who wrote Faust?", "answers": [], "is_impossible": True})
    data = {
        "version": version,
        "data": [{"title": "Grimm", "paragraphs": [{"context": context, "qas": qas * 4}]}],
    }
    for i, q in enumerate(data["data"][0]["paragraphs"][0]["qas"]):
        data["data"][0]["paragraphs"][0]["qas"][i] = dict(q, id=f"{q['id']}-{i}")
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("squad1.1", ["predictions.json", "nbest_predictions.json"]),
        ("squad2.0", ["predictions.json", "nbest_predictions.json", "null_odds.json"]),
        ("squad2.0-albert_v2", ["predictions.json", "nbest_predictions.json", "null_odds.json"]),
        ("race", ["dev.tsv", "test.tsv"]),
        ("ner", ["dev.txt", "test.txt"]),
    ],
)
def test_each_task_runs_through_the_loop(tmp_path, hf_dir, name, expected):
    if name.startswith("squad"):
        version = name[5:8]
        config = squad_configs.get_config(f"version={version}")
        squad = _squad_file(tmp_path / "squad.json", version)
        config.train_file = config.predict_file = squad
        config.doc_stride, config.max_query_length = 16, 16
        if name.endswith("albert_v2"):
            config.qa_head = "albert_v2"
        metric = "f1"
    elif name == "race":
        config, metric = race_configs.get_config(), "accuracy"
        config.data_dir = os.path.join(FIXTURES, "race")
    else:
        config, metric = ner_configs.get_config(), "f1"
        config.data_dir = os.path.join(FIXTURES, "conll")
    workdir = str(tmp_path / "run")
    summary = finetune.run(small(config, init_from=hf_dir), workdir)
    assert metric in summary["best"]["metrics"]["dev"]
    assert sorted(os.listdir(os.path.join(workdir, "predictions"))) == sorted(expected)
    if name.startswith("squad"):
        predictions = json.load(open(os.path.join(workdir, "predictions", "predictions.json")))
        assert len(predictions) == (16 if version == "2.0" else 12)  # one answer per question, none dropped


# --- resume, seeds, export -------------------------------------------------------------------------------


# `--config.key=value` overrides for a few steps of a tiny fine-tuning run from the command line.
CLI_SMALL = dict(
    max_seq_length=64,
    length_buckets="(64,)",
    batch_size=4,
    eval_batch_size=4,
    total_steps=12,
    warmup_steps=2,
    log_every=1,
    eval_every=4,
    checkpoint_every=4,
    progress_bar=False,
    learning_rate=1e-3,
)


def _cli(workdir, init, data_dir, **overrides):
    settings = {**CLI_SMALL, "init_from": init, "data_dir": data_dir, **overrides}
    return [
        sys.executable,
        os.path.join(REPO, "train.py"),
        "--config=configs/glue.py:task=rte",
        f"--workdir={workdir}",
    ] + [f"--config.{k}={v}" for k, v in settings.items()]


@pytest.fixture(scope="module")
def rte_fixture_dir():
    return os.path.join(FIXTURES, "glue")


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_final_metrics(tmp_path, hf_dir, rte_fixture_dir):
    reference = str(tmp_path / "reference")
    subprocess.run(_cli(reference, hf_dir, rte_fixture_dir), check=True, cwd=REPO, capture_output=True)
    workdir = str(tmp_path / "killed")
    proc = subprocess.Popen(
        _cli(workdir, hf_dir, rte_fixture_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for_step(workdir, 6, proc)  # past the step-4 evaluation and checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(_cli(workdir, hf_dir, rte_fixture_dir), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("eval_results.json", "best.json"):
        assert json.load(open(os.path.join(workdir, name))) == json.load(
            open(os.path.join(reference, name))
        ), name
    ref = {m["step"]: m for m in read_metrics(reference) if "train/loss" in m}
    got = {m["step"]: m for m in read_metrics(workdir) if "train/loss" in m}
    assert sorted(got) == sorted(ref) == list(range(1, 13))
    assert all(got[s]["train/loss"] == ref[s]["train/loss"] for s in ref)
    assert (
        open(os.path.join(workdir, "predictions", "dev.tsv")).read()
        == open(os.path.join(reference, "predictions", "dev.tsv")).read()
    )


def test_num_seeds_reports_mean_and_std(tmp_path, hf_dir, rte_fixture_dir):
    config = small(
        glue_configs.get_config("task=rte"), init_from=hf_dir, data_dir=rte_fixture_dir, num_seeds=2
    )
    summary = finetune.run(config, str(tmp_path / "run"))
    assert summary["seeds"] == [0, 1]
    acc = summary["best"]["dev"]["accuracy"]
    assert len(acc["values"]) == 2 and acc["mean"] == pytest.approx(np.mean(acc["values"]))
    assert acc["std"] == pytest.approx(np.std(acc["values"]))
    for k in (0, 1):
        assert os.path.exists(tmp_path / "run" / f"seed_{k}" / "eval_results.json")
    top = json.load(open(tmp_path / "run" / "eval_results.json"))
    assert top["dev"]["accuracy"] == pytest.approx(acc["mean"])


@pytest.mark.parametrize(
    "task,head", [("rte", "AlbertForSequenceClassification"), ("stsb", "AlbertForSequenceClassification")]
)
def test_export_round_trip_matches_transformers(tmp_path, hf_dir, task, head, rte_fixture_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from albert_jax import from_pretrained
    from albert_jax.export import main as export_main
    from albert_jax.tokenizer import AlbertTokenizer

    workdir = str(tmp_path / "run")
    finetune.run(
        small(glue_configs.get_config(f"task={task}"), init_from=hf_dir, data_dir=rte_fixture_dir), workdir
    )
    out = str(tmp_path / "hf")
    assert export_main([workdir, out, "--best"]) == 0
    hf, info = getattr(transformers, head).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert hf.config.num_labels == (1 if task == "stsb" else 2)
    # id2label names the task's classes (what a transformers pipeline prints); STS-B is a score.
    names = {"rte": ("entailment", "not_entailment"), "stsb": ("LABEL_0",)}[task]
    assert hf.config.id2label == dict(enumerate(names)) and hf.config.label2id == {
        n: i for i, n in enumerate(names)
    }
    tok = AlbertTokenizer.from_pretrained(out)
    enc = tok(
        ["A man plays a guitar.", "Nobody is here"],
        ["A man plays music.", "The room is full."],
        padding=True,
        return_tensors="np",
    )
    model, params = from_pretrained(out, head)
    assert model.config.label_names == (names if task == "rte" else ())  # read back
    ours = model.apply(
        {"params": params}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    ).logits
    with torch.no_grad():
        theirs = hf.eval()(**{k: torch.tensor(v, dtype=torch.long) for k, v in enc.items()}).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # The exported weights are the best checkpoint's, not fresh ones.
    best = json.load(open(os.path.join(workdir, "best.json")))
    assert best["step"] in (3, 6)


# --- bad input: one line on stderr, exit 1, WORKDIR untouched -----------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, hf_dir):
    tmp = tmp_path_factory.mktemp("finished")
    workdir = str(tmp / "run")
    finetune.run(
        small(glue_configs.get_config("task=rte"), init_from=hf_dir, data_dir=os.path.join(FIXTURES, "glue")),
        workdir,
    )
    return tmp, workdir


def _bad_rte(tmp, name, train_text):
    d = tmp / name / "RTE"
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.tsv").write_text(train_text)
    shutil.copy(os.path.join(FIXTURES, "glue", "RTE", "dev.tsv"), d / "dev.tsv")
    return str(tmp / name)


BAD = {
    "unknown task": ("--config=configs/glue.py:task=nope", "unknown task 'nope'"),
    "missing columns": ("columns", "sentence2"),
    "label outside the label set": ("label", "maybe"),
    "empty file": ("empty", "empty"),
    "missing init_from": ("--config.init_from=/nonexistent/albert", "/nonexistent/albert"),
    "wrong init_from": ("wrong_init", "neither an HF directory"),
    "no init_from": ("--config.init_from=", "init_from"),
    "squad without data": ("squad", "data"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_line_and_destroys_nothing(finished_run, hf_dir, case):
    tmp, workdir = finished_run
    arg, needle = BAD[case]
    data_dir = os.path.join(FIXTURES, "glue")
    config = "--config=configs/glue.py:task=rte"
    extra = []
    if case == "missing columns":
        data_dir = _bad_rte(tmp, "cols", "index\tsentence1\tlabel\n0\tA.\tentailment\n")
    elif case == "label outside the label set":
        data_dir = _bad_rte(tmp, "label", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tmaybe\n")
    elif case == "empty file":
        data_dir = _bad_rte(tmp, "empty", "")
    elif case == "wrong init_from":
        extra = [f"--config.init_from={tmp}"]
    elif case == "squad without data":
        (tmp / "nodata.json").write_text(json.dumps({"version": "1.1"}))
        config = "--config=configs/squad.py:version=1.1"
        extra = [f"--config.train_file={tmp / 'nodata.json'}", f"--config.predict_file={tmp / 'nodata.json'}"]
    elif arg.startswith("--config="):
        config = arg
    else:
        extra = [arg]
    args = [
        sys.executable,
        os.path.join(REPO, "train.py"),
        config,
        f"--workdir={workdir}",
        f"--config.init_from={hf_dir}",
        "--config.max_seq_length=64",
        # The drift gate runs first and would refuse the changed data_dir/init_from on this WORKDIR;
        # past it, the bad input itself must be the one error line.
        "--config.allow_config_change=true",
    ]
    if "squad" not in case:
        args.append(f"--config.data_dir={data_dir}")
    before = _snapshot(workdir)
    proc = subprocess.run(args + extra, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
    assert _snapshot(workdir) == before


def test_mnli_scores_both_dev_sets_and_writes_glue_server_files(tmp_path, hf_dir):
    """MNLI: dev_matched and dev_mismatched scored separately; test sets and AX (predicted by the MNLI
    model) written in the GLUE server's format from the best checkpoint."""
    workdir = str(tmp_path / "run")
    config = small(
        glue_configs.get_config("task=mnli"), init_from=hf_dir, data_dir=os.path.join(FIXTURES, "glue")
    )
    summary = finetune.run(config, workdir)
    assert set(summary["best"]["metrics"]) == {"dev_matched", "dev_mismatched"}
    predictions = os.path.join(workdir, "predictions")
    for name in ("MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv", "test_matched.tsv", "dev_mismatched.tsv"):
        rows = read_tsv(os.path.join(predictions, name))
        assert rows[0] == ["index", "prediction"] and len(rows) > 1, name
        assert {r[1] for r in rows[1:]} <= {"entailment", "neutral", "contradiction"}, name
    ax = read_tsv(os.path.join(FIXTURES, "glue", "diagnostic", "diagnostic.tsv"))
    assert len(read_tsv(os.path.join(predictions, "AX.tsv"))) == len(ax)  # one row per AX pair (+ headers)
