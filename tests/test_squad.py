"""SQuAD: reading, doc-stride features and offsets, post-processing, official metrics, the ALBERT v2 head."""

from __future__ import annotations

import json
import logging
import random

import datasets
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from albert_jax import modeling
from albert_jax.config import AlbertConfig
from albert_jax.tasks.base import DataError
from albert_jax.tasks.squad import (
    SquadExample,
    SquadTask,
    convert_examples_to_features,
    examples_from_hf,
    f1_score,
    normalize_answer,
    parse_squad,
    postprocess_albert_v2,
    postprocess_default,
    read_squad,
    squad_v1_metrics,
    squad_v2_metrics,
)
from albert_jax.tasks.squad_head import AlbertForQuestionAnsweringV2
from albert_jax.tokenizer import AlbertTokenizer

WORDS = [
    "Zürich", "CAFÉ", "naïve", "Ångström", "the", "river", "1,000", "İstanbul", "co-operate",
    "''quoted''", "rock'n'roll", "E=mc²", "ﬁne", "Straße", "ÉCOLE", "résumé", "Hello", "WORLD",
    "data.", "(paren)", "Ωmega", "42%", "x", "mountain", "Bridge",
]  # fmt: skip
SEPARATORS = [" ", " ", " ", "  ", "\t", "\u00a0", "\n", " \u2003 "]


@pytest.fixture(scope="module")
def tok() -> AlbertTokenizer:
    return AlbertTokenizer("tests/fixtures/tokenizer/spiece.model")


def long_context(seed: int, num_words: int) -> tuple[str, list[tuple[int, int]]]:
    """A context of accented / upper-case / odd-whitespace words and each word's character span."""
    rng = random.Random(seed)
    context, spans = "", []
    for _ in range(num_words):
        if context:
            context += rng.choice(SEPARATORS)
        word = rng.choice(WORDS)
        spans.append((len(context), len(context) + len(word)))
        context += word
    return context, spans


def long_examples(num_contexts: int = 3, questions: int = 12) -> list[SquadExample]:
    """Answers of 1–6 whole words anywhere in several-hundred-token contexts (some near either end);
    a few gold texts carry a trailing space, as some SQuAD answers do."""
    rng = random.Random(1)
    examples = []
    for c in range(num_contexts):
        context, spans = long_context(c, 180)
        for q in range(questions):
            first = [0, len(spans) - 1][q] if q < 2 else rng.randrange(len(spans))
            last = min(first + rng.randrange(6), len(spans) - 1)
            start, end = spans[first][0], spans[last][1]
            text = context[start:end]
            if q % 5 == 4 and end < len(context) and context[end] == " ":
                text += " "
            question = f"Where is the {rng.choice(WORDS)} of {rng.choice(WORDS)} number {q}?"
            examples.append(SquadExample(f"c{c}q{q}", question, context, [(text, start)]))
    examples.append(SquadExample("impossible", "Is there no answer?", context, [], True))
    return examples


def squad_json(
    qas: list[dict], context: str = "The Denver Broncos won Super Bowl 50 in Santa Clara."
) -> dict:
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}


# --- features ----------------------------------------------------------------------------------------


