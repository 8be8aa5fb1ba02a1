"""How long masked-LM training sits at unigram statistics: ALBERT against minimal post-LN and pre-LN models.

Usage::

    python benchmarks/mlm_plateau.py                      # the three models, 1500 steps each (~15 min)
    python benchmarks/mlm_plateau.py --models albert --steps 300

Every model sees the same data and the same optimizer (ALBERT's AdamW, linear warmup and decay, clipping):
windows of `--seq` pieces from the embedded corpus (a vocabulary trained on it first), 15% of pieces
replaced by [MASK] (single pieces, no 80/10/10, no SOP), 5% of documents held out. Every `--eval-every`
steps it prints the held-out accuracy at the masked pieces next to the most-frequent-piece baseline,
which is where a model that ignores the context stays. The minimal models are a textbook transformer
block (attention, GELU MLP, tied output embedding) of the same width and depth, with the LayerNorms after
each residual sum (post-LN, as in BERT and ALBERT) or before each sublayer (pre-LN). Prints one JSON
object last. A training-dynamics measurement, not a test; it explains the `make pretrain` summary (README).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from albert_jax import optim
from albert_jax.config import AlbertConfig
from albert_jax.data import prepare, text
from albert_jax.modeling import AlbertForMaskedLM

MODELS = ("albert", "post-ln", "pre-ln")


class _Block(nn.Module):
    width: int
    heads: int
    pre_ln: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # BTD -> BTD
        init = nn.initializers.normal(0.02)
        attend = nn.MultiHeadDotProductAttention(self.heads, kernel_init=init)
        mlp = nn.Sequential(
            [nn.Dense(4 * self.width, kernel_init=init), nn.gelu, nn.Dense(self.width, kernel_init=init)]
        )
        if self.pre_ln:
            x = x + attend(nn.LayerNorm()(x))
            return x + mlp(nn.LayerNorm()(x))
        x = nn.LayerNorm()(x + attend(x))
        return nn.LayerNorm()(x + mlp(x))


class MinimalMLM(nn.Module):
    """Token + learned position embeddings, `layers` blocks, logits from the tied embedding."""

    vocab: int
    seq: int
    width: int
    layers: int
    heads: int
    pre_ln: bool

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:  # BT -> BTV
        embed = nn.Embed(self.vocab, self.width, embedding_init=nn.initializers.normal(0.02))
        x = embed(ids) + self.param("position", nn.initializers.normal(0.02), (self.seq, self.width))
        if not self.pre_ln:
            x = nn.LayerNorm()(x)
        for _ in range(self.layers):
            x = _Block(self.width, self.heads, self.pre_ln)(x)
        if self.pre_ln:
            x = nn.LayerNorm()(x)
        return embed.attend(x)


def corpus_pieces(vocab_size: int, eval_fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray, int]:
    """(train pieces, held-out pieces, [MASK] id): the embedded corpus's documents, split by document."""
    spec = text.CorpusSpec()
    with tempfile.TemporaryDirectory() as tmp:
        tok = prepare.vocabulary("", spec, vocab_size, f"{tmp}/spiece.model")
    docs = [np.concatenate([tok.encode(s) for s in doc]) for doc in text.iter_documents(spec)]
    held_out = np.random.default_rng(0).random(len(docs)) < eval_fraction
    train = np.concatenate([d for d, h in zip(docs, held_out) if not h])
    evals = np.concatenate([d for d, h in zip(docs, held_out) if h])
    return train.astype(np.int32), evals.astype(np.int32), tok.mask_token_id


def masked_windows(pieces: np.ndarray, n: int, seq: int, mask_id: int, rng: np.random.Generator):
    """(targets, inputs, weights), each [n, seq]: random windows with 15% of pieces replaced by [MASK]."""
    starts = rng.integers(0, len(pieces) - seq, n)
    targets = np.stack([pieces[s : s + seq] for s in starts])
    weights = rng.random(targets.shape) < 0.15
    return targets, np.where(weights, mask_id, targets).astype(np.int32), weights.astype(np.float32)


def make_logits_fn(name: str, args: argparse.Namespace, vocab: int) -> tuple[nn.Module, Callable]:
    if name == "albert":
        config = AlbertConfig(
            vocab_size=vocab,
            embedding_size=args.width // 2,
            hidden_size=args.width,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            intermediate_size=4 * args.width,
            max_position_embeddings=args.seq,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model = AlbertForMaskedLM(config)
        return (
            model,
            lambda p, ids: model.apply({"params": p}, ids, jnp.ones_like(ids), jnp.zeros_like(ids)).logits,
        )
    model = MinimalMLM(vocab, args.seq, args.width, args.layers, args.heads, pre_ln=name == "pre-ln")
    return model, lambda p, ids: model.apply({"params": p}, ids)


def train(name: str, args: argparse.Namespace, data: tuple[np.ndarray, np.ndarray, int], vocab: int) -> dict:
    train_pieces, eval_pieces, mask_id = data
    model, logits_fn = make_logits_fn(name, args, vocab)
    held_out = masked_windows(eval_pieces, 512, args.seq, mask_id, np.random.default_rng(1))
    counts = np.bincount(train_pieces, minlength=vocab)
    baseline = float((held_out[0] == counts.argmax())[held_out[2] > 0].mean())
    sample = jnp.zeros((1, args.seq), jnp.int32)
    inputs = (sample, sample + 1, sample) if name == "albert" else (sample,)
    params = model.init(jax.random.key(args.seed), *inputs)["params"]
    tx, _ = optim.make_optimizer("adamw", args.lr, total_steps=args.steps, warmup_steps=args.warmup)
    opt_state = tx.init(params)

    def loss_fn(p, targets, inputs, weights):
        logits = logits_fn(p, inputs)
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        correct = (logits.argmax(-1) == targets) * weights
        return jnp.sum(xent * weights) / jnp.sum(weights), jnp.sum(correct) / jnp.sum(weights)

    @jax.jit
    def step(p, s, targets, inputs, weights):
        grads = jax.grad(lambda q: loss_fn(q, targets, inputs, weights)[0])(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    evaluate = jax.jit(loss_fn)
    rng = np.random.default_rng(args.seed)
    curve, start = [], time.perf_counter()
    for i in range(1, args.steps + 1):
        params, opt_state = step(
            params, opt_state, *masked_windows(train_pieces, args.batch, args.seq, mask_id, rng)
        )
        if i % args.eval_every == 0 or i == args.steps:
            loss, accuracy = (float(v) for v in evaluate(params, *held_out))
            curve.append({"step": i, "loss": round(loss, 3), "accuracy": round(accuracy, 4)})
            print(
                f"{name:8s} step {i:5d}: held-out loss {loss:.3f}, accuracy at [MASK] {accuracy:.4f} "
                f"(most-frequent-piece baseline {baseline:.4f})",
                flush=True,
            )
    return {"baseline": round(baseline, 4), "seconds": round(time.perf_counter() - start, 1), "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}"
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument(
        "--width", type=int, default=128, help="hidden size (ALBERT's embedding size is half)"
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    data = corpus_pieces(args.vocab_size)
    results = {name: train(name, args, data, args.vocab_size) for name in names}
    print(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
