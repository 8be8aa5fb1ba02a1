"""The benchmarks' command lines: what they refuse, and how (their numbers are not tested)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "flags, says",
    [
        ([], "HF_FLAX_PYTHON"),  # no side python: say how to make one
        (["--hf-flax-python", "/nonexistent/python"], "not an executable python"),
    ],
)
def test_compare_hf_flax_without_its_python_is_one_error_line(flags, says):
    env = {k: v for k, v in os.environ.items() if k != "HF_FLAX_PYTHON"}
    proc = subprocess.run(
        [sys.executable, "benchmarks/train_step.py", "--compare", "hf-flax", *flags],
        cwd=REPO,
        env={**env, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_step.py: error: ") and says in last
    assert "Traceback" not in proc.stderr and not proc.stdout


def test_matmul_ceiling_and_real_tokens_at_a_tiny_shape():
    """`--tokens real` and the matmul ceiling's building blocks (the full script takes ~15 s on CPU):
    real batches of the data pipeline, and a positive ceiling."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import train_step
        import train_step_parts
    finally:
        sys.path.pop(0)
    from albert_jax.config import AlbertConfig

    cfg = AlbertConfig(
        vocab_size=2000,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    batch, seq, predictions = 2, 32, 5
    tok, _ = train_step_parts.real_tokenizer("", "", cfg.vocab_size)  # the fixture: its size is 2000
    assert tok.vocab_size == cfg.vocab_size
    stream, _ = train_step_parts.real_batches("", tok, batch, seq, predictions, count=2)
    synthetic = train_step.synthetic_batch(cfg, batch, seq, predictions)
    assert len(stream) == 2
    for real in stream:
        assert {k: v.shape for k, v in real.items()} == {k: v.shape for k, v in synthetic.items()}
        assert real["input_ids"].max() < cfg.vocab_size and real["masked_lm_weights"].sum() > 0
    flops = train_step.model_flops_per_step(cfg, batch, seq, predictions)
    ceiling = train_step_parts.matmul_ceiling(cfg, batch, seq, predictions, flops, repeats=2, min_time_s=0.0)
    assert ceiling["matmul_ceiling_tflops"] > 0
