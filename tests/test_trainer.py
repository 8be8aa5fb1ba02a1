"""The loop's console output: tqdm's bar in a terminal, one plain line per logged step in a log file."""

import io
import re

from test_finetune import FIXTURES, make_hf_dir, small

from albert_jax.training import finetune, trainer
from configs import glue as glue_configs


def test_format_progress():
    assert trainer.format_progress(120, 600, 5.4321, 12345.4, 200) == (
        "step 120/600 loss 5.432 tokens/s 12345 eta 3m20s"
    )
    assert trainer.format_progress(1, 2, 0.5, 10, 45.4).endswith("eta 45s")
    assert trainer.format_progress(1, 2, 0.5, 10, 3725).endswith("eta 1h02m")
    assert trainer.format_progress(1, 2, float("nan"), 10, float("inf")).endswith(
        "loss nan tokens/s 10 eta 0s"
    )


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_uses_the_bar_only_in_a_terminal():
    metrics = {"loss": 1.25, "tokens_per_sec": 800.0, "steps_per_sec": 2.0}
    log = io.StringIO()
    progress = trainer.Progress(10, 0, "train", enabled=True, stream=log)
    progress.update()
    progress.logged(4, metrics)
    progress.close()
    assert re.fullmatch(r"step 4/10 loss 1\.250 tokens/s 800 eta \d+s\n", log.getvalue())

    terminal = Terminal()
    progress = trainer.Progress(10, 0, "train", enabled=True, stream=terminal)
    progress.logged(4, metrics)
    progress.update()
    progress.close()
    assert "train" in terminal.getvalue() and "loss=1.250" in terminal.getvalue()

    off = io.StringIO()
    progress = trainer.Progress(10, 0, "train", enabled=False, stream=off)
    progress.logged(4, metrics)
    progress.close()
    assert off.getvalue() == ""


def test_a_run_logging_to_a_file_prints_lines_not_a_bar(tmp_path, capsys):
    config = small(
        glue_configs.get_config("task=rte"),
        init_from=make_hf_dir(tmp_path / "hf"),
        data_dir=f"{FIXTURES}/glue",
        total_steps=4,
        eval_every=0,
        progress_bar=True,
    )
    finetune.run(config, str(tmp_path / "run"))  # under capsys stderr is not a terminal
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"], err
    assert all(" loss " in line and " tokens/s " in line and " eta " in line for line in lines)
    assert "\r" not in err and "it/s" not in err  # no tqdm bar


def test_step_over_lengths_is_traced_once_and_equals_jit():
    """`jit_train_step` with sequence keys (`trainer.OverLengths`: one symbolic-length trace for every
    bucket) gives jit's losses, gradient norms and parameters over batches of three lengths, with
    dropout on, and traces the loss once."""
    import jax
    import numpy as np
    import optax

    from albert_jax import optim
    from albert_jax import sharding as sharding_lib
    from albert_jax.config import AlbertConfig
    from albert_jax.data.finetuning import sequence_keys
    from albert_jax.modeling import AlbertForSequenceClassification, init_params
    from albert_jax.training import run as run_lib

    cfg = AlbertConfig(
        vocab_size=97,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    model = AlbertForSequenceClassification(cfg)
    mesh = sharding_lib.make_mesh()
    traces = []

    def loss_fn(params, apply_fn, batch, rng, norm):
        traces.append(batch["input_ids"].shape)
        logits = apply_fn(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=False,
            rngs={"dropout": rng},
        ).logits
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).sum()
        return loss / norm, {"loss_sum": loss}

    def run(make_step):
        tx, schedule = optim.make_optimizer("adamw", 1e-3, total_steps=10, warmup_steps=1)
        state, state_sharding = run_lib.create_train_state(
            lambda r: init_params(model, r, 8),
            model.apply,
            optim.skip_nonfinite(tx),
            mesh,
            sharding_lib.DEFAULT_RULES,
            0,
        )
        data_sharding = sharding_lib.batch_sharding(mesh, sharding_lib.DEFAULT_RULES)
        step = trainer.make_train_step(
            loss_fn, lambda b: float(len(b["labels"])), lambda s: s, seed=0, schedule=schedule
        )
        step_fn = make_step(step, state_sharding, data_sharding)
        rng, out = np.random.default_rng(0), []
        traces.clear()
        for length in (8, 24, 16, 24):
            mask = (np.arange(length) < rng.integers(length // 2, length + 1, (4, 1))).astype(np.int32)
            batch = {
                "input_ids": rng.integers(5, 97, (4, length)).astype(np.int32) * mask,
                "attention_mask": mask,
                "token_type_ids": np.zeros((4, length), np.int32),
                "labels": rng.integers(0, 2, (4,)).astype(np.int32),
            }
            with jax.set_mesh(mesh):
                state, metrics = step_fn(state, jax.device_put(batch, data_sharding))
            out.append({k: float(metrics[k]) for k in ("loss_sum", "grad_norm")})
        return out, jax.device_get(state.params), list(traces)

    keys = sequence_keys()
    over, over_params, over_traces = run(lambda s, a, b: trainer.jit_train_step(s, a, b, keys, 32))
    plain, plain_params, plain_traces = run(trainer.jit_train_step)
    assert len(over_traces) == 1 and len(plain_traces) == 3, (over_traces, plain_traces)
    for got, want in zip(over, plain):
        for key in want:
            assert np.isclose(got[key], want[key], rtol=1e-5), (key, got, want)
    for got, want in zip(jax.tree.leaves(over_params), jax.tree.leaves(plain_params)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
