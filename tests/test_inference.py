"""The inference helpers against the model's own forward pass, on tiny random models."""

import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from albert_jax import inference
from albert_jax.config import AlbertConfig
from albert_jax.modeling import (
    AlbertForMaskedLM,
    AlbertForPreTraining,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    init_params,
)
from albert_jax.tasks import ner, squad
from albert_jax.tokenizer import AlbertTokenizer

SPIECE = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer", "spiece.model")
TINY = {
    "vocab_size": 2000,
    "embedding_size": 16,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 128,  # length buckets 8, 16, …, 64, 80, 96, 112, 128
}


@pytest.fixture(scope="module")
def tok():
    return AlbertTokenizer(SPIECE)


def build(head, seed=0, **overrides):
    module = head(AlbertConfig(**{**TINY, **overrides}))
    return module, init_params(module, jax.random.key(seed))


def forward(module, params, enc):
    """The reference: one unpadded forward pass."""
    return module.apply(
        {"params": nn.unbox(params)}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    )


def softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("head", [AlbertForPreTraining, AlbertForMaskedLM])
def test_fill_mask_is_the_softmax_at_each_mask(tok, head):
    module, params = build(head)
    text = "the quick brown [MASK] jumps over the [MASK] dog."
    got = inference.fill_mask(module, params, tok, text, top_k=4)
    enc = tok(text, return_tensors="np")
    out = forward(module, params, enc)
    logits = out.prediction_logits if head is AlbertForPreTraining else out.logits
    positions = np.flatnonzero(enc["input_ids"][0] == tok.mask_token_id)
    assert len(got) == len(positions) == 2
    for cands, p in zip(got, positions):
        want = softmax(logits[0, p])
        top = np.argsort(-want)[:4]
        assert [c for c, _ in cands] == tok.convert_ids_to_tokens(top.tolist())
        np.testing.assert_allclose([q for _, q in cands], want[top], rtol=1e-4)
    assert inference.fill_mask(module, params, tok, "no mask here") == []
    with pytest.raises(ValueError, match="positions"):
        inference.fill_mask(module, params, tok, "word " * 200 + "[MASK]")


def test_same_bucket_does_not_retrace(tok):
    module, params = build(AlbertForPreTraining, intermediate_size=48)  # a module no other test compiles
    size = inference._forward._cache_size
    before = size()
    inference.fill_mask(module, params, tok, "a [MASK] day.")  # 6 tokens: bucket 8
    assert size() == before + 1
    inference.fill_mask(module, params, tok, "it was a [MASK] day.")  # 8 tokens: still bucket 8
    assert size() == before + 1
    inference.fill_mask(module, params, tok, "it was a very [MASK] and sunny day.")  # 13: bucket 16
    assert size() == before + 2


def test_classify_is_the_softmax_of_the_logits(tok):
    module, params = build(AlbertForSequenceClassification, num_labels=3)
    items = ["a good film.", ("a man sleeps.", "nobody is asleep."), "the worst film of the year, by far."]
    got = inference.classify(module, params, tok, items)
    assert len(got) == 3
    for item, (label, probs) in zip(items, got):
        enc = tok(*((item,) if isinstance(item, str) else item), return_tensors="np")
        want = softmax(forward(module, params, enc).logits[0])
        assert list(probs) == ["LABEL_0", "LABEL_1", "LABEL_2"]
        np.testing.assert_allclose(list(probs.values()), want, rtol=1e-4)
        assert label == f"LABEL_{int(np.argmax(want))}"
    [(label, probs)] = inference.classify(module, params, tok, "a good film.", task="mnli")
    assert list(probs) == ["contradiction", "entailment", "neutral"] and label in probs
    [(label, probs)] = inference.classify(module, params, tok, "a good film.", labels=["x", "y", "z"])
    assert list(probs) == ["x", "y", "z"]
    with pytest.raises(ValueError, match="num_labels=3"):
        inference.classify(module, params, tok, "a good film.", task="sst2")


