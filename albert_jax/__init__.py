"""albert_jax: ALBERT (A Lite BERT) in JAX/Flax. Public names are re-exported here; nothing is defined."""

from albert_jax.config import AlbertConfig
from albert_jax.modeling import (
    AlbertForMaskedLM,
    AlbertForMultipleChoice,
    AlbertForPreTraining,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    AlbertModel,
    init_params,
)
