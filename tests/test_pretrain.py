"""Pretraining end to end: learning, exact resume after SIGKILL, NaN handling, bad input (SIGTERM and
host counts: test_pod.py)."""

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

from albert_jax import optim
from albert_jax import sharding as sharding_lib
from albert_jax.config import AlbertConfig
from albert_jax.modeling import AlbertForPreTraining, init_params
from albert_jax.training import pretrain, summary
from albert_jax.training import run as run_lib
from configs import pretrain as pretrain_configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_VOCAB = os.path.join(REPO, "tests", "fixtures", "tokenizer", "spiece.model")
DATA_CACHE = os.environ["ALBERT_JAX_TEST_DATA_CACHE"]  # the session's data cache (conftest.py)

# A model small enough for a 2-core CI machine, with everything else as in the `tiny` preset.
SMALL = {
    "model.vocab_size": 1000,
    "model.embedding_size": 32,
    "model.hidden_size": 64,
    "model.num_attention_heads": 4,
    "model.intermediate_size": 128,
    "model.num_hidden_layers": 2,
    "model.max_position_embeddings": 64,
    "seq_len": 64,
    "batch_size": 16,
    "eval_batch_size": 8,
    "eval_steps": 4,
    "data.eval_fraction": 0.1,
    "data.max_predictions_per_seq": 10,
    "progress_bar": False,
}


def set_keys(config, settings):
    """Set dotted keys ("data.cache_dir") of a ConfigDict, as --config.key=value would."""
    for key, value in settings.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value


def small_config(**overrides):
    config = pretrain_configs.get_config("tiny")
    set_keys(config, {**SMALL, "data.cache_dir": DATA_CACHE, **overrides})
    return config


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def cli_args(workdir, **overrides):
    settings = {**SMALL, "data.cache_dir": DATA_CACHE, **overrides}
    return [
        sys.executable,
        os.path.join(REPO, "pretrain.py"),
        "--config=configs/pretrain.py:tiny",
        f"--workdir={workdir}",
    ] + [f"--config.{k}={v}" for k, v in settings.items()]


