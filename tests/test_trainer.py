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
