"""Pretrain ALBERT. Thin entry point: flags -> albert_jax.training.pretrain.run.

  python pretrain.py --config=configs/pretrain.py:tiny --workdir=runs/tiny [--config.key=value ...]

Re-running the same command resumes from the latest checkpoint in WORKDIR.
"""

from absl import app, flags

# Restarted once at `import albert_jax` with glibc's huge pages for the CPU step's buffers (host_memory).
ALBERT_JAX_HUGE_PAGES = True

from albert_jax import cli

_CONFIG = cli.define_config_flag("configs/pretrain.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the vocabulary.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from albert_jax.training import pretrain

    return cli.run_guarded(
        lambda: pretrain.run(_CONFIG.value, _WORKDIR.value, defaults=cli.config_defaults())
    )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