def test_answers_recoverable_through_offsets_across_windows(tok):
    examples = long_examples()
    feats = convert_examples_to_features(examples, tok, max_seq_length=64, doc_stride=16, training=True)
    meta, inputs = feats.meta, feats.inputs
    assert inputs["input_ids"].shape == (len(feats), 64) and inputs["input_ids"].dtype == np.int32
    assert inputs["p_mask"].shape == (len(feats), 64)
    assert inputs["start_positions"].dtype == np.int32 and inputs["is_impossible"].dtype == np.float32
    context_tokens = {ex.context: tok.encode_with_offsets(ex.context)[0] for ex in examples}
    assert max(len(ids) for ids in context_tokens.values()) > 300  # several hundred tokens
    windows_with_answer = np.zeros(len(examples), int)
    for row in range(len(feats)):
        ex = examples[meta.example_index[row]]
        s, e = int(inputs["start_positions"][row]), int(inputs["end_positions"][row])
        if s == 0:
            assert e == 0 and inputs["is_impossible"][row] == 1.0
            continue
        assert inputs["is_impossible"][row] == 0.0 and s <= e
        assert inputs["p_mask"][row, s] == 0 and inputs["p_mask"][row, e] == 0
        text = ex.context[meta.offsets[row, s, 0] : meta.offsets[row, e, 1]]
        # Offsets slice the original context, so accents, case and inner whitespace (tabs, NBSP, em
        # spaces) come back exactly; tokens never cover whitespace, so a gold text's trailing space
        # can't, hence the strip.
        assert text == ex.answers[0][0].strip(), ex.qas_id
        windows_with_answer[meta.example_index[row]] += 1
    # Answers are far shorter than a window, so each one lies wholly inside at least one window.
    assert (windows_with_answer[:-1] >= 1).all() and windows_with_answer[-1] == 0
    assert (np.bincount(meta.example_index) > 3).all()  # several windows per example

    # Every context token is max-context in exactly one window, and rows hold the right tokens.
    for ex_index, ex in enumerate(examples):
        ids = context_tokens[ex.context]
        seen = []
        for row in np.flatnonzero(meta.example_index == ex_index):
            ctx_pos = np.flatnonzero(meta.offsets[row, :, 0] >= 0)
            token_index = meta.window_start[row] + np.arange(len(ctx_pos))
            np.testing.assert_array_equal(inputs["input_ids"][row, ctx_pos], np.asarray(ids)[token_index])
            assert (inputs["p_mask"][row, ctx_pos] == 0).all() and (
                inputs["token_type_ids"][row, ctx_pos] == 1
            ).all()
            seen.extend(token_index[meta.token_is_max_context[row, ctx_pos]].tolist())
            assert not meta.token_is_max_context[row, meta.offsets[row, :, 0] < 0].any()
        assert sorted(seen) == list(range(len(ids)))


def test_feature_layout(tok):
    ex = SquadExample("q", "What won " * 40, "The Denver Broncos won.", [("Denver Broncos", 4)])
    feats = convert_examples_to_features([ex], tok, max_seq_length=48, doc_stride=8, max_query_length=10)
    row = {k: v[0] for k, v in feats.inputs.items()}
    q_len = 10  # truncated to max_query_length
    ctx = tok.encode_with_offsets(ex.context)[0]
    n = q_len + len(ctx) + 3
    assert row["input_ids"][0] == tok.cls_token_id and row["input_ids"][q_len + 1] == tok.sep_token_id
    assert row["input_ids"][n - 1] == tok.sep_token_id and (row["input_ids"][n:] == tok.pad_token_id).all()
    np.testing.assert_array_equal(row["attention_mask"], np.arange(48) < n)
    np.testing.assert_array_equal(row["token_type_ids"], (np.arange(48) >= q_len + 2) & (np.arange(48) < n))
    expected_p_mask = np.ones(48, int)
    expected_p_mask[0] = 0  # [CLS]: the no-answer target of the v2 head
    expected_p_mask[q_len + 2 : n - 1] = 0
    np.testing.assert_array_equal(row["p_mask"], expected_p_mask)
    s, e = row["start_positions"], row["end_positions"]
    assert ex.context[feats.meta.offsets[0, s, 0] : feats.meta.offsets[0, e, 1]] == "Denver Broncos"


# --- reading -----------------------------------------------------------------------------------------


