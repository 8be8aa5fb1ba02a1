"""Tests for albert_jax.tasks.glue: reading the official TSVs, metrics, features, prediction files.

The fixtures under `fixtures/glue/` follow the official GLUE download layout and formats, a few rows
per split file, each file with at least one stray `"`.
"""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import datasets
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from albert_jax.modeling import ClassifierOutput
from albert_jax.tasks import glue
from albert_jax.tasks.base import DataError, Features
from albert_jax.tokenizer import AlbertTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "glue"
SPIECE = Path(__file__).parent / "fixtures" / "tokenizer" / "spiece.model"


@pytest.fixture(scope="module")
def tokenizer() -> AlbertTokenizer:
    return AlbertTokenizer(str(SPIECE))


# --- the table --------------------------------------------------------------------------------------


def test_table_has_every_task():
    assert list(glue.TASKS) == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "ax"]
    dirs = [s.dir for s in glue.TASKS.values()]
    assert dirs == ["CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI", "diagnostic"]
    assert {s.name: glue.GlueTask(s.name).num_labels for s in glue.TASKS.values()} == {
        "cola": 2, "sst2": 2, "mrpc": 2, "stsb": 1, "qqp": 2,
        "mnli": 3, "qnli": 2, "rte": 2, "wnli": 2, "ax": 3,
    }  # fmt: skip
    assert glue.TASKS["ax"].labels == glue.TASKS["mnli"].labels == ("contradiction", "entailment", "neutral")
    selection = {s.name: s.selection_metric for s in glue.TASKS.values() if s.name != "ax"}
    assert selection == {n: "accuracy" for n in selection} | {
        "cola": "matthews_correlation",
        "stsb": "pearson",
    }


@pytest.mark.parametrize(
    "task, split, name",
    [
        ("cola", "test", "CoLA.tsv"),
        ("sst2", "test", "SST-2.tsv"),
        ("mrpc", "test", "MRPC.tsv"),
        ("stsb", "test", "STS-B.tsv"),
        ("qqp", "test", "QQP.tsv"),
        ("mnli", "test_matched", "MNLI-m.tsv"),
        ("mnli", "test_mismatched", "MNLI-mm.tsv"),
        ("qnli", "test", "QNLI.tsv"),
        ("rte", "test", "RTE.tsv"),
        ("wnli", "test", "WNLI.tsv"),
        ("ax", "test", "AX.tsv"),
    ],
)
def test_submission_file(task, split, name):
    assert glue.submission_file(task, split) == name


def test_submission_file_of_a_dev_split_is_an_error():
    with pytest.raises(DataError, match="submits only test_matched, test_mismatched"):
        glue.submission_file("mnli", "dev_matched")


def test_task_name_aliases():
    assert glue.get_spec("SST-2").name == "sst2"
    assert glue.get_spec("sts-b").name == "stsb"


# --- reading the fixtures ---------------------------------------------------------------------------

