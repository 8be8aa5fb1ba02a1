"""albert_jax: ALBERT (A Lite BERT) in JAX/Flax. Public names are re-exported here; nothing is defined.

An entry point that asks for it is first restarted with glibc's huge-page tunable
(`host_memory.restart_for_entry_point`), before anything imports jax.
"""

from albert_jax import host_memory

host_memory.restart_for_entry_point()

from albert_jax.config import AlbertConfig
from albert_jax.hf import save_pretrained
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
from albert_jax.pretrained import from_pretrained

# The tokenizer is loaded on first use, so that `python -m albert_jax.tokenizer` does not find its
# own module already imported by the package (runpy warns about that).
_LAZY = {"AlbertTokenizer": "albert_jax.tokenizer", "train_tokenizer": "albert_jax.tokenizer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'albert_jax' has no attribute {name!r}")


__all__ = [
    "AlbertConfig",
    "AlbertForMaskedLM",
    "AlbertForMultipleChoice",
    "AlbertForPreTraining",
    "AlbertForQuestionAnswering",
    "AlbertForSequenceClassification",
    "AlbertForTokenClassification",
    "AlbertModel",
    "AlbertTokenizer",
    "from_pretrained",
    "init_params",
    "save_pretrained",
    "train_tokenizer",
]
