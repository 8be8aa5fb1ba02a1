"""Defaults shared by every experiment config: mesh, logical axis rules, logging cadence."""

import dataclasses

import ml_collections

from albert_jax.config import AlbertConfig
from albert_jax.sharding import DEFAULT_RULES

# JAX's persistent compilation cache: "" = WORKDIR/compilation_cache, "none" = off. The environment's
# JAX_COMPILATION_CACHE_DIR, when set, wins.
COMPILATION_CACHE_DIR = ""


def model_config(preset: str | None = None, **overrides) -> ml_collections.ConfigDict:
    """Every AlbertConfig field, so any of them can be overridden from the command line."""
    cfg = AlbertConfig.from_preset(preset, **overrides) if preset else AlbertConfig(**overrides)
    fields = dataclasses.asdict(cfg)
    fields["classifier_dropout_prob"] = (
        fields["classifier_dropout_prob"] or 0.0
    )  # a ConfigDict field needs a type
    return ml_collections.ConfigDict(fields)


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """Mesh axis sizes; -1 takes the devices the other axes leave."""
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def logical_axis_rules() -> list:
    return [list(rule) for rule in DEFAULT_RULES]


# Fine-tuning hyperparameters from the ALBERT paper's Appendix A.4 (Table 14):
# task -> (lr, batch, encoder dropout, classifier dropout, steps, warmup, max seq).
FINETUNE_RECIPES = {
    "cola": (1e-5, 16, 0.0, 0.1, 5336, 320, 512),
    "stsb": (2e-5, 16, 0.0, 0.1, 3598, 214, 512),
    "sst2": (1e-5, 32, 0.0, 0.1, 20935, 1256, 512),
    "mnli": (3e-5, 128, 0.0, 0.1, 10000, 1000, 512),
    "qnli": (1e-5, 32, 0.0, 0.1, 33112, 1986, 512),
    "qqp": (5e-5, 128, 0.1, 0.1, 14000, 1000, 512),
    "rte": (3e-5, 32, 0.1, 0.1, 800, 200, 512),
    "mrpc": (2e-5, 32, 0.0, 0.1, 800, 200, 512),
    "wnli": (2e-5, 16, 0.1, 0.1, 2000, 250, 512),
    "squad1.1": (5e-5, 48, 0.0, 0.1, 3649, 365, 384),
    "squad2.0": (3e-5, 48, 0.0, 0.1, 8144, 814, 512),
    "race": (2e-5, 32, 0.1, 0.1, 12000, 1000, 512),  # v1 models; v2: lr 1e-5, dropout 0 (see race.py)
    # Not in the paper (it reports no NER): about 3 epochs of CoNLL-2003 at batch 32, 10% warmup.
    "ner": (3e-5, 32, 0.0, 0.1, 1300, 130, 128),
}
SIZES = ("base", "large", "xlarge", "xxlarge")


def parse_arg(arg: str, allowed: dict[str, tuple[str, ...] | None]) -> dict[str, str]:
    """`key=value,key=value` (big_vision style); `allowed` maps keys to their valid values (None: any)."""
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise ValueError(f"config argument {item!r} is not one of {', '.join(f'{k}=…' for k in allowed)}")
        if allowed[key] is not None and value not in allowed[key]:
            raise ValueError(f"unknown {key} {value!r}; choose one of {', '.join(allowed[key])}")
        out[key] = value
    return out


def finetune_config(recipe: str, task: str, size: str = "base") -> ml_collections.ConfigDict:
    """Keys every fine-tuning config shares; names match pretraining's where they mean the same.

    `size` (base|large|xlarge|xxlarge) only picks defaults; the model's shape comes from `init_from`.
    """
    lr, batch, dropout, cls_dropout, steps, warmup, max_seq = FINETUNE_RECIPES[recipe]
    c = ml_collections.ConfigDict()
    c.task = task
    c.size = size
    c.init_from = (
        ""  # HF directory (config.json + weights + spiece.model) or a WORKDIR; "none" = from scratch
    )
    c.data_dir = ""  # empty: datasets.load_dataset from the Hub
    c.seed = 0
    c.num_seeds = 1  # > 1: one run per seed in WORKDIR/seed_<k>, summary with mean ± std
    c.max_seq_length = max_seq
    c.length_buckets = ()  # padded lengths of batches; empty: 8, 16, …, 64, then 4 per doubling up to max (`--config.length_buckets="(64,128)"`)
    c.batch_size = batch
    c.eval_batch_size = 64
    c.grad_accum_steps = 1
    c.total_steps = steps
    c.warmup_steps = warmup
    c.optimizer = "adamw"  # ALBERT's AdamW (no bias correction); or "lamb"
    c.learning_rate = lr
    c.weight_decay = 0.01
    c.clip_norm = 1.0
    c.dropout = dropout  # encoder: hidden and attention dropout
    c.classifier_dropout = cls_dropout
    c.max_consecutive_nonfinite = 10

    c.log_every = 50
    c.eval_every = 500  # and at the end; the best evaluation's checkpoint is kept in WORKDIR/best
    c.checkpoint_every = 500
    c.checkpoint_every_minutes = 0.0  # also save every N minutes of wall time (0: off), agreed by all hosts
    c.keep_checkpoints = 2
    c.async_checkpointing = True  # write in the background; false: the step waits (no second state copy)
    c.progress_bar = True  # tqdm in a terminal; a plain line every log_every steps when stderr is a file
    c.allow_config_change = False  # resume even if model, data or optimizer settings changed (logged)
    c.compilation_cache_dir = COMPILATION_CACHE_DIR

    # Used only with init_from=none (the shape otherwise comes from the checkpoint), except the
    # JAX-side config.JAX_ONLY_FIELDS (dtype, remat_policy, attention_impl, …), which always apply.
    c.model = model_config(size)
    c.tokenizer = ""  # spiece.model, for init_from=none
    c.mesh = mesh_config()
    c.logical_axis_rules = logical_axis_rules()
    return c
