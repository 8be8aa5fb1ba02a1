"""The original ALBERT SQuAD 2.0 head (`create_v2_model` in google-research/albert `squad_utils.py`).

Unlike HF's `AlbertForQuestionAnswering` (one linear layer, independent start and end logits), this head
conditions the end on the start and adds an answerability classifier:

- start: dense H→1 on every position, masked by `p_mask` (1 = can't be in an answer).
- end: dense([h_t ; h_start]) 2H→H, tanh, LayerNorm, dense H→1, masked. Training teacher-forces the
  gold start; inference takes the top `start_n_top` starts and, for each, the top `end_n_top` ends.
- answer class: dense([Σ_t softmax(start)_t·h_t ; h_CLS]) 2H→H, tanh, dropout, dense H→1 without bias.

Parameter names follow the original's variable scopes (`start_logits/dense`, `end_logits/dense_0`,
`end_logits/LayerNorm`, `end_logits/dense_1`, `answer_class/dense_0`, `answer_class/dense_1`). There is
no pooling layer. Not an HF class, so it is not in `modeling.HEADS`; pass the class itself as a task head.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from albert_jax.config import AlbertConfig
from albert_jax.modeling import AlbertWithHead, ModelOutput, classifier_dropout, dense, layer_norm

Array = jax.Array
_MASKED = -1e30  # the original's additive mask value


@flax.struct.dataclass(kw_only=True)
class QuestionAnsweringV2Output(ModelOutput):
    """Training (start_positions given): `start_logits`, `end_logits` [B, T] (masked, end teacher-forced).
    Inference: `start_top_log_probs`, `start_top_index` [B, K1]; `end_top_log_probs`, `end_top_index`
    [B, K1, K2] (row i: the ends for start i). Both: `start_logits` and `cls_logits` [B] (answerability
    logit, positive = no answer)."""

    start_logits: Array
    cls_logits: Array
    end_logits: Array | None = None
    start_top_log_probs: Array | None = None
    start_top_index: Array | None = None
    end_top_log_probs: Array | None = None
    end_top_index: Array | None = None


def _mask(logits: Array, p_mask: Array | None) -> Array:
    """`logits` where p_mask is 0, -1e30 where it is 1; p_mask broadcasts on the leading axes ('BT')."""
    logits = logits.astype(jnp.float32)
    if p_mask is None:
        return logits
    return jnp.where(p_mask.astype(bool), _MASKED, logits)


class _EndLogits(nn.Module):
    """End logits at every position given the start's hidden state: [h_t ; h_s] → dense tanh → LN → dense."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, hidden: Array, start_hidden: Array) -> Array:
        # hidden [..., T, H]; start_hidden [..., H] -> logits [..., T]; leading axes broadcast.
        cfg = self.config
        start_hidden = start_hidden[..., None, :]
        shape = jnp.broadcast_shapes(hidden.shape, start_hidden.shape)
        x = jnp.concatenate(
            [jnp.broadcast_to(hidden, shape), jnp.broadcast_to(start_hidden, shape)], axis=-1
        )  # '...T(2H)'
        x = jnp.tanh(dense(cfg, cfg.hidden_size, ("hidden", None), "dense_0")(x))  # '...T(2H),(2H)H->...TH'
        x = layer_norm(cfg, "hidden", "LayerNorm")(x)
        return dense(cfg, 1, ("hidden", None), "dense_1")(x)[..., 0].astype(jnp.float32)  # '...TH,H1->...T'


class _AnswerClass(nn.Module):
    """Answerability logit from the start-weighted hidden state and the [CLS] state."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, hidden: Array, start_probs: Array, deterministic: bool) -> Array:
        cfg = self.config
        start_feature = jnp.einsum("BT,BTH->BH", start_probs.astype(hidden.dtype), hidden)
        x = jnp.concatenate([start_feature, hidden[:, 0]], axis=-1)  # 'B(2H)'
        x = jnp.tanh(dense(cfg, cfg.hidden_size, ("hidden", None), "dense_0")(x))
        x = nn.Dropout(classifier_dropout(cfg))(x, deterministic=deterministic)
        dense_1 = nn.Dense(
            1,
            use_bias=False,
            dtype=cfg.jnp_dtype,
            param_dtype=cfg.jnp_param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.normal(cfg.initializer_range), ("hidden", None)
            ),
            name="dense_1",
        )
        return dense_1(x)[..., 0].astype(jnp.float32)  # 'BH,H1->B'


class AlbertForQuestionAnsweringV2(AlbertWithHead):
    """The original ALBERT SQuAD 2.0 head; extra inputs `p_mask` [B, T] and (training) `start_positions` [B].

    With `start_positions` the end logits are teacher-forced on the gold start (training); without, the
    head runs the start_n_top × end_n_top beam (inference).
    """

    pooling: ClassVar[bool] = False
    output_cls: ClassVar[type] = QuestionAnsweringV2Output
    start_n_top: int = 5
    end_n_top: int = 5

    def head(self, albert, out, deterministic, shape, p_mask=None, start_positions=None):
        cfg = self.config
        hidden = out.last_hidden_state  # BTH
        if p_mask is not None:
            p_mask = jnp.asarray(p_mask)
        start_logits = dense(cfg, 1, ("hidden", None), "start_logits")(hidden)[..., 0]  # 'BTH,H1->BT'
        start_logits = _mask(start_logits, p_mask)
        start_log_probs = jax.nn.log_softmax(start_logits, axis=-1)
        end_module = _EndLogits(cfg, name="end_logits")
        fields = {"start_logits": start_logits}
        if start_positions is not None:
            pos = jnp.asarray(start_positions).astype(jnp.int32).reshape(-1)
            start_hidden = jnp.take_along_axis(hidden, pos[:, None, None], axis=1)[:, 0]  # 'BTH,B->BH'
            fields["end_logits"] = _mask(end_module(hidden, start_hidden), p_mask)
        else:
            length = hidden.shape[1]
            k1, k2 = min(self.start_n_top, length), min(self.end_n_top, length)
            top_start_lp, top_start = jax.lax.top_k(start_log_probs, k1)  # BK
            start_hidden = jnp.take_along_axis(hidden, top_start[..., None], axis=1)  # 'BTH,BK->BKH'
            end_logits = end_module(hidden[:, None], start_hidden)  # 'B1TH,BKH->BKT'
            end_logits = _mask(end_logits, None if p_mask is None else p_mask[:, None])
            top_end_lp, top_end = jax.lax.top_k(jax.nn.log_softmax(end_logits, axis=-1), k2)  # BKK'
            fields.update(
                start_top_log_probs=top_start_lp,
                start_top_index=top_start,
                end_top_log_probs=top_end_lp,
                end_top_index=top_end,
            )
        start_probs = jax.nn.softmax(start_logits, axis=-1)
        fields["cls_logits"] = _AnswerClass(cfg, name="answer_class")(hidden, start_probs, deterministic)
        return fields
