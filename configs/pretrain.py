"""ALBERT pretraining (MLM + sentence-order prediction) with LAMB.

  python pretrain.py --config=configs/pretrain.py:tiny --workdir=runs/tiny
  python pretrain.py --config=configs/pretrain.py:base --workdir=/mnt/ckpt/albert-base \
      --config.data.dataset=wikipedia --config.data.dataset_config=20231101.en \
      --config.data.tokenizer=/path/to/spiece.model --config.mesh.fsdp=8

`tiny` runs in minutes on 2 CPU cores on the embedded corpus. The others use the paper's recipe
(Lan et al., 2019, §4.1): seq 512, batch 4096, 125k steps, LAMB lr 0.00176, warmup 3125, with
  `base` … `xxlarge`: the v2 model configs (no dropout). This mixes the two releases: v2 was
    trained for 3M steps (10M for base) on more data; 125k steps is the v1 paper's recipe.
  `base-v1` … `xxlarge-v1`: the v1 recipe, the paper's: v1 model configs (dropout 0.1, none for
    xxlarge) with the original's tanh GELU (see AlbertConfig.from_preset's for_pretraining).
"""

import ml_collections

from configs import common

# size -> (model preset or overrides, training overrides)
SIZES = {
    # A demo that visibly learns in ~5 minutes on 2 CPU cores: a small vocabulary (an easier, cheaper
    # softmax) and seq 64 (a docstring's two or three sentences make one example, and steps are cheap).
    # Dropout is already off (the v2 recipe).
    "tiny": dict(
        model=dict(
            vocab_size=3000,
            embedding_size=64,
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            max_position_embeddings=64,
        ),
        seq_len=64,
        batch_size=64,
        total_steps=1300,
        learning_rate=1e-2,  # LAMB steps are relative to each layer's norm; a short run wants a large rate
        warmup_steps=100,
        max_predictions_per_seq=10,  # 15% of 64
        log_every=100,
        eval_every=325,
        checkpoint_every=650,
        eval_steps=10,
        eval_batch_size=32,
        eval_fraction=0.05,  # ~160 held-out docstrings, ~230 examples: SOP accuracy to about ±0.03
    ),
    **{
        name: dict(
            model=dict(preset=name, for_pretraining=True),
            seq_len=512,
            batch_size=4096,
            total_steps=125_000,
            learning_rate=0.00176,
            warmup_steps=3125,
            max_predictions_per_seq=20,
            log_every=100,
            eval_every=5000,
            checkpoint_every=5000,
            eval_steps=50,
            eval_batch_size=512,
            eval_fraction=0.02,
        )
        for size in ("base", "large", "xlarge", "xxlarge")
        for name in (size, f"{size}-v1")
    },
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    size = arg.split("=", 1)[-1]  # accepts `tiny` and `size=tiny`
    if size not in SIZES:
        raise ValueError(f"unknown pretraining preset {size!r}; choose one of {', '.join(SIZES)}")
    s = dict(SIZES[size])
    model = dict(s.pop("model"))
    preset = model.pop("preset", None)

    c = ml_collections.ConfigDict()
    c.preset = size
    c.model = common.model_config(preset, **model)
    c.seed = 0
    # Continued pretraining: an HF directory or a run's WORKDIR. Its shape and vocabulary replace
    # `model` (except config.JAX_ONLY_FIELDS: dtype, remat_policy, …) and `data.tokenizer`.
    c.init_from = ""
    c.seq_len = s["seq_len"]
    c.batch_size = s["batch_size"]  # global, over all processes
    c.grad_accum_steps = 1  # split each batch into this many micro-batches (same result, less memory)
    c.total_steps = s["total_steps"]
    c.optimizer = "lamb"  # or "adamw"
    c.learning_rate = s["learning_rate"]
    c.warmup_steps = s["warmup_steps"]
    c.weight_decay = 0.01
    c.clip_norm = 1.0
    c.max_consecutive_nonfinite = 10  # skipped non-finite steps in a row before the run stops

    c.log_every = s["log_every"]
    c.eval_every = s["eval_every"]
    c.eval_steps = s["eval_steps"]
    c.eval_batch_size = s["eval_batch_size"]
    c.checkpoint_every = s["checkpoint_every"]
    c.checkpoint_every_minutes = 0.0  # also save every N minutes of wall time (0: off), agreed by all hosts
    c.keep_checkpoints = 3
    # Saves write in the background while training goes on; that holds a second copy of the state
    # (host memory on CPU) during the write. false: each save finishes before the next step.
    c.async_checkpointing = True
    c.progress_bar = True  # tqdm in a terminal; a plain line every log_every steps when stderr is a file
    c.allow_config_change = False  # resume even if model, data or optimizer settings changed (logged)
    c.compilation_cache_dir = common.COMPILATION_CACHE_DIR

    c.data = ml_collections.ConfigDict()
    c.data.files = ""  # glob(s), comma-separated; all sources empty = the embedded corpus
    c.data.format = "auto"  # lines (one sentence per line, blank line between documents) | paragraphs
    c.data.dataset = ""  # HF datasets name, e.g. wikipedia
    c.data.dataset_config = ""
    c.data.split = "train"
    c.data.text_column = "text"
    c.data.tfds = ""  # TFDS name, read with tfds.data_source
    c.data.tokenizer = ""  # spiece.model (or an HF dir); empty = train one on the corpus into WORKDIR
    c.data.cache_dir = ""  # token caches and trained vocabularies; empty = ~/.cache/albert_jax
    c.data.prepared = ""  # a DIR from `python -m albert_jax.data.prepare`: its vocabulary and token cache
    c.data.short_seq_prob = 0.1
    c.data.masked_lm_prob = 0.15
    c.data.max_predictions_per_seq = s["max_predictions_per_seq"]
    c.data.max_ngram = 3
    c.data.favor_shorter_ngram = True  # P(n) ~ 1/n; false favours long n-grams (the original's flag)
    c.data.whole_word_masking = True  # false: single pieces (the original's do_whole_word_mask)
    # sop (ALBERT) | nsp (BERT's next-sentence prediction) | none (MLM only): the paper's Table 5.
    c.data.sentence_objective = "sop"
    # random_next (the original: B from a random other document, label 1) | merge (chunks of 2+ sentences)
    c.data.single_sentence_chunks = "random_next"
    c.data.dynamic_masking = True  # new chunks and masks every epoch
    c.data.eval_fraction = s["eval_fraction"]
    c.data.worker_count = 0  # grain worker processes

    c.mesh = common.mesh_config()
    c.logical_axis_rules = common.logical_axis_rules()
    return c