def test_tiny_run_learns(tmp_path):
    """The `tiny` preset at batch 32 for 500 steps (~1.5 min): MLM loss falls well below its start (the
    piece frequencies are learned), and held-out MLM accuracy clearly beats always predicting the most
    frequent target token (the model learns to copy the 10% of masked pieces left in place). Predicting
    replaced pieces from their context takes ALBERT far longer than this (README, Quick start), so that
    accuracy is only checked to be reported."""
    workdir = str(tmp_path / "run")
    config = pretrain_configs.get_config("tiny")
    config.batch_size, config.total_steps, config.warmup_steps, config.log_every = 32, 500, 50, 10
    config.eval_every, config.checkpoint_every, config.eval_steps = 0, 1000, 10
    config.data.cache_dir, config.progress_bar = DATA_CACHE, False
    final = pretrain.run(config, workdir)
    train = [m for m in read_metrics(workdir) if "train/loss" in m]
    assert train[0]["step"] == 10 and train[-1]["step"] == 500
    start = np.log(config.model.vocab_size)  # uniform prediction: 8.0 nats for 3000 pieces
    assert train[-1]["train/mlm_loss"] < start - 1.5, (start, train[-1]["train/mlm_loss"])
    assert final["mlm_accuracy"] > 1.25 * final["mlm_majority_accuracy"], final
    assert 0 <= final["mlm_replaced_accuracy"] <= 1 and 0 < final["mlm_replaced_majority_accuracy"] < 1, final
    for key in (
        "loss",
        "mlm_loss",
        "mlm_accuracy",
        "mlm_replaced_accuracy",
        "sop_loss",
        "sop_accuracy",
        "learning_rate",
        "grad_norm",
        "tokens_per_sec",
    ):
        assert "train/" + key in train[-1]
    # Run files: resolved config, model config, vocabulary, TensorBoard events, a final checkpoint.
    assert json.load(open(os.path.join(workdir, "config.json")))["total_steps"] == 500
    assert (
        AlbertConfig.from_json(os.path.join(workdir, "model_config.json")).vocab_size
        == config.model.vocab_size
    )
    assert os.path.exists(os.path.join(workdir, "spiece.model"))
    assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    assert "500" in os.listdir(os.path.join(workdir, "checkpoints"))

    # Export: transformers loads it and agrees with our model on the same input.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from albert_jax.export import export

    out = export(workdir, str(tmp_path / "hf"))
    hf, info = transformers.AlbertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    from albert_jax import from_pretrained
    from albert_jax.tokenizer import AlbertTokenizer

    tok = AlbertTokenizer.from_pretrained(out)
    enc = tok("The quick brown fox jumps over the lazy dog.", return_tensors="np")
    model, params = from_pretrained(out, "AlbertForPreTraining")
    ours = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    with torch.no_grad():
        theirs = hf(**{k: torch.tensor(v) for k, v in enc.items()})
    np.testing.assert_allclose(ours.prediction_logits, theirs.prediction_logits.numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def embedded_setup(tmp_path_factory):
    """The embedded corpus tokenized with the fixture vocabulary, resolved as the `tiny` run resolves it."""
    tmp = tmp_path_factory.mktemp("embedded")
    config = pretrain_configs.get_config("tiny")
    set_keys(
        config,
        {"model.vocab_size": 2000, "data.tokenizer": FIXTURE_VOCAB, "data.cache_dir": str(tmp / "cache")},
    )
    return pretrain.resolve(config, str(tmp / "run"))


def _detokenized(setup, docs):
    corpus, tok = setup.corpus, setup.tokenizer
    return {
        "".join(tok.convert_ids_to_tokens(corpus.sentence(i).tolist())).replace("▁", " ").strip()
        for d in docs
        for i in corpus.document_sentence_range(int(d))
    }


def test_fill_mask_examples_are_held_out_sentences_masked_by_the_rule(embedded_setup):
    examples = summary.fill_mask_examples(embedded_setup)
    assert len(examples) == summary.NUM_FILL_MASK_EXAMPLES
    assert examples == summary.fill_mask_examples(embedded_setup)  # deterministic
    _, eval_docs = embedded_setup.corpus.document_split(embedded_setup.data_config.eval_fraction)
    held_out = _detokenized(embedded_setup, eval_docs)
    tok = embedded_setup.tokenizer
    for text, target in examples:
        word = target.removeprefix("▁")
        assert target.startswith("▁") and len(word) >= 4 and word.isalpha(), target
        assert word not in summary._STOPWORDS
        assert text.replace("[MASK]", word) in held_out, text
        ids = tok(text, return_tensors="np")["input_ids"][0]
        assert list(ids).count(tok.mask_token_id) == 1, text


def test_summary_prints_the_examples_and_counts_hits(embedded_setup, capsys, monkeypatch):
    """Every example's text, masked word and five guesses; the hit count matches the marked guesses.
    fill_mask is replaced by one that guesses right for every other example (its own test is elsewhere)."""
    examples = summary.fill_mask_examples(embedded_setup)
    answers = {text: target for text, target in examples}
    others = [("▁the", 0.3), (",", 0.2), ("▁", 0.1), ("▁a", 0.05)]

    def fake_fill_mask(model, params, tok, text):
        right = list(answers).index(text) % 2 == 0
        return [([(answers[text], 0.01)] if right else [("▁of", 0.01)]) + others]

    monkeypatch.setattr(summary.inference, "fill_mask", fake_fill_mask)
    final = {
        "mlm_accuracy": 0.25,
        "mlm_majority_accuracy": 0.05,
        "mlm_replaced_accuracy": 0.125,
        "mlm_replaced_majority_accuracy": 0.0625,
        "sop_accuracy": 0.75,
    }
    summary.print_summary(final, None, None, embedded_setup)
    lines = capsys.readouterr().out.splitlines()
    n = summary.NUM_FILL_MASK_EXAMPLES
    assert lines[:2] == [
        "held-out MLM accuracy 0.2500 (most-frequent-token baseline 0.0500), "
        "SOP accuracy 0.7500 (chance 0.5)",
        "MLM accuracy where the input piece was replaced ([MASK] or random, so only the context tells): "
        "0.1250 (baseline 0.0625)",
    ]
    assert len(lines) == 4 + 2 * n
    assert [line.strip() for line in lines[3:-1:2]] == [text for text, _ in examples]
    guesses = [re.findall(r"(\S*) (\d\.\d\d)", g.split(": ", 1)[1]) for g in lines[4:-1:2]]
    assert [[piece for piece, _ in g] for g in guesses[:2]] == [
        ["*" + examples[0][1].removeprefix("▁"), "the", ",", "▁", "a"],
        ["of", "the", ",", "▁", "a"],
    ]
    assert all(len(g) == 5 for g in guesses)
    assert lines[-1] == f"masked word in the top 5: {(n + 1) // 2} of {n}"


def test_continued_pretraining_differs_only_in_starting_parameters(tmp_path):
    """Export a fresh run's initial parameters to HF, continue from them: the same losses, step for step.
    Then continuing from the run's WORKDIR starts from its trained parameters (a lower first loss)."""
    from albert_jax import save_pretrained
    from albert_jax.tokenizer import AlbertTokenizer

    overrides = dict(total_steps=3, warmup_steps=1, log_every=1, eval_every=0, checkpoint_every=3)
    fresh = str(tmp_path / "fresh")
    config = small_config(**overrides)
    pretrain.run(config, fresh)

    model = AlbertForPreTraining(pretrain.model_config_from(config))
    params = jax.jit(lambda r: nn.unbox(init_params(model, r, config.seq_len)))(jax.random.key(config.seed))
    start = str(tmp_path / "start")
    save_pretrained(start, model, params)
    AlbertTokenizer.from_pretrained(fresh).save_pretrained(start)

    continued = str(tmp_path / "continued")
    pretrain.run(small_config(init_from=start, **overrides), continued)
    ref = [m for m in read_metrics(fresh) if "train/loss" in m]
    got = [m for m in read_metrics(continued) if "train/loss" in m]
    assert [m["step"] for m in got] == [1, 2, 3]
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b["train/loss"], a["train/loss"], rtol=1e-6)

    from_run = str(tmp_path / "from_run")
    pretrain.run(small_config(init_from=fresh, **overrides), from_run)
    assert [m for m in read_metrics(from_run) if "train/loss" in m][0]["train/loss"] < ref[0]["train/loss"]
    # The model's shape and vocabulary come from init_from, whatever config.model says.
    assert (
        AlbertTokenizer.from_pretrained(from_run).fingerprint
        == AlbertTokenizer.from_pretrained(fresh).fingerprint
    )