# (task, split) -> (row count, {index: (text_a, text_b, label)}) for some rows, stray quotes included.
EXPECTED = {
    ("cola", "train"): (4, {
        0: ("Our friends won't buy this analysis, let alone the next one we propose.", None, "1"),
        1: ("They drank the pub.", None, "0"),
        2: ('He said "hello to everyone.', None, "1"),
    }),
    ("cola", "dev"): (3, {1: ('The "cat sat on.', None, "0"), 2: ("Mary sang a song.", None, "1")}),
    ("cola", "test"): (3, {1: ('The car honked "down the road.', None, None)}),
    ("sst2", "train"): (4, {2: ('that loves its characters and " communicates something ', None, "1")}),
    ("sst2", "dev"): (3, {0: ("it 's a charming and often affecting journey . ", None, "1"),
                          1: ('unflinchingly " bleak and desperate ', None, "0")}),
    ("sst2", "test"): (3, {2: ("by the end of no such thing the audience feels a tad beaten .", None, None)}),
    ("mrpc", "train"): (3, {0: (
        'Amrozi accused his brother , whom he called " the witness " , of lying .',
        'Referring to him as only " the witness " , Amrozi accused his brother of lying .',
        "1",
    ), 1: (
        "Yucaipa owned Dominick 's before selling the chain in 1998 .",
        "Yucaipa bought Dominick 's in 1995 and sold it to Safeway .",
        "0",
    )}),
    ("mrpc", "dev"): (3, {2: (
        "The dollar was at 116.92 yen against the yen .",
        "The dollar was at 116.78 yen JPY = , virtually flat .",
        "0",
    )}),
    ("mrpc", "test"): (2, {0: (
        "PCCW 's chief operating officer will also be on the board .",
        'Current Chief Operating Officer " Mike Butcher will report to Mr Moore .',
        None,
    )}),
    ("stsb", "train"): (3, {1: ("A man is playing a large flute.", "A man is playing a flute.", 3.8),
                            2: ('He said "no.', "Nobody spoke.", 0.0)}),
    ("stsb", "dev"): (3, {1: ('A young child is "riding a horse.', "A child is riding a horse.", 4.75)}),
    ("stsb", "test"): (2, {0: ("A girl is styling her hair.", 'A girl is brushing her "hair.', None)}),
    # Row 2 of QQP train has missing fields and is skipped; indices keep the file's row order.
    ("qqp", "train"): (3, {
        1: ("How do I control my horny emotions?", 'How do you control your "horniness?', "1"),
        3: ("What causes stool color to change?", "What can cause stool to come out as black?", "0"),
    }),
    ("qqp", "dev"): (3, {2: (
        "Is there a reason why we should travel alone?", "What are some reasons to travel alone?", "1"
    )}),
    ("qqp", "test"): (2, {1: (
        'Which "one dissolve in water quikly?', "Which fish would survive in salt water?", None
    )}),
    ("mnli", "train"): (3, {2: ('He said "no and left.', "He stayed.", "contradiction")}),
    ("mnli", "dev_matched"): (3, {0: (
        "The new rights are nice enough", "Everyone really likes the newest benefits", "neutral"
    ), 2: (
        "uh i don't know i i have mixed emotions about him",
        "I like him for the most part, but would still enjoy seeing someone beat him.",
        "entailment",
    )}),
    ("mnli", "dev_mismatched"): (2, {1: (
        'The answer "has nothing to do with their cause.', "Dictionary editors are not guided by the cause.",
        "entailment",
    )}),
    ("mnli", "test_matched"): (2, {1: (
        "The extent of the behavioral effects would depend in part on the structure.",
        "Changes in the structure would affect the extent.",
        None,
    )}),
    ("mnli", "test_mismatched"): (2, {0: (
        'What have you decided, what are you "going to do?', "So what's your decision?", None
    )}),
    ("qnli", "train"): (3, {2: (
        "What two things does Popper argue Tarski's theory involves?",
        "He bases this interpretation on the fact that Tarski's theory involves two things.",
        "entailment",
    )}),
    ("qnli", "dev"): (2, {1: (
        'What is the first major "city in the stream of the Rhine?',
        "The most important tributaries in this area are the Ill below of Strasbourg.",
        "not_entailment",
    )}),
    ("qnli", "test"): (2, {0: (
        "What organization is devoted to Jihad against Israel?",
        'For some decades prior to the First Palestine Intifada, "the Muslim Brotherhood grew.',
        None,
    )}),
    ("rte", "train"): (3, {0: (
        "No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.",
        "not_entailment",
    )}),
    # The file's own index column (57, 81, 99) is not the row index.
    ("rte", "dev"): (3, {1: (
        'Yet, we now are discovering that "antibiotics are losing their effectiveness.',
        "Bacteria is winning the war against antibiotics.",
        "entailment",
    ), 2: (
        "Cairo is now home to some 15 million people.", "15 million people live in Cairo.", "entailment"
    )}),
    ("rte", "test"): (2, {0: (
        "Mangla was summoned after Madhumita's sister Nidhi Shukla lodged a complaint.",
        'Shukla is related to "Mangla.',
        None,
    )}),
    ("wnli", "train"): (3, {2: (
        'The police arrested all of the gang members. They were trying to "stop the drug trade.',
        "The police were trying to stop the drug trade.",
        "0",
    )}),
    ("wnli", "dev"): (2, {1: (
        'Jane knocked on Susan\'s door but she did not answer. "She was out.', "Susan did not answer.", "1"
    )}),
    ("wnli", "test"): (2, {1: (
        "The trophy doesn't fit into the suitcase because it is too small.",
        "The suitcase is too small.",
        None,
    )}),
    ("ax", "test"): (3, {1: ('The "cat sat on the mat.', "The cat sat on the mat.", None)}),
}  # fmt: skip