def test_read_squad_v2_and_hf_mapping(tmp_path):
    qas = [
        {"id": "a", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 4}]},
        {
            "id": "b",
            "question": "Who lost?",
            "answers": [],
            "is_impossible": True,
            "plausible_answers": [{"text": "Broncos", "answer_start": 11}],
        },
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(squad_json(qas)), encoding="utf-8")
    examples = read_squad(path, training=True)
    assert [(e.qas_id, e.answers, e.is_impossible) for e in examples] == [
        ("a", [("Denver Broncos", 4)], False),
        ("b", [], True),
    ]
    rows = datasets.Dataset.from_dict(
        {
            "id": ["a", "b"],
            "title": ["T", "T"],
            "context": [examples[0].context] * 2,
            "question": ["Who won?", "Who lost?"],
            "answers": [{"text": ["Denver Broncos"], "answer_start": [4]}, {"text": [], "answer_start": []}],
        }
    )
    assert examples_from_hf(rows, training=True) == examples


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "no such SQuAD file"),
        (b"\xff\xfe{", "not UTF-8"),
        (b"{not json", "not JSON"),
        (json.dumps({"version": "1.1", "articles": []}).encode(), "no top-level 'data' field"),
        (
            json.dumps(
                squad_json([{"id": "a", "question": "Q?", "answers": [{"text": "The", "answer_start": "0"}]}])
            ).encode(),
            "data[0].paragraphs[0].qas[0].answers[0].answer_start must be an integer",
        ),
        (
            json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}).encode(),
            "data[0].paragraphs[0] has no 'context'",
        ),
    ],
)
def test_bad_files(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=None) as err:
        read_squad(path, training=False)
    message = str(err.value)
    assert needle in message and str(path) in message and "\n" not in message


