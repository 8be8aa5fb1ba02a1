"""Fine-tune ALBERT. Thin entry point: flags -> albert_jax.training.finetune.run.

  python train.py --config=configs/glue.py:task=rte --workdir=runs/rte \
      --config.init_from=/ckpt/albert-base-v2 --config.data_dir=/data/glue_data [--config.key=value ...]

Configs: configs/glue.py:task=TASK, configs/squad.py:version=1.1|2.0, configs/race.py, configs/ner.py.
Re-running the same command resumes from the latest checkpoint in WORKDIR.
"""

from absl import app, flags

# Restarted once at `import albert_jax` with glibc's huge pages for the CPU step's buffers (host_memory).
ALBERT_JAX_HUGE_PAGES = True

from albert_jax import cli

_CONFIG = cli.define_config_flag("configs/glue.py:task=rte")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and predictions.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from albert_jax.training import finetune

    return cli.run_guarded(
        lambda: finetune.run(_CONFIG.value, _WORKDIR.value, defaults=cli.config_defaults())
    )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