def _wait_for_step(workdir, step, proc, timeout=240):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read().decode()[-2000:]}")
        if os.path.exists(path):
            steps = [json.loads(line)["step"] for line in open(path) if line.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the run")


@pytest.mark.slow
def test_sigkill_then_rerun_reproduces_losses_bitwise(tmp_path):
    overrides = dict(
        total_steps=14, warmup_steps=2, log_every=1, eval_every=0, checkpoint_every=4, keep_checkpoints=2
    )
    reference = str(tmp_path / "reference")
    subprocess.run(cli_args(reference, **overrides), check=True, cwd=REPO, capture_output=True)

    workdir = str(tmp_path / "killed")
    proc = subprocess.Popen(
        cli_args(workdir, **overrides), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for_step(workdir, 9, proc)  # past the step-8 checkpoint, mid-interval
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cli_args(workdir, **overrides), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    ref = {m["step"]: m for m in read_metrics(reference) if "train/loss" in m}
    got = {m["step"]: m for m in read_metrics(workdir) if "train/loss" in m}
    assert sorted(got) == sorted(ref) == list(range(1, 15))
    for step in ref:
        for key in ("train/loss", "train/mlm_loss", "train/sop_loss", "train/grad_norm"):
            assert got[step][key] == ref[step][key], (step, key, got[step][key], ref[step][key])


# --- train_step ------------------------------------------------------------------------------------


def _state_and_batch(grad_accum_seed=0, batch_size=8, seq=32, vocab=97):
    # No dropout anywhere (the SOP head's is on by default), so micro-batches see the same function.
    cfg = AlbertConfig(
        classifier_dropout_prob=0.0,
        vocab_size=vocab,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=seq,
    )
    model = AlbertForPreTraining(cfg)
    tx, schedule = optim.make_optimizer("lamb", 1e-3, total_steps=10, warmup_steps=1)
    tx = optim.skip_nonfinite(tx)
    mesh = sharding_lib.make_mesh()
    state, _ = run_lib.create_train_state(
        lambda r: init_params(model, r, seq), model.apply, tx, mesh, sharding_lib.DEFAULT_RULES, 0
    )
    rng = np.random.default_rng(grad_accum_seed)
    p = 5
    batch = {
        "input_ids": rng.integers(5, vocab, (batch_size, seq)).astype(np.int32),
        "attention_mask": np.ones((batch_size, seq), np.int32),
        "token_type_ids": np.zeros((batch_size, seq), np.int32),
        "masked_lm_positions": rng.integers(1, seq, (batch_size, p)).astype(np.int32),
        "masked_lm_ids": rng.integers(5, vocab, (batch_size, p)).astype(np.int32),
        "masked_lm_weights": (rng.random((batch_size, p)) < 0.8).astype(np.float32),
        "sentence_order_label": rng.integers(0, 2, (batch_size,)).astype(np.int32),
    }
    return state, schedule, batch


def test_replaced_accuracy_counts_only_pieces_the_model_could_not_see():
    """`mlm_replaced_*` counts the masked positions whose input piece differs from the target (a [MASK] or a
    random piece), so copying a kept piece would score in `mlm_correct` but not there. Checked against a
    count by hand, with half the targets set to the model's own guesses."""
    state, _, batch = _state_and_batch()

    def guesses(ids):
        out = state.apply_fn(
            {"params": state.params},
            ids,
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=True,
            masked_lm_positions=batch["masked_lm_positions"],
        )
        return np.asarray(out.prediction_logits.argmax(-1))

    guess = guesses(batch["input_ids"])
    rows = np.arange(len(guess))[:, None]
    ids = batch["input_ids"].copy()
    targets = np.where(np.arange(guess.shape[1]) % 2 == 0, guess, batch["masked_lm_ids"])
    # In the first half of the rows, the input keeps its piece at every masked position (the 10% case).
    ids[rows[:4], batch["masked_lm_positions"][:4]] = targets[:4]
    batch = dict(batch, input_ids=ids, masked_lm_ids=targets.astype(np.int32))
    guess = guesses(ids)
    _, stats = pretrain.pretraining_loss(
        state.params, state.apply_fn, batch, jax.random.key(0), pretrain.loss_norm(batch), deterministic=True
    )
    used = batch["masked_lm_weights"] > 0
    replaced = used & (ids[rows, batch["masked_lm_positions"]] != targets)
    assert 0 < replaced.sum() < used.sum()
    right = guess == targets
    assert (right & replaced).any()
    assert float(stats["mlm_correct"]) == (right & used).sum()
    assert float(stats["mlm_replaced_weight"]) == replaced.sum()
    assert float(stats["mlm_replaced_correct"]) == (right & replaced).sum()


def test_sentence_objective_switch_in_the_loss():
    """`nsp` trains the same head on the same labels as `sop` (only the data differ); `none` leaves the
    sentence loss out (the head gets no gradient) and logs no sentence metrics."""
    state, _, batch = _state_and_batch()
    norm = pretrain.loss_norm(batch)

    def loss(objective):
        fn = functools.partial(pretrain.pretraining_loss, sentence_objective=objective)
        (value, stats), grads = jax.value_and_grad(fn, has_aux=True)(
            state.params, state.apply_fn, batch, jax.random.key(0), norm, True
        )
        return float(value), stats, grads

    sop, stats, sop_grads = loss("sop")
    nsp, _, _ = loss("nsp")
    none, _, none_grads = loss("none")
    mlm = float(stats["mlm_loss_sum"] / norm["mlm"])
    sentence = float(stats["sentence_loss_sum"] / norm["sentence"])
    assert sop == nsp and np.isclose(none, mlm) and np.isclose(sop, mlm + sentence) and sentence > 0
    assert not jax.tree.leaves(jax.tree.map(lambda g: np.abs(g).max(), none_grads["sop_classifier"]))[0] > 0
    assert jax.tree.leaves(jax.tree.map(lambda g: np.abs(g).max(), sop_grads["sop_classifier"]))[0] > 0
    names = {o: set(pretrain.summarise(stats, sentence_objective=o)) for o in ("sop", "nsp", "none")}
    assert {"sop_accuracy", "sop_loss"} <= names["sop"] and {"nsp_accuracy", "nsp_loss"} <= names["nsp"]
    assert not {n for n in names["none"] if n.startswith(("sop", "nsp"))}


def test_grad_accumulation_matches_full_batch():
    state, schedule, batch = _state_and_batch()
    full = jax.jit(functools.partial(pretrain.train_step, seed=0, schedule=schedule, grad_accum_steps=1))
    accum = jax.jit(functools.partial(pretrain.train_step, seed=0, schedule=schedule, grad_accum_steps=4))
    s1, m1 = full(state, batch)
    s4, m4 = accum(state, batch)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert int(s1.step) == int(s4.step) == 1


def test_nonfinite_step_is_skipped_and_counted():
    state, schedule, batch = _state_and_batch()
    step = jax.jit(functools.partial(pretrain.train_step, seed=0, schedule=schedule))
    bad = dict(batch, masked_lm_weights=np.full_like(batch["masked_lm_weights"], np.nan))
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, bad)
    assert int(metrics["nonfinite_streak"]) == 1 and int(metrics["nonfinite_total"]) == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)  # the update was skipped
    state, metrics = step(state, batch)
    assert int(metrics["nonfinite_streak"]) == 0 and int(metrics["nonfinite_total"]) == 1
    assert np.isfinite(metrics["loss"])


