"""Parts of `train_step.py`: the matmul ceiling at the step's shapes, and batches of real tokens.

`matmul_ceiling` jits the dense matmuls that `train_step.model_flops_per_step` counts, and nothing
else (no softmax, GELU, layer norm, dropout, optimizer): the E->H embedding projection, the L layers'
QKV/output/FFN projections and attention QK^T / PV batched matmuls (one shared layer run L times in a
`lax.scan`, as ALBERT runs it), the pooler + SOP head, and the MLM transform + decoder at the masked
positions, forward and backward (gradients of inputs and weights: 3x the forward's FLOPs), in the
model dtype. It performs the step's counted FLOPs, so step TFLOP/s / ceiling TFLOP/s is the
fraction of what this machine's matmuls can do at these shapes.

`real_batches` takes batches from the real input pipeline (`albert_jax.data.loader`) on a corpus
tokenized with a SentencePiece vocabulary, fetched to host before anything is timed.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_VOCAB = ROOT / "tests" / "fixtures" / "tokenizer" / "spiece.model"
CACHE_DIR = os.path.join(tempfile.gettempdir(), "albert_jax_bench_cache")
TRAINED_VOCAB_SIZE = 8000  # the largest vocabulary trained for --tokens real (a soft limit)


def _ceiling_fn(heads: int, layers: int, predictions: int):
    def forward(inputs, w):
        x = inputs["emb"] @ w["emb_h"]  # [B, T, E] x [E, H]
        b, t, h = x.shape
        d = h // heads
        s_qk, s_pv = 1.0 / np.sqrt(d), 1.0 / np.sqrt(t)  # keeps the values near unit scale (no softmax)

        def layer(x, _):
            q, k, v = ((x @ w[n]).reshape(b, t, heads, d).astype(x.dtype) for n in ("wq", "wk", "wv"))
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(s_qk, x.dtype)
            ctx = jnp.einsum("bhqk,bkhd->bqhd", scores, v).reshape(b, t, h) * jnp.asarray(s_pv, x.dtype)
            out = ctx @ w["wo"]
            return (out @ w["w1"]) @ w["w2"], None

        x, _ = jax.lax.scan(layer, x, None, length=layers)
        pooled = x[:, 0] @ w["pool"]  # [B, H] x [H, H]
        sop = pooled @ w["sop"]  # [B, H] x [H, 2]
        mlm = (x[:, :predictions] @ w["mlm_t"]) @ w["mlm_dec"]  # [B, P, H] x [H, E], [B, P, E] x [E, V]
        # Random cotangents: a plain sum would let XLA turn the backward matmuls into reductions.
        return jnp.vdot(mlm, inputs["r_mlm"]).astype(jnp.float32) + jnp.vdot(sop, inputs["r_sop"]).astype(
            jnp.float32
        )

    return jax.jit(jax.grad(forward, argnums=(0, 1)))


def matmul_ceiling(
    cfg, batch: int, seq: int, predictions: int, flops: float, *, repeats: int = 5, min_time_s: float = 0.05
) -> dict:
    """The achievable TFLOP/s of the step's own matmuls (shapes and dtype), best of `repeats`. `flops`:
    the step's counted FLOPs (`train_step.model_flops_per_step`), which these matmuls perform."""
    h, i, e, v = cfg.hidden_size, cfg.intermediate_size, cfg.embedding_size, cfg.vocab_size
    dtype = jnp.dtype(cfg.dtype)
    shapes = {
        "emb_h": (e, h),
        "wq": (h, h),
        "wk": (h, h),
        "wv": (h, h),
        "wo": (h, h),
        "w1": (h, i),
        "w2": (i, h),
        "pool": (h, h),
        "sop": (h, 2),
        "mlm_t": (h, e),
        "mlm_dec": (e, v),
    }
    keys = iter(jax.random.split(jax.random.key(0), len(shapes) + 3))

    def normal(shape, scale=1.0):
        return (jax.random.normal(next(keys), shape, jnp.float32) * scale).astype(dtype)

    w = {n: normal(s, 1.0 / np.sqrt(s[0])) for n, s in shapes.items()}
    inputs = {
        "emb": normal((batch, seq, e)),
        "r_mlm": normal((batch, predictions, v)),
        "r_sop": normal((batch, 2)),
    }
    fn = _ceiling_fn(cfg.num_attention_heads, cfg.num_hidden_layers, predictions)
    t0 = time.perf_counter()
    compiled = fn.lower(inputs, w).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(inputs, w))  # warm-up
    s = time.perf_counter()
    jax.block_until_ready(compiled(inputs, w))
    per_call = time.perf_counter() - s
    calls = max(1, int(min_time_s / max(per_call, 1e-9)))  # several calls a repeat when one is short
    best = float("inf")
    for _ in range(repeats):
        s = time.perf_counter()
        for _ in range(calls):
            out = compiled(inputs, w)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - s) / calls)
    return {
        "matmul_ceiling_tflops": flops / best / 1e12,
        "matmul_ceiling_time_s": best,
        "matmul_ceiling_compile_s": compile_s,
    }