def test_classify_regression_gives_the_score(tok):
    module, params = build(AlbertForSequenceClassification, num_labels=1)
    pair = ("a man is playing a guitar.", "a man plays music.")
    [score] = inference.classify(module, params, tok, [pair])
    want = forward(module, params, tok(*pair, return_tensors="np")).logits[0, 0]
    assert isinstance(score, float)
    np.testing.assert_allclose(score, want, rtol=1e-4, atol=1e-6)


def best_span(start_logits, end_logits, enc, context, max_answer_length=30):
    """The argmax of start + end logit over spans of context tokens, as character offsets."""
    types, offsets = enc["token_type_ids"], enc["offset_mapping"]
    context_tokens = [i for i in range(len(types) - 1) if types[i] == 1]  # the last token is [SEP]
    best = None
    for s in context_tokens:
        for e in context_tokens:
            span = (offsets[s][0], offsets[e][1])
            if e < s or e - s + 1 > max_answer_length or not context[span[0] : span[1]].strip():
                continue
            score = start_logits[s] + end_logits[e]
            if best is None or score > best[0]:
                best = (score, span)
    return best[1]


def test_answer_is_the_argmax_span(tok):
    module, params = build(AlbertForQuestionAnswering)
    question, context = "who wrote the tales?", "the tales were written by the brothers grimm in germany."
    got = inference.answer(module, params, tok, question, context)
    enc = tok(question, context, return_offsets_mapping=True)
    out = forward(module, params, {k: np.asarray([v]) for k, v in enc.items() if k != "offset_mapping"})
    start, end = best_span(np.asarray(out.start_logits[0]), np.asarray(out.end_logits[0]), enc, context)
    assert (got["start"], got["end"]) == (start, end)
    assert got["text"] == context[start:end] and 0 < got["score"] <= 1


def test_answer_reads_a_long_context_in_windows(tok):
    module, params = build(AlbertForQuestionAnswering)
    question = "where did they live?"
    context = " ".join(f"sentence {i} says that the family lived in town number {i}." for i in range(30))
    features = squad.convert_examples_to_features(
        [squad.SquadExample("0", question, context, [])], tok, max_seq_length=64, doc_stride=24
    )
    assert len(features) > 5
    got = inference.answer(module, params, tok, question, context, max_seq_length=64, doc_stride=24)
    assert got["text"] and got["text"] == context[got["start"] : got["end"]]
    assert 0 < got["score"] <= 1


def test_tag_is_the_argmax_at_each_first_sub_token(tok):
    module, params = build(AlbertForTokenClassification, num_labels=len(ner.LABELS))
    words = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    got = inference.tag(module, params, tok, words)
    pieces = [tok.encode(w) for w in words]
    assert any(len(p) > 1 for p in pieces)  # some words have several sub-tokens
    ids = [tok.cls_token_id] + [i for p in pieces for i in p] + [tok.sep_token_id]
    firsts = 1 + np.cumsum([0] + [len(p) for p in pieces[:-1]])
    enc = {k: np.asarray([v]) for k, v in (("input_ids", ids), ("attention_mask", [1] * len(ids)))}
    enc["token_type_ids"] = np.zeros_like(enc["input_ids"])
    logits = np.asarray(forward(module, params, enc).logits[0])
    assert got == [ner.LABELS[i] for i in logits[firsts].argmax(-1)]
    assert inference.tag(module, params, tok, " ".join(words)) == got
    custom = inference.tag(module, params, tok, words, labels=[f"T{i}" for i in range(9)])
    assert custom == [f"T{ner.LABELS.index(t)}" for t in got]


def test_tag_reads_a_long_sentence_in_windows(tok):
    module, params = build(AlbertForTokenClassification, num_labels=len(ner.LABELS))
    words = [f"word{i}" for i in range(40)]
    got = inference.tag(module, params, tok, words, max_seq_length=16)
    assert len(got) == 40 and set(got) <= set(ner.LABELS)


def test_wrong_head_is_a_clear_error(tok):
    module, params = build(AlbertForSequenceClassification)
    with pytest.raises(TypeError, match="fill_mask needs an AlbertForPreTraining or AlbertForMaskedLM"):
        inference.fill_mask(module, params, tok, "a [MASK].")