def test_diverging_run_stops_with_one_line_and_keeps_checkpoints(tmp_path):
    """lr=1e30 blows the parameters up after one update; every later step is non-finite and skipped."""
    workdir = str(tmp_path / "run")
    args = cli_args(
        workdir,
        learning_rate=1e30,
        warmup_steps=0,
        total_steps=20,
        log_every=1,
        eval_every=0,
        checkpoint_every=2,
        max_consecutive_nonfinite=3,
    )
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "error: 3 consecutive steps had non-finite gradients" in proc.stderr
    metrics = read_metrics(workdir)
    assert np.isfinite(metrics[0]["train/loss"]) and not np.isfinite(metrics[-1]["train/loss"])
    assert metrics[-1]["train/nonfinite_total"] == 3
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert saved and max(saved) <= 3  # nothing saved once the streak was seen


def test_dropout_key_depends_on_step_only():
    state, schedule, batch = _state_and_batch()
    step = jax.jit(functools.partial(pretrain.train_step, seed=0, schedule=schedule))
    _, m_a = step(state, batch)
    _, m_b = step(state, batch)
    assert float(m_a["loss"]) == float(m_b["loss"])


# --- bad input: one line on stderr, exit 1, WORKDIR untouched ---------------------------------------


def _snapshot(path):
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[p] = open(p, "rb").read()
    return out


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    """A workdir holding a finished short run; bad-input reruns must leave it exactly as it is."""
    tmp = tmp_path_factory.mktemp("existing")
    workdir = str(tmp / "run")
    config = small_config(total_steps=2, warmup_steps=1, log_every=1, eval_every=0, checkpoint_every=2)
    pretrain.run(config, workdir)
    return tmp, workdir