def test_mismatched_answer_start_skipped_with_one_warning(caplog):
    qas = [
        {"id": "ok", "question": "Q?", "answers": [{"text": "Denver Broncos", "answer_start": 4}]},
        {"id": "off1", "question": "Q?", "answers": [{"text": "Denver Broncos", "answer_start": 5}]},
        {"id": "off2", "question": "Q?", "answers": [{"text": "Santa Clara", "answer_start": 0}]},
    ]
    with caplog.at_level(logging.WARNING, logger="albert_jax.tasks.squad"):
        examples = parse_squad(squad_json(qas), training=True, source="train.json")
    assert [e.qas_id for e in examples] == ["ok"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2 training answer" in warnings[0] and "off1" in warnings[0]
    # Eval keeps every question: the metric only needs the answer texts.
    assert len(parse_squad(squad_json(qas), training=False)) == 3


# --- metrics -----------------------------------------------------------------------------------------


def test_normalisation_and_token_f1():
    assert normalize_answer("The  Quick, brown-fox!\tan apple") == "quick brownfox apple"
    assert normalize_answer("A theatre, an answer") == "theatre answer"  # articles only as whole words
    assert f1_score("", "") == 1.0 and f1_score("", "x") == 0.0
    assert f1_score("", "", empty_matches_empty=False) == 0.0


def test_v1_metrics_by_hand():
    examples = [
        SquadExample("q1", "", "", [("Denver Broncos", 0), ("The Denver Broncos", 0)]),
        SquadExample("q2", "", "", [("Santa Clara, California", 0), ("Levi's Stadium", 0)]),
        SquadExample("q3", "", "", [("a cat", 0)]),
        SquadExample("q4", "", "", [("missing", 0)]),
    ]
    preds = {"q1": "denver broncos!", "q2": "Levi's Stadium in Santa Clara", "q3": "dog"}
    # q2: pred "levis stadium in santa clara" vs "levis stadium": P=2/5, R=1 -> F1=4/7; vs the other
    # ground truth "santa clara california": P=2/5, R=2/3 -> F1=1/2; the max is 4/7.
    out = squad_v1_metrics(examples, preds)
    assert out["exact_match"] == pytest.approx(25.0)
    assert out["f1"] == pytest.approx(100 * (1 + 4 / 7) / 4)
    # The official `data` list gives the same numbers.
    data = [
        {
            "paragraphs": [
                {"qas": [{"id": e.qas_id, "answers": [{"text": t} for t, _ in e.answers]} for e in examples]}
            ]
        }
    ]
    assert squad_v1_metrics(data, preds) == out


def test_v2_metrics_and_best_threshold_by_hand():
    examples = [
        SquadExample("a", "", "", [("Paris", 0)]),
        SquadExample("b", "", "", [("New York City", 0), ("the", 0)]),  # "the" normalises to "": dropped
        SquadExample("c", "", "", [], True),
        SquadExample("d", "", "", [], True),
        SquadExample("e", "", "", [("the blue whale", 0)]),
    ]
    preds = {"a": "Paris", "b": "York City", "c": "Berlin", "d": "", "e": "a blue whale"}
    na = {"a": 0.1, "b": 0.6, "c": 0.7, "d": 0.9, "e": 0.2}
    out = squad_v2_metrics(examples, preds, na, na_prob_thresh=0.5)
    # raw exact a1 b0 c0 d1 e1; raw f1 a1 b0.8 (P=1, R=2/3) c0 d1 e1.
    # At 0.5, b, c and d are predicted unanswerable: b scores 0, c and d score 1.
    expected = {
        "exact": 80.0, "f1": 80.0, "total": 5,
        "HasAns_exact": 200 / 3, "HasAns_f1": 200 / 3, "HasAns_total": 3,
        "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 2,
        # Search in na order a(.1) e(.2) b(.6) c(.7) d(.9), starting from 2 (all unanswered):
        # exact 3, 4, 4, 3, 3 -> best 4/5 at 0.2; f1 3, 4, 4.8, 3.8, 3.8 -> best 4.8/5 at 0.6.
        "best_exact": 80.0, "best_exact_thresh": 0.2, "best_f1": 96.0, "best_f1_thresh": 0.6,
    }  # fmt: skip
    assert out == pytest.approx(expected)
    # Without na_probs (all 0.0) nothing is thresholded: exact a1 b0 c0 d1 e1.
    plain = squad_v2_metrics(examples, preds)
    assert plain["exact"] == pytest.approx(60.0) and plain["f1"] == pytest.approx(100 * 3.8 / 5)


# --- post-processing ---------------------------------------------------------------------------------


def _one_example_features(tok, answer_words=(60, 62)):
    context, spans = long_context(7, 150)
    start, end = spans[answer_words[0]][0], spans[answer_words[1]][1]
    ex = SquadExample("q", "Which words?", context, [(context[start:end], start)])
    feats = convert_examples_to_features([ex], tok, max_seq_length=64, doc_stride=16)
    return ex, feats


def _noise_logits(feats, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Small random start/end logits, so that every window offers many valid low-scoring spans."""
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(0.0, 1.0, (2, len(feats), 64)).astype(np.float32))


def _span_rows(feats, ex):
    """(row, start, end) of every window holding the answer, and whether start is max-context there."""
    out = []
    for row in range(len(feats)):
        s, e = int(feats.inputs["start_positions"][row]), int(feats.inputs["end_positions"][row])
        if s:
            out.append((row, s, e, bool(feats.meta.token_is_max_context[row, s])))
    return out


def test_postprocess_default_finds_span_and_writes_files(tok, tmp_path):
    ex, feats = _one_example_features(tok)
    rows = _span_rows(feats, ex)
    row, s, e, _ = next(r for r in rows if r[3])
    start, end = _noise_logits(feats)
    start[row, s], end[row, e] = 10.0, 10.0
    start[row, 2], end[row, 3] = 50.0, 50.0  # question tokens: never an answer
    task = SquadTask("1.1", n_best_size=5)
    metrics = task.evaluate("dev", [ex], feats, {"start_logits": start, "end_logits": end}, str(tmp_path))
    assert metrics == {"exact_match": 100.0, "f1": 100.0}
    preds = json.loads((tmp_path / "predictions.json").read_text(encoding="utf-8"))
    assert preds == {"q": ex.answers[0][0]}
    nbest = json.loads((tmp_path / "nbest_predictions.json").read_text(encoding="utf-8"))["q"]
    assert nbest[0] == {
        "text": ex.answers[0][0],
        "probability": nbest[0]["probability"],
        "start_logit": 10.0,
        "end_logit": 10.0,
    }
    assert len(nbest) == 5 and sum(n["probability"] for n in nbest) == pytest.approx(1.0)
    assert not (tmp_path / "null_odds.json").exists()


def test_postprocess_max_answer_length_and_max_context(tok):
    ex, feats = _one_example_features(tok)
    rows = _span_rows(feats, ex)
    good = next(r for r in rows if r[3])
    bad = next(r for r in rows if not r[3])  # the same start token, but not its max-context window
    meta = feats.meta
    start, end = _noise_logits(feats)
    row, s, e, _ = good
    start[row, s], end[row, e] = 10.0, 10.0
    start[bad[0], bad[1]], end[bad[0], bad[2]] = 30.0, 9.0  # scores 39, but its start isn't max-context
    far = max(p for p in range(64) if meta.offsets[row, p, 0] >= 0)
    limit = e - s + 1
    assert far - s + 1 > limit
    end[row, far] = 20.0  # a higher-scoring but too-long span from the same start
    out = postprocess_default([ex], meta, start, end, version_2=False, max_answer_length=limit)
    assert out.predictions["q"] == ex.answers[0][0]
    # Without the length limit the long span wins.
    long_span = ex.context[meta.offsets[row, s, 0] : meta.offsets[row, far, 1]]
    assert postprocess_default([ex], meta, start, end, False).predictions["q"] == long_span


def test_postprocess_default_v2_null_at_threshold(tok, tmp_path):
    ex, feats = _one_example_features(tok)
    row, s, e, _ = next(r for r in _span_rows(feats, ex) if r[3])
    start, end = _noise_logits(feats)
    start[row, s], end[row, e] = 10.0, 10.0  # best non-null: 20
    start[:, 0], end[:, 0] = 50.0, 50.0  # [CLS] of every window: null 100 ...
    other = (row + 1) % len(feats)
    start[other, 0], end[other, 0] = 10.0, 10.5  # ... except one window: min null = 20.5
    outputs = {"start_logits": start, "end_logits": end}
    task = SquadTask("2.0")
    metrics = task.evaluate("dev", [ex], feats, outputs, str(tmp_path))
    assert json.loads((tmp_path / "null_odds.json").read_text())["q"] == pytest.approx(0.5)
    assert json.loads((tmp_path / "predictions.json").read_text())["q"] == ""  # 0.5 > 0.0
    assert metrics["exact"] == 0.0 and metrics["HasAns_total"] == 1
    assert metrics["best_f1"] == 100.0 and metrics["best_f1_thresh"] == pytest.approx(0.5)
    nbest = json.loads((tmp_path / "nbest_predictions.json").read_text())["q"]
    assert nbest[0]["text"] == "" and nbest[1]["text"] == ex.answers[0][0]
    for threshold, expected in ((0.5, ex.answers[0][0]), (0.49, "")):  # "" only when odds > threshold
        task = SquadTask("2.0", null_score_diff_threshold=threshold)
        assert task.postprocess([ex], feats, outputs).predictions["q"] == expected


def test_postprocess_albert_v2_beam(tok):
    ex, feats = _one_example_features(tok)
    row, s, e, _ = next(r for r in _span_rows(feats, ex) if r[3])
    n = len(feats)
    start_idx = np.tile(np.array([1, 0, 2, 3, 4]), (n, 1))  # question, [CLS]: invalid starts
    start_idx[row] = [1, 0, s, s, 2]
    end_idx = np.tile(np.array([e, e + 40, e, e, e]), (n, 5, 1))
    start_lp = np.tile(np.array([-0.1, -0.2, -1.0, -2.0, -3.0], np.float32), (n, 1))
    end_lp = np.tile(np.array([-0.1, -0.2, -0.5, -0.6, -0.7], np.float32), (n, 5, 1))
    cls = np.full(n, 3.0, np.float32)
    cls[(row + 1) % n] = 0.25  # null score: min over windows
    outputs = {
        "start_top_log_probs": start_lp,
        "start_top_index": start_idx,
        "end_top_log_probs": end_lp,
        "end_top_index": end_idx,
        "cls_logits": cls,
    }
    out = postprocess_albert_v2([ex], feats.meta, outputs, version_2=True, max_answer_length=30)
    assert out.null_odds == {"q": 0.25} and out.predictions["q"] == ""  # 0.25 > 0.0
    assert out.nbest["q"][0]["text"] == ex.answers[0][0]
    assert out.nbest["q"][0]["start_logit"] + out.nbest["q"][0]["end_logit"] == pytest.approx(-1.1)
    out = postprocess_albert_v2([ex], feats.meta, outputs, version_2=True, null_score_threshold=0.25)
    assert out.predictions["q"] == ex.answers[0][0]
    task = SquadTask("2.0", qa_head="albert_v2", null_score_diff_threshold=0.25)
    assert task.evaluate("dev", [ex], feats, outputs, None)["exact"] == 100.0


def test_postprocess_albert_v2_on_squad_1_1_and_without_a_span(tok):
    """The v2 head on SQuAD 1.1 (no null odds: the best span whatever cls_logits say), and no valid span."""
    ex, feats = _one_example_features(tok)
    row, s, e, _ = next(r for r in _span_rows(feats, ex) if r[3])
    n = len(feats)
    start_idx = np.ones((n, 2), np.int32)  # a question token: never an answer
    start_idx[row, 1] = s
    outputs = {
        "start_top_log_probs": np.full((n, 2), -0.5, np.float32),
        "start_top_index": start_idx,
        "end_top_log_probs": np.full((n, 2, 3), -0.25, np.float32),
        "end_top_index": np.full((n, 2, 3), e, np.int32),
        "cls_logits": np.full(n, 9.0, np.float32),  # a confident "no answer", which v1.1 ignores
    }
    out = postprocess_albert_v2([ex], feats.meta, outputs, version_2=False)
    text, start_char = ex.answers[0]
    assert out.null_odds is None and out.predictions == {"q": text} == out.best_non_null
    assert out.spans == {"q": (start_char, start_char + len(text))}
    assert [entry["text"] for entry in out.nbest["q"]] == [text]  # three beam ends, one span
    outputs["start_top_index"] = np.ones((n, 2), np.int32)  # no valid span left
    no_span = [{"text": "", "probability": 1.0, "start_logit": -5e5, "end_logit": -5e5}]
    for version_2 in (False, True):
        out = postprocess_albert_v2([ex], feats.meta, outputs, version_2=version_2)
        assert out.predictions == {"q": ""} == out.best_non_null and out.spans == {}
        assert out.nbest["q"] == no_span
    assert out.null_odds == {"q": 9.0}


def test_postprocess_default_without_a_span(tok):
    ex, feats = _one_example_features(tok)
    start, end = _noise_logits(feats)
    null = start[:, 0] + end[:, 0]
    row = int(np.argmin(null))
    out = postprocess_default([ex], feats.meta, start, end, version_2=False, max_answer_length=0)
    assert out.predictions == {"q": ""} and out.null_odds is None and out.spans == {}
    assert out.nbest["q"] == [{"text": "", "probability": 1.0, "start_logit": -5e5, "end_logit": -5e5}]
    out = postprocess_default([ex], feats.meta, start, end, version_2=True, max_answer_length=0)
    assert out.predictions == {"q": ""} and out.null_odds["q"] == pytest.approx(float(null[row]) + 1e6)
    null_entry = {"text": "", "probability": 1.0, "start_logit": start[row, 0], "end_logit": end[row, 0]}
    assert out.nbest["q"] == [pytest.approx(null_entry)]


# --- the ALBERT v2 head ------------------------------------------------------------------------------

TINY = AlbertConfig(
    vocab_size=64,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    classifier_dropout_prob=0.0,
)


def tiny_batch(batch: int = 4, length: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p_mask = np.ones((batch, length), np.int32)
    p_mask[:, 0] = 0
    p_mask[:, 8:20] = 0  # context; question 1..7 and padding 20.. masked
    starts = rng.integers(8, 16, batch).astype(np.int32)
    starts[0] = 0  # an impossible row
    ends = np.where(starts == 0, 0, starts + rng.integers(0, 4, batch)).astype(np.int32)
    return {
        "input_ids": rng.integers(4, 64, (batch, length)).astype(np.int32),
        "attention_mask": (np.arange(length) < 21).astype(np.int32)[None].repeat(batch, 0),
        "token_type_ids": (np.arange(length) >= 8).astype(np.int32)[None].repeat(batch, 0),
        "p_mask": p_mask,
        "start_positions": starts,
        "end_positions": ends,
        "is_impossible": (starts == 0).astype(np.float32),
    }


@pytest.fixture(scope="module")
def v2_model():
    """The head and random parameters with init's tree, drawn in numpy (a real init costs a compile)."""
    module = AlbertForQuestionAnsweringV2(TINY)
    abstract = jax.eval_shape(lambda: modeling.nn.unbox(modeling.init_params(module, jax.random.key(0))))
    rng = np.random.default_rng(0)
    flat = traverse_util.flatten_dict(abstract)
    params = {
        path: jnp.asarray((path[-1] == "scale") + 0.1 * rng.standard_normal(s.shape), s.dtype)
        for path, s in flat.items()
    }
    return module, traverse_util.unflatten_dict(params)


def test_v2_head_shapes_and_masking(v2_model):
    module, params = v2_model
    assert set(params) == {"albert", "start_logits", "end_logits", "answer_class"}
    assert params["end_logits"]["dense_0"]["kernel"].shape == (64, 32)
    assert "bias" not in params["answer_class"]["dense_1"] and "pooler" not in params["albert"]
    batch = tiny_batch()
    task = SquadTask("2.0", qa_head="albert_v2")

    @jax.jit
    def forward(p, b):
        inputs = task.model_inputs(b, training=False)
        return module.apply({"params": p}, b["input_ids"], b["attention_mask"], b["token_type_ids"], **inputs)

    out = forward(params, batch)
    fields = task.outputs(out, batch)
    shapes = {k: v.shape for k, v in fields.items()}
    assert shapes == {
        "start_top_log_probs": (4, 5),
        "start_top_index": (4, 5),
        "end_top_log_probs": (4, 5, 5),
        "end_top_index": (4, 5, 5),
        "cls_logits": (4,),
    }
    masked = batch["p_mask"].astype(bool)
    rows = np.arange(4)
    assert not masked[rows[:, None], np.asarray(fields["start_top_index"])].any()
    assert not masked[rows[:, None, None], np.asarray(fields["end_top_index"])].any()
    assert np.isfinite(np.asarray(fields["cls_logits"])).all()
    # The beam's log-probs are sorted, and the end rows differ because each is conditioned on its start.
    assert (np.diff(np.asarray(fields["start_top_log_probs"]), axis=-1) <= 0).all()
    end_lp = np.asarray(fields["end_top_log_probs"])
    assert not np.allclose(end_lp[:, 0], end_lp[:, 1])


def test_v2_head_end_logits_depend_on_start(v2_model):
    module, params = v2_model
    b = tiny_batch()

    @jax.jit
    def end_logits(starts):
        out = module.apply(
            {"params": params},
            b["input_ids"],
            b["attention_mask"],
            b["token_type_ids"],
            p_mask=b["p_mask"],
            start_positions=starts,
        )
        return out.end_logits

    one, other = np.asarray(end_logits(np.full(4, 9))), np.asarray(end_logits(np.full(4, 12)))
    assert one.shape == (4, 24) and (one[b["p_mask"] == 1] <= -1e29).all()
    context = b["p_mask"] == 0
    assert np.abs(one[context] - other[context]).max() > 1e-4


def test_v2_head_teacher_forced_loss_decreases(v2_model):
    module, params = v2_model
    task = SquadTask("2.0", qa_head="albert_v2")
    batch = {k: jnp.asarray(v) for k, v in tiny_batch(batch=8, seed=1).items()}
    tx = optax.adam(3e-3)

    def loss_fn(p, b):
        out = module.apply(
            {"params": p},
            b["input_ids"],
            b["attention_mask"],
            b["token_type_ids"],
            deterministic=False,
            rngs={"dropout": jax.random.key(0)},
            **task.model_inputs(b, training=True),
        )
        loss_sum, weight = task.loss(out, b)
        return loss_sum.sum() / weight.sum()

    @jax.jit
    def step(p, opt_state, b):
        loss, grads = jax.value_and_grad(loss_fn)(p, b)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for _ in range(8):
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.1, losses


def test_default_head_task_loss():
    task = SquadTask("1.1")
    assert task.head == "AlbertForQuestionAnswering" and task.token_outputs == ("start_logits", "end_logits")
    assert task.splits() == {"train": "train", "dev": "eval"} and task.num_labels == 2
    out = modeling.QuestionAnsweringOutput(
        start_logits=jnp.log(jnp.array([[0.5, 0.25, 0.25]])),
        end_logits=jnp.log(jnp.array([[0.25, 0.5, 0.25]])),
    )
    loss, weight = task.loss(out, {"start_positions": jnp.array([0]), "end_positions": jnp.array([2])})
    np.testing.assert_allclose(loss, [(np.log(2) + np.log(4)) / 2], rtol=1e-6)
    assert weight.tolist() == [1.0] and task.model_inputs({"p_mask": None}, training=True) == {}


def test_task_end_to_end_with_length_bucketing(tok, tmp_path):
    """File → features → HF head on bucket-trimmed inputs → outputs padded back (as the loop does) → files."""
    context = "The Denver Broncos won Super Bowl 50 in Santa Clara. " * 4
    qas = [
        {"id": "a", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 4}]},
        {"id": "b", "question": "Who lost?", "answers": [], "is_impossible": True},
    ]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(squad_json(qas, context)), encoding="utf-8")
    task = SquadTask("2.0", predict_file=str(path))
    examples = task.read("dev")
    feats = task.features(examples, tok, 128, training=False)
    bucket = int(feats.inputs["attention_mask"].sum(1).max())
    assert bucket < 128
    batch = {
        k: jnp.asarray(
            v[:, :bucket]
            if k in ("input_ids", "attention_mask", "token_type_ids", *task.sequence_inputs)
            else v
        )
        for k, v in feats.inputs.items()
    }
    module = modeling.HEADS[task.head](TINY.replace(vocab_size=tok.vocab_size, max_position_embeddings=128))
    params = modeling.nn.unbox(modeling.init_params(module, jax.random.key(0)))
    out = module.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        **task.model_inputs(batch, training=False),
    )
    outputs = {k: np.asarray(v) for k, v in task.outputs(out, batch).items()}
    for k in task.token_outputs:
        outputs[k] = np.pad(outputs[k], ((0, 0), (0, 128 - bucket)), constant_values=task.token_output_fill)
    metrics = task.evaluate("dev", examples, feats, outputs, str(tmp_path / "out"))
    assert metrics["total"] == 2 and metrics["HasAns_total"] == 1 and metrics["NoAns_total"] == 1
    preds = json.loads((tmp_path / "out" / "predictions.json").read_text())
    odds = json.loads((tmp_path / "out" / "null_odds.json").read_text())
    assert set(preds) == set(odds) == {"a", "b"}
    for text in preds.values():  # every non-empty prediction is a piece of the context
        assert text == "" or text in context
