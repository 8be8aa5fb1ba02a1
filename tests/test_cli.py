"""The one error path of every entry point (`cli`): the project's user errors print one line, anything
else keeps its traceback; config typos name the dotted key and the suggestion."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from test_pretrain import REPO

from albert_jax import cli, errors, export, plot, tokenizer


@pytest.mark.parametrize(
    "error",
    [
        errors.ConfigError("mesh.data=3 needs 3 devices"),
        errors.InputError("corpus.txt is not UTF-8 text"),
        errors.MissingError("no such directory: /nope"),
        errors.StorageError("storage error writing gs://b/x"),
        errors.TrainingError("3 consecutive steps had non-finite gradients"),
        PermissionError(13, "Permission denied", "/runs/x/config.json"),  # the machine's, not a bug
        OSError(28, "No space left on device"),
    ],
)
def test_a_user_error_is_one_line(capsys, error):
    def fail():
        raise error

    assert cli.run_guarded(fail, traceback=False, distributed=False) == 1
    assert capsys.readouterr().err == f"error: {error}\n"


@pytest.mark.parametrize(
    "error", [ValueError("a bug"), TypeError("a bug"), KeyError("a bug"), OSError("a bug")]
)
def test_anything_else_keeps_its_traceback(error):
    def fail():
        raise error

    with pytest.raises(type(error)):
        cli.run_guarded(fail, traceback=False, distributed=False)


def test_traceback_flag_shows_user_errors_whole():
    with pytest.raises(errors.ConfigError):
        cli.run_guarded(
            lambda: (_ for _ in ()).throw(errors.ConfigError("x")), traceback=True, distributed=False
        )


@pytest.mark.parametrize(
    "main,args,needle",
    [
        (export.main, ["/nope/run", "/tmp/out"], "is not a run's WORKDIR"),
        (plot.main, ["/nope/run"], "no such run directory: /nope/run"),
        (tokenizer.main, ["encode", "--model", "/nope/spiece.model", "hello"], "/nope/spiece.model"),
    ],
)
def test_argparse_entry_points_share_the_error_path(capsys, main, args, needle):
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err


def test_argparse_main_adds_traceback():
    parser = argparse.ArgumentParser()
    with pytest.raises(errors.MissingError):
        cli.argparse_main(
            parser, lambda args: (_ for _ in ()).throw(errors.MissingError("gone")), ["--traceback"]
        )


@pytest.mark.parametrize(
    "override,expected",
    [
        ("--config.modle=1", "error: unknown config key 'modle' (did you mean 'model'?)"),
        (
            "--config.model.hiden_size=64",
            "error: unknown config key 'model.hiden_size' (did you mean 'model.hidden_size'?)",
        ),
    ],
)
def test_unknown_config_key_is_one_line_with_the_suggestion(tmp_path, override, expected):
    proc = subprocess.run(
        [sys.executable, "pretrain.py", f"--workdir={tmp_path / 'run'}", override],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [expected], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()