def _bad_input_cases(tmp):
    empty = tmp / "empty.txt"
    empty.write_text("")
    not_spm = tmp / "not_spiece.model"
    not_spm.write_bytes(b"this is not a sentencepiece model")
    latin1 = tmp / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait.\n".encode("latin-1"))
    return {
        "missing corpus": ([f"--config.data.files={tmp}/nope/*.txt"], "nope"),
        "empty corpus": ([f"--config.data.files={empty}"], "empty.txt"),
        "non-UTF-8 corpus": ([f"--config.data.files={latin1}"], "latin1.txt"),
        "not a SentencePiece model": ([f"--config.data.tokenizer={not_spm}"], "not_spiece.model"),
        "vocab size mismatch": (["--config.model.vocab_size=1234"], "vocab_size"),
        "unknown config key": (["--config.data.no_such_key=1"], "no_such_key"),
        "inconsistent model": (["--config.model.num_attention_heads=5"], "num_attention_heads"),
        "impossible mesh": (["--config.mesh.data=3"], "needs 3 devices"),
        "indivisible accumulation": (["--config.grad_accum_steps=3"], "grad_accum_steps=3"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing corpus",
        "empty corpus",
        "non-UTF-8 corpus",
        "not a SentencePiece model",
        "vocab size mismatch",
        "unknown config key",
        "inconsistent model",
        "impossible mesh",
        "indivisible accumulation",
    ],
)
def test_bad_input_is_one_clear_line_and_destroys_nothing(existing_run, case):
    tmp, workdir = existing_run
    extra, needle = _bad_input_cases(tmp)[case]
    before = _snapshot(workdir)
    args = cli_args(workdir, total_steps=4, warmup_steps=1) + extra
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [
        line
        for line in proc.stderr.strip().splitlines()
        if line.strip() and not line.startswith(("I1", "W1"))
    ]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert needle in proc.stderr, proc.stderr[-2000:]
    assert len([line for line in lines if needle in line]) >= 1
    assert _snapshot(workdir) == before
