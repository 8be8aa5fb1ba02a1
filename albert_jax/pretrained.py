"""Where a run's starting parameters come from: an HF directory or a pretraining/fine-tuning WORKDIR.

`load(init_from, head, **overrides)` returns the model config (shape from the checkpoint, overrides
for dropout and labels), host parameters for `head` and the checkpoint's vocabulary. Parts of the
head that the checkpoint lacks start fresh and are named in the log; a checkpoint without the
encoder is an error.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import flax.linen as nn
import jax
from flax import traverse_util

from albert_jax import errors, hf, hf_files, hub, workdir
from albert_jax.checkpoint import Checkpointer
from albert_jax.config import AlbertConfig
from albert_jax.modeling import HEADS, init_params
from albert_jax.tokenizer import AlbertTokenizer

log = logging.getLogger(__name__)


def load(
    init_from: str, head: str | type[nn.Module], seed: int = 0, **overrides: Any
) -> tuple[AlbertConfig, Any, AlbertTokenizer]:
    """(config, params for `head(config)`, tokenizer) from a run's WORKDIR (local or gs://, written by
    any mesh and host count), an HF directory or a Hub id (`albert/albert-base-v2`)."""
    if not init_from:
        raise errors.ConfigError(
            "init_from is empty: give an HF directory, a Hub id or a WORKDIR (or init_from=none on purpose)"
        )
    if workdir.is_run(init_from):
        config, saved_head = workdir.read_model_config(init_from, **overrides)
        ckpt = Checkpointer(workdir.path(init_from, workdir.CHECKPOINTS))
        step = ckpt.latest_step()
        if step is None:
            raise errors.MissingError(f"init_from={init_from!r} is a WORKDIR without a checkpoint")
        saved = ckpt.restore_params(step)  # host arrays: any topology
        log.info("init_from: %s (%s, step %s)", init_from, saved_head, step)
        # Through HF's names: the table already knows which tensors each head shares.
        saved = {k: v for k, v in saved.items() if k in ("albert", "predictions", "sop_classifier")}
        state_dict = hf.params_to_hf(config, saved)
        tokenizer = workdir.tokenizer(init_from)
    elif workdir.is_url(init_from):
        raise errors.ConfigError(
            f"init_from={init_from!r}: only a run's WORKDIR is read from a URL; copy an HF directory to a local "
            "path (or a gcsfuse mount) first"
        )
    else:
        directory = hub.local_dir(init_from)  # a local HF directory, or a Hub id (one line when offline)
        if not (directory / "config.json").is_file():
            raise errors.MissingError(
                f"init_from={init_from!r} is neither an HF directory (no config.json) nor a run's WORKDIR "
                "(no model_config.json and checkpoints/)"
            )
        if not (directory / "spiece.model").is_file():
            raise errors.MissingError(
                f"init_from={init_from!r} has no spiece.model (the checkpoint's vocabulary)"
            )
        config = AlbertConfig.from_json(directory / "config.json", **overrides)
        state_dict = hf_files.load_state_dict(directory)
        tokenizer = AlbertTokenizer.from_pretrained(directory)
        log.info("init_from: HF checkpoint %s", init_from)
    tokenizer.check_vocab_size(config.vocab_size, f"init_from={init_from!r}")
    return config, params_for(config, head, state_dict, seed), tokenizer


def from_pretrained(
    path: str | os.PathLike, cls: type[nn.Module] | str = "AlbertModel", **config_overrides: Any
) -> tuple[nn.Module, Any]:
    """`(module, params)` of `cls` from an HF directory or Hub id (`hf.from_pretrained`), or from a run's
    WORKDIR (its latest checkpoint, whatever mesh and host count wrote it), e.g. in a notebook."""
    if not workdir.is_run(path):
        return hf.from_pretrained(path, cls, **config_overrides)
    module_cls = HEADS[cls] if isinstance(cls, str) else cls
    config, params, _ = load(os.fspath(path), module_cls, **config_overrides)
    return module_cls(config), params


def params_for(config: AlbertConfig, head: str | type[nn.Module], state_dict: dict, seed: int = 0) -> Any:
    """Host params of `head(config)` from an HF state dict; a head that is not an HF class (e.g. the
    original SQuAD v2 head) gets the encoder from the checkpoint and the rest fresh."""
    if isinstance(head, str) or head in HEADS.values():
        return hf.params_from_hf(config, head, state_dict, rng_seed=seed)
    encoder = hf.params_from_hf(config, "AlbertModel", state_dict, rng_seed=seed)
    module = head(config)
    fresh = jax.jit(lambda r: nn.unbox(init_params(module, r, seq_len=1)))(jax.random.key(seed))
    flat = traverse_util.flatten_dict(fresh)
    for path, value in traverse_util.flatten_dict(encoder).items():
        if ("albert", *path) in flat:
            flat[("albert", *path)] = value
    new = sorted("/".join(p) for p in flat if p[0] != "albert")
    log.warning("%s: not in the checkpoint, initialised fresh: %s", head.__name__, ", ".join(new))
    return traverse_util.unflatten_dict(flat)
