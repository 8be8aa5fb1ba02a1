"""Hugging Face Hub ids: turn "a local directory, or a Hub id like albert/albert-base-v2" into a directory.

A leaf module (it imports nothing from albert_jax), so the tokenizer and the model loaders can both use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from albert_jax import errors

# What a checkpoint needs: the model's config and weights (any format hf_files reads) and the tokenizer.
HUB_PATTERNS = (
    "config.json",
    "*.safetensors",
    "*.bin",
    "*.index.json",
    "spiece.model",
    "tokenizer_config.json",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "name" or "owner/name"
_TRUE = frozenset({"1", "ON", "YES", "TRUE"})  # as huggingface_hub reads its boolean variables


def _is_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, read now rather than at import."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def local_dir(path_or_id: str | os.PathLike) -> Path:
    """A local directory as it is, or a Hub id (`albert/albert-base-v2`) downloaded to the HF cache.

    The download keeps only `HUB_PATTERNS`. With HF_HUB_OFFLINE=1 only the cache is looked at. A path
    that is neither is a FileNotFoundError; so is an id that cannot be fetched (offline, no network,
    unknown or gated repository), with a one-line message naming the id.
    """
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return local
    name = os.fspath(path_or_id)
    if local.exists():
        raise errors.MissingError(f"{name} is a file, not a directory or a Hugging Face Hub id")
    if not _HUB_ID.match(name):
        raise errors.MissingError(f"no such directory: {name}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    offline = _is_offline()
    try:
        return Path(snapshot_download(name, allow_patterns=list(HUB_PATTERNS), local_files_only=offline))
    except Exception as e:  # noqa: BLE001 (offline, unknown repo, no access: one line for the caller)
        prefix = f"{name} is not a local directory and could not be fetched from the Hugging Face Hub"
        hint = f"download it first with `hf download {name} --local-dir DIR` and pass DIR"
        if offline:
            raise errors.MissingError(f"{prefix} (offline: HF_HUB_OFFLINE=1); {hint}") from None
        if isinstance(e, LocalEntryNotFoundError):  # the Hub was unreachable and nothing is cached
            reason = f"no network and not in the cache, HF_HUB_OFFLINE is not set; {_reason(e)}"
            raise errors.MissingError(f"{prefix} ({reason}); {hint}") from None
        raise errors.MissingError(f"{prefix} ({_reason(e)})") from None
