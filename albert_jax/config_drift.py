"""What may change when a run resumes: the new config against the one saved in WORKDIR.

Keys are classified by group, with explicit exceptions (`RULES`, first matching pattern wins): a
key no exception names is part of what the checkpoint means (the model, the data, the optimizer,
the seed) and refused, so a new key needs a rule only when changing it mid-run is harmless.

- `ALLOW`: changes nothing the checkpoint depends on (length of the run, cadences, evaluation,
  display); resumes quietly.
- `WARN`: resumes, with a warning that says what the change costs.
- `REFUSE`: the checkpoint does not mean the same under the new value; the run stops with one line
  listing each such key as old → new. `allow_config_change=true` resumes anyway, and says so.

A key missing from an old WORKDIR's config.json was written before the key existed, so that run used
that version's behaviour, which a new key's default keeps: it is no change when today's value is
today's default (`defaults`, the config file without overrides), and a change from "(absent)"
otherwise. Keys in `PREDATES` are the exception: their absence means a behaviour older than every
value they take today, which is a change.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
from typing import Any

import ml_collections

from albert_jax import errors
from albert_jax import workdir as workdir_lib

log = logging.getLogger(__name__)

ALLOW, WARN, REFUSE = "allow", "warn", "refuse"

_SAME_ORDER = "the data order is kept (results agree up to float rounding)"

_CADENCE = "how long and how often; the checkpoint does not depend on it"
_PREPARED = (
    "the prepared corpus was checked against the source and the vocabulary; the data is the same "
    "unless the corpus files changed between its preparation and this run's token cache"
)
_PREDATES = "WORKDIR's config predates this key; assuming its run used this value"
_ORIGINAL_RECIPE = (
    "from before the original's example construction (per-chunk short targets, no random-document B, "
    "chunks fixed per seed)"
)
# Keys whose absence from an old config.json means a behaviour that no value of theirs reproduces
# today: (value shown for the old run). Resuming such a run changes its data, so it is refused.
PREDATES: dict[str, str] = {
    "data.sentence_objective": f"sop, {_ORIGINAL_RECIPE}",
    "data.single_sentence_chunks": f"merge, {_ORIGINAL_RECIPE}",
}
_SKIPPED = (
    "the saved data position counts batches, so from here examples are skipped or repeated and the run "
    "no longer matches an uninterrupted one"
)

# (key pattern, action, what it is / what the change costs). First match wins.
RULES: tuple[tuple[str, str, str], ...] = (
    # Exceptions inside the model and data groups.
    ("model.remat_policy", ALLOW, "recomputation only"),
    ("model.attention_impl", ALLOW, "the same attention through another kernel"),
    ("model.scan_unroll", ALLOW, "the same layers, more of them per loop iteration"),
    ("model.fused_qkv", ALLOW, "the same projections as one matmul"),
    ("model.fused_kernels", ALLOW, "the same LayerNorm and GELU through other kernels"),
    ("data.cache_dir", ALLOW, "the token cache is keyed by corpus and vocabulary"),
    ("data.prepared", WARN, _PREPARED),
    ("data.worker_count", REFUSE, "the saved data position's format depends on it"),
    # Groups.
    ("model.*", REFUSE, "model shape"),
    ("data.*", REFUSE, "data"),
    ("mesh.*", WARN, f"the state is resharded on restore; {_SAME_ORDER}"),
    ("logical_axis_rules", WARN, f"the state is resharded on restore; {_SAME_ORDER}"),
    # Top-level exceptions: run length, cadences, evaluation, display, where things are kept.
    ("total_steps", ALLOW, _CADENCE),
    ("*_every", ALLOW, _CADENCE),
    ("*_every_minutes", ALLOW, _CADENCE),
    ("keep_checkpoints", ALLOW, _CADENCE),
    ("async_checkpointing", ALLOW, _CADENCE),
    ("eval_steps", ALLOW, "evaluation"),
    ("eval_batch_size", ALLOW, "evaluation"),
    ("n_best_size", ALLOW, "evaluation"),  # SQuAD answer extraction
    ("max_answer_length", ALLOW, "evaluation"),
    ("null_score_diff_threshold", ALLOW, "evaluation"),
    ("progress_bar", ALLOW, "display"),
    ("max_consecutive_nonfinite", ALLOW, "stopping rule"),
    ("allow_config_change", ALLOW, "this override"),
    ("compilation_cache_dir", ALLOW, "where compiled programs are kept"),
    ("num_seeds", ALLOW, "more or fewer seed runs; each seed_<k> resumes on its own"),
    ("batch_size", WARN, _SKIPPED),
    ("grad_accum_steps", WARN, f"the same batches, summed in micro-batches: {_SAME_ORDER}"),
    # Everything else defines what the run trains: task and data, optimizer, seed, model settings.
    ("*", REFUSE, "what the checkpoint was trained on or with (task, data, optimizer, seed or model)"),
)


def rule(key: str) -> tuple[str, str, str]:
    """The first rule whose pattern matches `key`."""
    return next(r for r in RULES if fnmatch.fnmatchcase(key, r[0]))


@dataclasses.dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    action: str
    why: str

    def __str__(self) -> str:
        return f"{self.key} {_show(self.old)} → {_show(self.new)}"


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


def as_plain(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as it is written to config.json, read back (tuples become lists, and so on)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changes(old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[Change]:
    """Every key whose value differs between two plain configs, classified. A key absent from `old`
    is no change when `new` holds today's default for it (`defaults`); with no `defaults` known (a
    library call), it is assumed to be, with a warning."""
    a, b = flatten(old), flatten(new)
    d = flatten(defaults) if defaults is not None else None
    out = []
    for key in sorted(a.keys() | b.keys()):
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va is _ABSENT and vb is not _ABSENT and key in PREDATES:
            va = PREDATES[key]
        if va is _ABSENT and vb is not _ABSENT:
            if d is None:
                out.append(Change(key, va, vb, WARN, _PREDATES))
                continue
            if key in d and d[key] == vb:
                continue  # that version ran with the behaviour today's default keeps
        if va != vb:
            _, action, why = rule(key)
            out.append(Change(key, va, vb, action, why))
    return out


class ConfigDriftError(errors.ConfigError):
    """A resume whose config changed in a way the checkpoint cannot follow."""


def check(
    config: ml_collections.ConfigDict, workdir: str, defaults: ml_collections.ConfigDict | None = None
) -> list[Change]:
    """Compares `config` with the config.json of each run in WORKDIR; returns the changes. `defaults`:
    the config file's values without overrides (`cli.config_defaults()`), for keys old runs lack.

    Raises `ConfigDriftError` (one line, every refused key as old → new) unless
    `config.allow_config_change`; logs the warnings and the override. Reads only: call it before
    WORKDIR is written.
    """
    override = bool(config.get("allow_config_change", False))
    new = as_plain(config)
    plain_defaults = as_plain(defaults) if defaults is not None else None
    found: dict[str, Change] = {}
    for saved in workdir_lib.saved_configs(workdir):
        try:
            old = workdir_lib.read_json(saved)  # None (with a warning) if a crash left it unparsable
        except OSError as e:
            if override:
                log.warning("allow_config_change=true: not comparing with the unreadable %s (%s)", saved, e)
                continue
            raise ConfigDriftError(
                f"cannot read {saved} to compare the config with ({e}); restore it, use a new WORKDIR, or "
                "pass --config.allow_config_change=true"
            ) from e
        if old is None:
            continue
        for change in changes(old, new, plain_defaults):
            found.setdefault(change.key, change)
    refused = [c for c in found.values() if c.action == REFUSE]
    if refused and not override:
        raise ConfigDriftError(
            f"WORKDIR {workdir} holds a run with a different config: {', '.join(map(str, refused))}. Rerun "
            f"with the settings in its {workdir_lib.CONFIG}, use a new WORKDIR, or pass "
            "--config.allow_config_change=true to resume anyway"
        )
    if refused:
        log.warning(
            "allow_config_change=true: resuming despite %s (%s)",
            ", ".join(map(str, refused)),
            ", ".join(sorted({c.why for c in refused})),
        )
    for c in found.values():
        if c.action == WARN:
            log.warning("resuming with %s: %s", c, c.why)
        elif c.action == ALLOW:
            log.info("resuming with %s", c)
    return list(found.values())
