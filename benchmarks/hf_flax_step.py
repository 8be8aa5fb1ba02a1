"""transformers' Flax `FlaxAlbertForPreTraining` in our step: the child of `--compare hf-flax`.

Runs under a side python (transformers 4.x, the last with Flax; the same jax, jaxlib, flax and optax as
ours) and takes `train_step.py`'s flags. It builds HF's model from the same config (dropout 0), puts it
in the same step (`trainer.make_train_step` with `pretrain.pretraining_loss`: MLM at the same masked
positions + SOP) with the same optimizer (`run.make_tx`: clipping, AdamW or LAMB, the non-finite
guard), jits it with donation but no mesh (HF Flax has no partitioning rules), and prints one JSON line:
lower and compile time, then step time. Each further `compile` line on stdin compiles the step afresh
and prints another JSON line, so the parent can alternate compiles with its own.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # albert_jax from this checkout; train_step.py sits next to this file

try:
    import jax
    import jax.numpy as jnp
    import train_step

    from albert_jax.training import pretrain, trainer
    from albert_jax.training import run as run_lib
except ImportError as e:
    sys.exit(f"error: {sys.executable} cannot run the HF Flax step ({e}); see README.md, Benchmarks")


def hf_pretraining_model(cfg, dtype: str):
    """HF's Flax ALBERT with pretraining heads from our config, its parameters initialised by HF."""
    try:
        import transformers
        from transformers import FlaxAlbertForPreTraining
    except ImportError as e:
        sys.exit(
            f"error: this python ({sys.executable}) has no transformers with Flax ALBERT ({e}); "
            "it needs transformers<5 (Flax was dropped in 5.0)"
        )
    hf_cfg = transformers.AlbertConfig(**{k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"})
    return FlaxAlbertForPreTraining(hf_cfg, seed=0, dtype=jnp.dtype(dtype)), transformers.__version__


def main() -> None:
    args = train_step.build_parser().parse_args()
    cfg = train_step.model_config(args)
    model, hf_version = hf_pretraining_model(cfg, args.dtype)
    module = model.module

    def apply_fn(
        variables, input_ids, attention_mask, token_type_ids, *, deterministic, masked_lm_positions, rngs
    ):
        position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)  # HF's default
        out = module.apply(
            variables, input_ids, attention_mask, token_type_ids, position_ids, deterministic, rngs=rngs
        )
        # HF computes the MLM logits at every position (its design, kept); the loss reads the masked ones.
        logits = jnp.take_along_axis(out.prediction_logits, masked_lm_positions[..., None], axis=1)
        return types.SimpleNamespace(prediction_logits=logits, sop_logits=out.sop_logits)

    tx, schedule = run_lib.make_tx(train_step.optimizer_config(args))
    state = trainer.TrainState.create(apply_fn=apply_fn, params=model.params, tx=tx)
    predictions = train_step.predictions_per_sequence(args.seq_len)
    batch = jax.device_put(train_step.synthetic_batch(cfg, args.batch_size, args.seq_len, predictions))

    def compile_step():
        step = jax.jit(
            trainer.make_train_step(
                pretrain.pretraining_loss, pretrain.loss_norm, pretrain.summarise, seed=0, schedule=schedule
            ),
            donate_argnums=0,
        )
        return train_step.lower_and_compile(step, state, batch)

    compiled, result = compile_step()
    steps = 0 if args.compile_only else args.warmup + args.steps
    state, times = train_step.time_steps(compiled, state, batch, steps)
    result.update(
        params=run_lib.count_params(state.params),
        step_time_s=statistics.median(times[args.warmup :]) if times else None,
        transformers=hf_version,
        versions=train_step.library_versions(),  # the parent refuses a side python whose versions differ
    )
    print(json.dumps(result), flush=True)
    for line in sys.stdin:  # one fresh compile per `compile` line, until the parent closes stdin
        if line.strip() == "compile":
            print(json.dumps(compile_step()[1]), flush=True)


if __name__ == "__main__":
    main()