def test_expected_covers_every_split_file():
    assert set(EXPECTED) == {(t, s) for t, spec in glue.TASKS.items() for s in spec.files}


@pytest.mark.parametrize("task, split", list(EXPECTED), ids=[f"{t}-{s}" for t, s in EXPECTED])
def test_read_fixture(task, split):
    count, rows = EXPECTED[(task, split)]
    examples = glue.read_split(task, str(FIXTURES), split)
    assert len(examples) == count
    by_index = {e.index: e for e in examples}
    assert len(by_index) == count
    for index, (text_a, text_b, label) in rows.items():
        assert by_index[index] == glue.GlueExample(index, text_a, text_b, label)
    if task != "qqp" or split == "test":
        assert [e.index for e in examples] == list(range(count))


@pytest.mark.parametrize("task, folder", [("rte", "RTE"), ("mnli", "MNLI"), ("ax", "diagnostic")])
def test_data_dir_may_be_the_task_folder(task, folder):
    for split in glue.TASKS[task].files:
        assert glue.read_split(task, str(FIXTURES / folder), split) == glue.read_split(
            task, str(FIXTURES), split
        )


def test_qqp_test_row_with_missing_fields_is_an_error(tmp_path):
    (tmp_path / "test.tsv").write_text(
        "id\tquestion1\tquestion2\n0\tWhat?\tWhy?\n1\tHow?\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"test\.tsv, line 3: 2 tab-separated fields, need at least 3"):
        glue.read_split("qqp", str(tmp_path), "test")


# --- bad input --------------------------------------------------------------------------------------

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
STSB_HEADER = b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
BAD_FILES = {
    "empty file": ("rte", "train.tsv", b"", r"train\.tsv is empty"),
    "header only": ("rte", "train.tsv", RTE_HEADER.encode(), r"train\.tsv has a header but no data rows"),
    "empty headerless file": ("cola", "train.tsv", b"", r"train\.tsv is empty"),
    "missing column": (
        "rte", "train.tsv", b"index\tsentence1\tsentence2\n0\ta\tb\n",
        r"line 1: header lacks column\(s\) 'label'",
    ),
    "mnli without gold_label": (
        "mnli", "dev_matched.tsv", b"index\tsentence1\tsentence2\tlabel1\n0\ta\tb\tneutral\n",
        r"dev_matched\.tsv, line 1: header lacks column\(s\) 'gold_label'",
    ),
    "too few fields": (
        "rte", "train.tsv", (RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\n").encode(),
        r"train\.tsv, line 3: 3 tab-separated fields, need at least 4 for the GLUE RTE format",
    ),
    "headerless too few fields": (
        "cola", "train.tsv", b"gj04\t1\t\tFine.\ngj04\t1\n",
        r"line 2: 2 tab-separated fields, need at least 4",
    ),
    "label outside the set": (
        "rte", "train.tsv", (RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\tneutral\n").encode(),
        r"line 3: label 'neutral' is not one of \['entailment', 'not_entailment'\]",
    ),
    "cola label outside the set": (
        "cola", "dev.tsv", b"gj04\t2\t\tFine.\n", r"dev\.tsv, line 1: label '2' is not one of \['0', '1'\]"
    ),
    "non-UTF-8 bytes": (
        "rte", "train.tsv", RTE_HEADER.encode() + b"0\tcaf\xe9\tb\tentailment\n",
        r"train\.tsv, line 2: byte 0xe9 at column 6 is not UTF-8",
    ),
    "non-float score": (
        "stsb", "train.tsv",
        STSB_HEADER + b"0\tg\tf\ty\t1\tnone\tnone\ta\tb\tfive\n",
        r"line 2: score 'five' is not a number in \[0, 5\]",
    ),
    "score out of range": (
        "stsb", "dev.tsv",
        STSB_HEADER + b"0\tg\tf\ty\t1\tnone\tnone\ta\tb\t5.5\n",
        r"line 2: score '5.5' is not a number in \[0, 5\]",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file(tmp_path, case):
    task, name, content, pattern = BAD_FILES[case]
    folder = tmp_path / glue.TASKS[task].dir
    folder.mkdir()
    (folder / name).write_bytes(content)
    split = name.removesuffix(".tsv")
    with pytest.raises(DataError, match=pattern) as info:
        glue.read_split(task, str(tmp_path), split)
    assert "\n" not in str(info.value)
    assert str(folder / name) in str(info.value)


def test_missing_file_names_path_and_layout(tmp_path):
    (tmp_path / "RTE").mkdir()
    with pytest.raises(DataError, match="GLUE download script") as info:
        glue.read_split("rte", str(tmp_path), "dev")
    assert f"{tmp_path / 'RTE' / 'dev.tsv'} not found" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        glue.read_split("rte", str(tmp_path / "nowhere"), "train")


def test_unknown_task():
    with pytest.raises(DataError, match=r"unknown GLUE task 'squad'; valid names: cola, sst2, .*, wnli, ax"):
        glue.GlueTask("squad", str(FIXTURES))


def test_unknown_split():
    with pytest.raises(DataError, match=r"no split 'dev'; its splits: train, dev_matched"):
        glue.read_split("mnli", str(FIXTURES), "dev")


# --- metrics ----------------------------------------------------------------------------------------


def _random_labels(task: str, rng: np.random.Generator, n: int) -> list:
    spec = glue.TASKS[task]
    if not spec.labels:
        return list(np.round(rng.uniform(0, 5, n), 3))
    return list(rng.choice(spec.labels, n))


@pytest.mark.parametrize("task", list(glue.TASKS))
def test_metrics_match_sklearn_and_scipy(task):
    rng = np.random.default_rng(sum(map(ord, task)))
    preds, gold = _random_labels(task, rng, 50), _random_labels(task, rng, 50)
    got = glue.metrics(task, preds, gold)
    expected = {
        "accuracy": lambda: skm.accuracy_score(gold, preds),
        "f1": lambda: skm.f1_score(gold, preds, pos_label="1"),
        "matthews_correlation": lambda: skm.matthews_corrcoef(gold, preds),
        "pearson": lambda: stats.pearsonr(preds, gold)[0],
        "spearmanr": lambda: stats.spearmanr(preds, gold)[0],
    }
    assert set(got) == set(glue.TASKS[task].metrics)
    for name, value in got.items():
        assert value == pytest.approx(expected[name](), abs=1e-12), name
        assert -1 <= value <= 1


def test_metrics_accept_class_ids():
    labels = ["entailment", "neutral", "contradiction", "neutral"]
    ids = [1, 2, 0, 0]  # MNLI ids: contradiction, entailment, neutral
    assert glue.metrics("mnli", ids, labels) == {"accuracy": 0.75}


def test_cola_mcc_by_hand():
    # TP=2 TN=2 FP=1 FN=1: (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3.
    gold = ["1", "1", "1", "0", "0", "0"]
    preds = ["1", "1", "0", "0", "0", "1"]
    assert glue.metrics("cola", preds, gold) == {"matthews_correlation": pytest.approx(1 / 3)}


def test_mrpc_metrics_by_hand():
    gold = ["1", "1", "0", "0"]
    preds = ["1", "0", "0", "1"]  # precision 1/2, recall 1/2
    assert glue.metrics("mrpc", preds, gold) == {"accuracy": 0.5, "f1": 0.5}


def test_degenerate_metrics_do_not_crash_or_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constant = glue.metrics("stsb", [2.5, 2.5, 2.5], [1.0, 2.0, 4.0])
        one_row = glue.metrics("stsb", [2.5], [1.0])
        empty = glue.metrics("rte", [], [])
        all_negative = glue.metrics("qqp", ["0", "0", "0"], ["1", "0", "1"])
        cola_constant = glue.metrics("cola", ["1", "1", "1"], ["1", "0", "1"])
    assert math.isnan(constant["pearson"]) and math.isnan(constant["spearmanr"])
    assert math.isnan(one_row["pearson"]) and math.isnan(one_row["spearmanr"])
    assert math.isnan(empty["accuracy"])
    assert all_negative == {"accuracy": pytest.approx(1 / 3), "f1": 0.0}
    assert cola_constant == {"matthews_correlation": 0.0}


def test_metrics_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        glue.metrics("rte", ["entailment"] * 2, ["entailment"] * 3)


# --- features, loss, outputs ------------------------------------------------------------------------


def test_features_single_sentence(tokenizer):
    task = glue.GlueTask("sst2", str(FIXTURES))
    examples = task.read("dev")
    feats = task.features(examples, tokenizer, max_seq_length=32, training=False)
    assert isinstance(feats, Features) and len(feats) == 3
    inputs = feats.inputs
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert inputs[key].shape == (3, 32) and inputs[key].dtype == np.int32
    np.testing.assert_array_equal(inputs["labels"], [1, 0, 1])
    assert inputs["labels"].dtype == np.int32
    assert not inputs["token_type_ids"].any()
    for ids, mask, example in zip(inputs["input_ids"], inputs["attention_mask"], examples):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        assert n == len(tokenizer.encode(example.text_a)) + 2
        assert ids[0] == tokenizer.cls_token_id and ids[n - 1] == tokenizer.sep_token_id
        assert (ids[n:] == tokenizer.pad_token_id).all()


def test_features_pair_token_types(tokenizer):
    task = glue.GlueTask("rte", str(FIXTURES))
    examples = task.read("dev")
    inputs = task.features(examples, tokenizer, max_seq_length=64, training=True).inputs
    for types, mask, example in zip(inputs["token_type_ids"], inputs["attention_mask"], examples):
        len_a, len_b = len(tokenizer.encode(example.text_a)), len(tokenizer.encode(example.text_b))
        assert int(mask.sum()) == len_a + len_b + 3
        np.testing.assert_array_equal(types[: len_a + 2], 0)
        np.testing.assert_array_equal(types[len_a + 2 : len_a + len_b + 3], 1)
        assert not types[len_a + len_b + 3 :].any()
    np.testing.assert_array_equal(inputs["labels"], [1, 0, 0])  # not_entailment=1, entailment=0


def test_features_truncate_to_max_seq_length(tokenizer):
    task = glue.GlueTask("mnli", str(FIXTURES))
    long = glue.GlueExample(0, "word " * 100, "other " * 100, "neutral")
    short = glue.GlueExample(1, "a", "b", "entailment")
    inputs = task.features([long, short], tokenizer, max_seq_length=16, training=True).inputs
    assert inputs["input_ids"].shape == (2, 16)
    assert inputs["attention_mask"][0].all()
    assert inputs["input_ids"][0, -1] == tokenizer.sep_token_id
    types = inputs["token_type_ids"][0]
    assert types[0] == 0 and types[-1] == 1  # longest_first keeps both segments
    np.testing.assert_array_equal(inputs["labels"], [2, 1])


def test_features_stsb_float_labels_and_unlabelled_rows(tokenizer):
    task = glue.GlueTask("stsb", str(FIXTURES))
    inputs = task.features(task.read("train"), tokenizer, 32, training=True).inputs
    assert inputs["labels"].dtype == np.float32
    np.testing.assert_allclose(inputs["labels"], [5.0, 3.8, 0.0])
    test_inputs = task.features(task.read("test"), tokenizer, 32, training=False).inputs
    np.testing.assert_array_equal(test_inputs["labels"], [0.0, 0.0])
    cls_test = glue.GlueTask("rte", str(FIXTURES))
    np.testing.assert_array_equal(
        cls_test.features(cls_test.read("test"), tokenizer, 32, False).inputs["labels"], [0, 0]
    )


def test_loss_and_outputs():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    labels = jnp.array([0, 1], jnp.int32)
    task = glue.GlueTask("mnli")
    per_row, weight = task.loss(ClassifierOutput(logits=logits), {"labels": labels})
    logp = np.asarray(logits) - np.log(np.exp(np.asarray(logits)).sum(-1, keepdims=True))
    np.testing.assert_allclose(per_row, [-logp[0, 0], -logp[1, 1]], rtol=1e-6)
    np.testing.assert_array_equal(weight, [1.0, 1.0])
    assert per_row.dtype == jnp.float32
    assert task.outputs(ClassifierOutput(logits=logits), {"labels": labels})["logits"] is logits

    reg = glue.GlueTask("stsb")
    per_row, weight = reg.loss(
        ClassifierOutput(logits=jnp.array([[1.5], [4.0]])), {"labels": jnp.array([1.0, 5.0])}
    )
    np.testing.assert_allclose(per_row, [0.25, 1.0])
    np.testing.assert_array_equal(weight, [1.0, 1.0])


# --- splits, evaluate, prediction files -------------------------------------------------------------


def test_splits(tmp_path):
    assert glue.GlueTask("mnli", str(FIXTURES)).splits() == {
        "train": "train",
        "dev_matched": "eval",
        "dev_mismatched": "eval",
        "test_matched": "predict",
        "test_mismatched": "predict",
    }
    assert glue.GlueTask("ax", str(FIXTURES)).splits() == {"test": "predict"}
    assert glue.GlueTask("ax").splits() == {"test": "predict"}
    shutil.copytree(FIXTURES / "RTE", tmp_path / "RTE", ignore=shutil.ignore_patterns("test.tsv"))
    assert glue.GlueTask("rte", str(tmp_path)).splits() == {"train": "train", "dev": "eval"}
    assert glue.GlueTask("rte").splits() == {"train": "train", "dev": "eval", "test": "predict"}


def _read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def test_evaluate_dev_writes_predictions(tmp_path, tokenizer):
    task = glue.GlueTask("rte", str(FIXTURES))
    examples = task.read("dev")  # not_entailment, entailment, entailment
    feats = task.features(examples, tokenizer, 32, training=False)
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    result = task.evaluate("dev", examples, feats, {"logits": logits}, str(tmp_path))
    assert result == {"accuracy": pytest.approx(2 / 3)}
    assert _read_tsv(tmp_path / "dev.tsv") == [
        ["index", "prediction"],
        ["0", "not_entailment"],
        ["1", "entailment"],
        ["2", "not_entailment"],
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.tsv"]
    assert task.evaluate("dev", examples, feats, {"logits": logits}, None) == result


def test_evaluate_stsb_dev(tmp_path, tokenizer):
    task = glue.GlueTask("stsb", str(FIXTURES))
    examples = task.read("dev")
    scores = np.array([4.5, 4.0, 1.25])
    result = task.evaluate(
        "dev",
        examples,
        task.features(examples, tokenizer, 32, False),
        {"logits": scores[:, None]},
        str(tmp_path),
    )
    gold = [5.0, 4.75, 2.4]
    assert result == {
        "pearson": pytest.approx(stats.pearsonr(scores, gold)[0]),
        "spearmanr": pytest.approx(stats.spearmanr(scores, gold)[0]),
    }
    rows = _read_tsv(tmp_path / "dev.tsv")
    assert [r[0] for r in rows] == ["index", "0", "1", "2"]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], scores)


@pytest.mark.parametrize(
    "task_name, split, logits, server_file, server_predictions",
    [
        ("mnli", "test_matched", [[0.0, 1.0, 0.0], [5.0, 0.0, 0.0]], "MNLI-m.tsv",
         ["entailment", "contradiction"]),
        ("mnli", "test_mismatched", [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], "MNLI-mm.tsv",
         ["neutral", "entailment"]),
        ("ax", "test", [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], "AX.tsv",
         ["neutral", "entailment", "contradiction"]),
        ("cola", "test", [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], "CoLA.tsv", ["1", "0", "1"]),
        ("stsb", "test", [[6.2], [-0.5]], "STS-B.tsv", ["5.000000", "0.000000"]),
    ],
)  # fmt: skip
def test_evaluate_test_split_writes_server_file(tmp_path, tokenizer, task_name, split, logits, server_file,
                                                server_predictions):  # fmt: skip
    task = glue.GlueTask(task_name, str(FIXTURES))
    examples = task.read(split)
    feats = task.features(examples, tokenizer, 32, training=False)
    assert (
        task.evaluate(split, examples, feats, {"logits": np.array(logits, np.float32)}, str(tmp_path)) == {}
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{split}.tsv", server_file])
    server = _read_tsv(tmp_path / server_file)
    assert server == [["index", "prediction"]] + [[str(i), p] for i, p in enumerate(server_predictions)]
    own = _read_tsv(tmp_path / f"{split}.tsv")
    assert [r[0] for r in own] == ["index"] + [str(i) for i in range(len(examples))]
    if task_name == "stsb":  # only the server file is clipped to [0, 5]
        assert [float(r[1]) for r in own[1:]] == pytest.approx([6.2, -0.5])


def test_write_submission_accepts_class_ids(tmp_path):
    examples = glue.read_split("qnli", str(FIXTURES), "test")
    path = glue.write_submission("qnli", "test", examples, np.array([1, 0]), str(tmp_path / "out"))
    assert Path(path) == tmp_path / "out" / "QNLI.tsv"
    assert _read_tsv(Path(path)) == [["index", "prediction"], ["0", "not_entailment"], ["1", "entailment"]]


def test_evaluate_checks_row_count(tokenizer):
    task = glue.GlueTask("rte", str(FIXTURES))
    examples = task.read("dev")
    feats = task.features(examples, tokenizer, 16, False)
    with pytest.raises(ValueError, match="2 outputs and 3 features for 3 examples"):
        task.evaluate("dev", examples, feats, {"logits": np.zeros((2, 2))}, None)


def test_degenerate():
    task = glue.GlueTask("rte")
    assert (
        task.degenerate({"logits": np.array([[1.0, 0.0], [2.0, 1.0]])}, "dev")
        == "predicts only 'entailment' on dev"
    )
    assert task.degenerate({"logits": np.array([[1.0, 0.0], [0.0, 1.0]])}, "dev") is None
    reg = glue.GlueTask("stsb")
    assert reg.degenerate({"logits": np.array([[2.5], [2.5]])}, "dev") == "predicts only 2.5 on dev"
    assert reg.degenerate({"logits": np.array([[2.5], [3.0]])}) is None


# --- the HF hub source ------------------------------------------------------------------------------


def _hf_dataset(text_columns: dict[str, list[str]], labels: list, label_feature) -> datasets.Dataset:
    features = {name: datasets.Value("string") for name in text_columns}
    features["label"] = label_feature
    features["idx"] = datasets.Value("int32")
    data = dict(text_columns, label=labels, idx=list(range(len(labels))))
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def test_hf_rows_map_to_file_labels():
    mnli = _hf_dataset(
        {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"]},
        [0, 1, 2],
        datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
    )
    assert glue.hf_examples("mnli", mnli) == [
        glue.GlueExample(0, "p0", "h0", "entailment"),
        glue.GlueExample(1, "p1", "h1", "neutral"),
        glue.GlueExample(2, "p2", "h2", "contradiction"),
    ]
    cola = _hf_dataset(
        {"sentence": ["bad", "good"]}, [0, 1], datasets.ClassLabel(names=["unacceptable", "acceptable"])
    )
    assert glue.hf_examples("cola", cola) == [
        glue.GlueExample(0, "bad", None, "0"),
        glue.GlueExample(1, "good", None, "1"),
    ]
    wnli = _hf_dataset(
        {"sentence1": ["a", "b"], "sentence2": ["c", "d"]},
        [0, 1],
        datasets.ClassLabel(names=["not_entailment", "entailment"]),
    )
    assert [e.label for e in glue.hf_examples("wnli", wnli)] == ["0", "1"]


def test_hf_test_rows_are_unlabelled_and_stsb_scores_are_floats():
    rte_test = _hf_dataset(
        {"sentence1": ["a", "b"], "sentence2": ["c", "d"]},
        [-1, -1],
        datasets.ClassLabel(names=["entailment", "not_entailment"]),
    )
    assert [e.label for e in glue.hf_examples("rte", rte_test)] == [None, None]
    stsb = _hf_dataset(
        {"sentence1": ["a", "b", "c"], "sentence2": ["d", "e", "f"]},
        [3.8, 4.667, -1.0],
        datasets.Value("float32"),
    )
    assert [e.label for e in glue.hf_examples("stsb", stsb)] == [3.8, 4.667, None]


def test_load_hf_asks_for_the_hub_config_and_split():
    calls = []
    dataset = _hf_dataset(
        {"premise": ["p"], "hypothesis": ["h"]},
        [2],
        datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
    )

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return dataset

    examples = glue.load_hf("mnli", "dev_mismatched", load_dataset=fake_load_dataset)
    assert examples == [glue.GlueExample(0, "p", "h", "contradiction")]
    glue.load_hf("ax", "test", load_dataset=fake_load_dataset)
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched"), ("nyu-mll/glue", "ax", "test")]


@pytest.mark.parametrize(
    "task,names",
    [
        # nyu-mll/glue's ClassLabel names, in label-id order (what HF checkpoints' id2label say).
        ("cola", ("unacceptable", "acceptable")),
        ("sst2", ("negative", "positive")),
        ("mrpc", ("not_equivalent", "equivalent")),
        ("qqp", ("not_duplicate", "duplicate")),
        ("mnli", ("contradiction", "entailment", "neutral")),
        ("rte", ("entailment", "not_entailment")),
        ("stsb", ()),  # a score: HF's LABEL_0
    ],
)
def test_label_names_for_an_exported_id2label(task, names):
    from albert_jax.config import AlbertConfig

    t = glue.GlueTask(task)
    assert t.label_names == names and len(names) in (0, t.num_labels)
    config = AlbertConfig(num_labels=t.num_labels, label_names=t.label_names)
    hf = config.to_hf_dict()
    assert hf["id2label"] == {str(i): n for i, n in enumerate(names or ("LABEL_0",))}
    assert AlbertConfig.from_hf_dict(hf).label_names == names
    assert AlbertConfig.from_hf_dict(hf, num_labels=5).label_names == ()  # a new head, its own classes
