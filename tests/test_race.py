"""Tests for albert_jax.tasks.race: reader, HF mapping, features, metric, loss and bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from albert_jax.tasks.base import DataError
from albert_jax.tasks.race import (
    RaceExample,
    RaceTask,
    build_qa,
    examples_from_hf,
    race_features,
    read_race_dir,
)
from albert_jax.tokenizer import AlbertTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
RACE_DIR = FIXTURES / "race"
TOKENIZER = AlbertTokenizer(FIXTURES / "tokenizer" / "spiece.model")


@pytest.fixture(scope="module")
def train_examples() -> list[RaceExample]:
    return RaceTask(str(RACE_DIR)).read("train")


def test_task_attributes():
    task = RaceTask(None)
    assert (task.name, task.head, task.num_labels, task.selection_metric) == (
        "race",
        "AlbertForMultipleChoice",
        4,
        "accuracy",
    )
    assert task.splits() == {"train": "train", "dev": "eval", "test": "eval"}


def test_read_train_fixture(train_examples):
    # middle before high; 10.txt after 1.txt (numeric order); one example per question.
    assert [(e.example_id, e.level, e.label) for e in train_examples] == [
        ("middle/1.txt-0", "middle", 1),
        ("middle/1.txt-1", "middle", 2),
        ("middle/10.txt-0", "middle", 2),
        ("high/1.txt-0", "high", 1),
        ("high/1.txt-1", "high", 0),
        ("high/10.txt-0", "high", 1),
    ]
    first = train_examples[0]
    assert first.article.startswith("Tom has a red bike.")
    assert first.question == "What colour is Tom's bike?"
    assert first.options == ("Blue.", "Red.", "Green.", "Black.")
    assert train_examples[1].question == "Amy goes to school _ ."


@pytest.mark.parametrize(
    "split, first_id", [("train", "middle/1.txt-0"), ("dev", "middle/10.txt-0"), ("test", "middle/1.txt-0")]
)
@pytest.mark.parametrize("root", [RACE_DIR, RACE_DIR / "RACE"])
def test_read_every_split_from_either_root(split, first_id, root):
    examples = RaceTask(str(root)).read(split)
    assert len(examples) == 6
    assert examples[0].example_id == first_id
    assert {e.level for e in examples} == {"middle", "high"}


@pytest.mark.parametrize(
    "question, option, expected",
    [
        ("Amy goes to school _ .", "on foot", "Amy goes to school on foot ."),
        ("_ is the best title.", "Sleep and Memory", "Sleep and Memory is the best title."),
        ("He _ and she _.", "ran", "He ran and she ran."),
        ("What colour is the bike?", "Red.", "What colour is the bike? Red."),
    ],
)
def test_build_qa(question, option, expected):
    assert build_qa(question, option) == expected


def _row(features, i: int, c: int) -> list[int]:
    ids = features.inputs["input_ids"][i, c]
    return ids[: features.inputs["attention_mask"][i, c].sum()].tolist()


def test_features_layout(train_examples):
    t = 96
    feats = RaceTask(str(RACE_DIR)).features(train_examples, TOKENIZER, t, training=True)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert feats.inputs[name].shape == (6, 4, t) and feats.inputs[name].dtype == np.int32
    assert feats.inputs["labels"].tolist() == [e.label for e in train_examples]
    assert feats.inputs["labels"].dtype == np.int32
    cls, sep = TOKENIZER.cls_token_id, TOKENIZER.sep_token_id
    for i, ex in enumerate(train_examples):
        article = TOKENIZER.encode(ex.article)
        for c, option in enumerate(ex.options):
            qa = TOKENIZER.encode(build_qa(ex.question, option))
            ctx = article[: t - 3 - len(qa)]
            expected = [cls, *ctx, sep, *qa, sep]
            assert _row(feats, i, c) == expected
            n = len(expected)
            assert (feats.inputs["input_ids"][i, c, n:] == TOKENIZER.pad_token_id).all()
            types = feats.inputs["token_type_ids"][i, c]
            assert types[: len(ctx) + 2].sum() == 0 and (types[len(ctx) + 2 : n] == 1).all()
            assert types[n:].sum() == 0


def test_qa_keeps_its_last_tokens():
    question = "which of these words comes at the very end of this rather long question about the story _ ?"
    ex = RaceExample("high/1.txt-0", "high", "the article " * 50, question, ("a", "b", "c", "d"), 0)
    t, max_qa = 40, 6
    feats = race_features([ex], TOKENIZER, t, max_qa_length=max_qa)
    sep = TOKENIZER.sep_token_id
    for c, option in enumerate(ex.options):
        qa = TOKENIZER.encode(build_qa(question, option))
        assert len(qa) > max_qa
        row = _row(feats, 0, c)
        assert len(row) == t  # the article fills the rest
        assert row[-max_qa - 1 : -1] == qa[-max_qa:] and row[-1] == sep
        assert row[1 : t - max_qa - 2] == TOKENIZER.encode(ex.article)[: t - 3 - max_qa]


def test_qa_longer_than_the_sequence_is_capped():
    ex = RaceExample("high/1.txt-0", "high", "an article", "word " * 40, ("a", "b", "c", "d"), 0)
    feats = race_features([ex], TOKENIZER, 16, max_qa_length=128)
    row = _row(feats, 0, 0)
    assert len(row) == 16 and row[:2] == [TOKENIZER.cls_token_id, TOKENIZER.sep_token_id]


def test_evaluate_accuracy_and_predictions_file(train_examples, tmp_path):
    task = RaceTask(str(RACE_DIR))
    feats = task.features(train_examples, TOKENIZER, 64, training=False)
    logits = np.random.default_rng(0).normal(size=(len(train_examples), 4)).astype(np.float32)
    metrics = task.evaluate("dev", train_examples, feats, {"logits": logits}, str(tmp_path))
    pred = logits.argmax(-1)
    labels = np.array([e.label for e in train_examples])
    level = np.array([e.level for e in train_examples])
    assert metrics == pytest.approx(
        {
            "accuracy": np.mean(pred == labels),
            "accuracy_middle": np.mean((pred == labels)[level == "middle"]),
            "accuracy_high": np.mean((pred == labels)[level == "high"]),
        }
    )
    lines = (tmp_path / "dev.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id\tprediction"
    assert lines[1:] == [f"{e.example_id}\t{'ABCD'[p]}" for e, p in zip(train_examples, pred)]


def test_evaluate_perfect_logits(train_examples):
    logits = np.eye(4, dtype=np.float32)[[e.label for e in train_examples]]
    metrics = RaceTask(None).evaluate("dev", train_examples, None, {"logits": logits}, None)
    assert metrics == {"accuracy": 1.0, "accuracy_middle": 1.0, "accuracy_high": 1.0}


@pytest.mark.parametrize("predictions, warns", [([2, 2, 2], True), ([0, 1, 0], False), ([3], False)])
def test_degenerate(predictions, warns):
    logits = np.eye(4, dtype=np.float32)[predictions]
    warning = RaceTask(None).degenerate({"logits": logits}, "dev")
    assert (warning is not None) == warns
    if warns:
        assert "'C' on dev" in warning and "\n" not in warning


def test_loss_and_outputs():
    task = RaceTask(None)
    logits = jnp.array([[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 0.0, 3.0]])
    labels = jnp.array([1, 2], jnp.int32)
    out = type("Out", (), {"logits": logits})()
    loss, weight = task.loss(out, {"labels": labels})
    expected = -jax.nn.log_softmax(logits)[jnp.arange(2), labels]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_array_equal(weight, [1.0, 1.0])
    assert task.outputs(out, {})["logits"].shape == (2, 4)


def test_hf_mapping_matches_the_reader():
    rows = {"example_id": [], "article": [], "question": [], "options": [], "answer": []}
    for path in sorted((RACE_DIR / "RACE" / "dev" / "high").glob("*.txt")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for q, o, a in zip(data["questions"], data["options"], data["answers"]):
            rows["example_id"].append(data["id"])  # e.g. "high10.txt", repeated per question
            rows["article"].append(data["article"])
            rows["question"].append(q)
            rows["options"].append(o)
            rows["answer"].append(a)
    examples = examples_from_hf(datasets.Dataset.from_dict(rows))
    expected = [e for e in RaceTask(str(RACE_DIR)).read("dev") if e.level == "high"]
    assert examples == expected


def test_hf_mapping_without_a_level():
    ds = datasets.Dataset.from_dict(
        {
            "example_id": ["x1"],
            "article": ["a"],
            "question": ["q"],
            "options": [["1", "2", "3", "4"]],
            "answer": ["D"],
        }
    )
    [ex] = examples_from_hf(ds)
    assert (ex.example_id, ex.level, ex.label) == ("x1-0", "", 3)


def _article(**overrides) -> dict:
    data = {
        "article": "An article.",
        "questions": ["Which?"],
        "options": [["a", "b", "c", "d"]],
        "answers": ["A"],
        "id": "high1.txt",
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "bad JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (json.dumps(_article(answers=["E"])).encode(), "answer 'E' is not one of A, B, C, D"),
        (json.dumps(_article(options=[["a", "b", "c"]])).encode(), "expected 4 options, got 3"),
        (json.dumps(_article(answers=["A", "B"])).encode(), "1 questions, 1 option lists and 2 answers"),
        (json.dumps({"article": "x"}).encode(), "missing key(s) questions, options, answers"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_file(tmp_path, content, message):
    (tmp_path / "dev" / "high").mkdir(parents=True)
    path = tmp_path / "dev" / "high" / "7.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        RaceTask(str(tmp_path)).read("dev")
    assert message in str(info.value) and "7.txt" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "layout, message",
    [
        ([], "split directory not found"),
        (["dev"], "neither a middle/ nor a high/"),
        (["dev/middle", "dev/high"], "no .txt files"),
    ],
)
def test_bad_layout(tmp_path, layout, message):
    for d in layout:
        (tmp_path / d).mkdir(parents=True)
    with pytest.raises(DataError, match=message):
        read_race_dir(tmp_path / "dev")


def test_one_level_only_is_read(tmp_path):
    (tmp_path / "dev" / "middle").mkdir(parents=True)
    (tmp_path / "dev" / "middle" / "3.txt").write_text(json.dumps(_article()), encoding="utf-8")
    [ex] = RaceTask(str(tmp_path)).read("dev")
    assert (ex.example_id, ex.level, ex.label) == ("middle/3.txt-0", "middle", 0)