_HLO_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1}


def scan_residuals(hlo_text: str) -> dict:
    """What the forward scan over depth carries to the backward, read off the compiled program: the
    per-layer stacks in the first while loop's state ([L, ...] buffers that each iteration writes one
    slice of) and their size. The unrolled step has no loop: 0."""
    loop = re.search(r"= \((.*?)\) while\(.*?known_trip_count\":\{\"n\":\"(\d+)\"", hlo_text)
    if loop is None:
        return {"scan_stacks": 0, "scan_stack_bytes": 0}
    trips = loop.group(2)
    stacks = [
        (dtype, dims)
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", loop.group(1))
        if dims.split(",")[0] == trips and "," in dims
    ]
    size = sum(_HLO_BYTES.get(t, 4) * int(np.prod([int(d) for d in dims.split(",")])) for t, dims in stacks)
    return {"scan_stacks": len(stacks), "scan_stack_bytes": size}


def real_tokenizer(corpus_files: str, vocab: str, vocab_size: int):
    """`--vocab`, else the test fixture when its size is the model's, else one trained on the corpus."""
    from albert_jax.tokenizer import AlbertTokenizer, train_tokenizer

    if vocab:
        return AlbertTokenizer(vocab), vocab
    fixture = AlbertTokenizer(str(FIXTURE_VOCAB))
    if fixture.vocab_size == vocab_size:
        return fixture, str(FIXTURE_VOCAB)
    from albert_jax.data.text import CorpusSpec, iter_documents

    sentences = (s for doc in iter_documents(CorpusSpec(files=corpus_files)) for s in doc if s.strip())
    out = tempfile.mkdtemp(prefix="albert_jax_bench_spm-")
    size = min(vocab_size, TRAINED_VOCAB_SIZE)
    path = train_tokenizer(sentences, os.path.join(out, "spiece"), vocab_size=size, hard_vocab_limit=False)
    return AlbertTokenizer(path), f"trained:{size}"


def real_batches(
    corpus_files: str, tok, batch: int, seq: int, predictions: int, count: int
) -> tuple[list, str]:
    """`count` host batches from `pretraining_dataset` on the tokenized corpus (the embedded one if
    `corpus_files` is empty), and the corpus's description."""
    from albert_jax.data.loader import pretraining_dataset
    from albert_jax.data.pretraining import PretrainDataConfig, TokenizedCorpus
    from albert_jax.data.text import CorpusSpec

    corpus = TokenizedCorpus.build(CorpusSpec(files=corpus_files), tok, CACHE_DIR)
    ds = pretraining_dataset(
        corpus,
        PretrainDataConfig(seq_len=seq, max_predictions=predictions),
        split="train",
        global_batch_size=batch,
        seed=0,
    )
    it = iter(ds)
    batches = [{k: np.asarray(x) for k, x in next(it).items()} for _ in range(max(1, count))]
    return batches, corpus.meta["source"]
