"""Every shell command in README.md runs as written, at a small size.

The commands come from the README's ```bash blocks, continuation lines joined, and run in README
order in one scratch directory that holds the repository's entry points, so a later command finds
what an earlier one wrote (`export runs/rte` after the RTE run). `python` is this interpreter, and
the README's `$VARS` name small fixtures. Each kind of command has a rule in `RULES` that appends the
overrides shrinking it to seconds (a tiny model, two steps), so a README command of a new kind fails
here until it gets one. Cluster launchers run their inner command on this machine: `srun` under
SLURM's environment for one task, so `--distributed` really goes through jax's cluster detection.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from typing import Callable

import pytest
from test_finetune import CLI_SMALL, FIXTURES, _squad_file, make_hf_dir
from test_pretrain import SMALL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
README = os.path.join(REPO, "README.md")


def readme_commands(text: str) -> list[str]:
    """The commands of every ```bash block: comments dropped, `\\` continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = readme_commands(open(README, encoding="utf-8").read())


def _config_args(settings: dict) -> str:
    return " ".join(f"--config.{k}={v}" for k, v in settings.items())


PRETRAIN_SMALL = _config_args(
    {
        **{k: v for k, v in SMALL.items() if k != "progress_bar"},
        "total_steps": 2,
        "warmup_steps": 1,
        "log_every": 1,
        "eval_every": 2,
        "eval_steps": 1,
        "checkpoint_every": 2,
        "data.cache_dir": "cache",
    }
)
FINETUNE_SMALL = _config_args(
    {
        **{k: v for k, v in CLI_SMALL.items() if k != "progress_bar"},
        "length_buckets": '"(64,)"',  # through the shell
        "total_steps": 2,
        "warmup_steps": 1,
        "eval_every": 2,
        "checkpoint_every": 2,
    }
)
SQUAD_SMALL = "--config.doc_stride=16 --config.max_query_length=16"
BENCH_SMALL = "--layers 2 --vocab-size 1000 --steps 1 --warmup 0"
SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_NODELIST": "localhost",
    "SLURM_NTASKS": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_STEP_NUM_NODES": "1",
}


def _make_pretrain(cmd: str) -> tuple[str, dict]:
    # The Makefile's own recipe, with a venv that is this interpreter (already installed).
    # make runs in the repository: every path it is given must be absolute.
    args = PRETRAIN_SMALL.replace("data.cache_dir=cache", "data.cache_dir=$PWD/cache")
    return f'{cmd} -C {shlex.quote(REPO)} VENV=$PWD/venv WORKDIR=$PWD/runs/tiny ARGS="{args}"', {}


def _inner(cmd: str) -> str:
    """The command a launcher runs on each host: gcloud's --command, srun's program."""
    if cmd.startswith("gcloud"):
        inner = re.search(r'--command="([^"]*)"', cmd).group(1)
        inner = re.sub(r"^cd \S+ && ", "", inner)
        return inner.replace(".venv/bin/python", "python")
    return cmd[cmd.index(" python ") + 1 :]


def _on_a_cluster(cmd: str) -> tuple[str, dict]:
    """A pod or SLURM launch, run as one task of a SLURM job on this machine (8 host devices)."""
    env = dict(SLURM_ENV, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    return f"{_inner(cmd)} {PRETRAIN_SMALL}", env


# (pattern, how to shrink it); the first match wins.
RULES: list[tuple[str, Callable[[str], tuple[str, dict]] | str | None]] = [
    (r"^make test$", None),  # this suite itself (.ci/run calls it)
    (r"^pip install ", "installs packages (make test installed them here)"),
    # The Hub is out of reach here: the command and its options must exist (`--help` parses them).
    (r"^hf download ", lambda c: (f"{c} --help", {})),
    (r"^make pretrain", _make_pretrain),
    (r"^python pretrain\.py ", lambda c: (f"{c} {PRETRAIN_SMALL}", {})),
    (r"^python -m albert_jax\.data\.prepare ", lambda c: (f"{c} {PRETRAIN_SMALL}", {})),
    (r"^python train\.py --config=configs/squad", lambda c: (f"{c} {FINETUNE_SMALL} {SQUAD_SMALL}", {})),
    (r"^python train\.py ", lambda c: (f"{c} {FINETUNE_SMALL}", {})),
    (
        r"^python -m albert_jax\.tokenizer train ",
        lambda c: (re.sub(r"--vocab-size \d+", "--vocab-size 1000", c), {}),
    ),
    (r"^python -m albert_jax\.(export|plot) ", lambda c: (c, {})),
    (
        r"^python benchmarks/train_step\.py .*--fit-memory",
        lambda c: (f"{c} {BENCH_SMALL} --fit-memory 0.05", {}),
    ),
    (r"^python benchmarks/train_step\.py ", lambda c: (f"{c} {BENCH_SMALL}", {})),
    (
        r"^python benchmarks/finetune_buckets\.py",
        lambda c: (f"{c} --max-seq-length 64 --batch-size 2 --steps 1", {}),
    ),
    (
        r"^python benchmarks/finetune_torch\.py",
        lambda c: (
            re.sub(r" --max-seq-length \d+", "", c)
            + " --max-seq-length 64 --batch-size 2 --steps 2 --train-rows 64 --dev-rows 64",
            {},
        ),
    ),
    (r"^python benchmarks/tokenizer_speed\.py", lambda c: (f"{c} --repeat 1 --copies 1", {})),
    (r"^python benchmarks/sentence_split\.py", lambda c: (f"{c} --repeat 1", {})),
    (r"^python benchmarks/input_pipeline\.py", lambda c: (f"{c} --examples 64 --seq-len 128", {})),
    (r"^python benchmarks/mlm_plateau\.py", lambda c: (f"{c} --steps 2 --eval-every 1 --vocab-size 900", {})),
    (r"^(gcloud compute tpus tpu-vm ssh|srun) ", _on_a_cluster),
]


# Benchmarks of real data: they need ../shared/data (CI has it, a fresh clone does not).
NEEDS_SHARED = r"^python benchmarks/(finetune_buckets|finetune_torch|sentence_split|tokenizer_speed)\.py"
# HF's Flax ALBERT runs under a side venv (transformers 4.x), which CI does not make.
NEEDS_HF_FLAX = r"^python benchmarks/train_step\.py .*--compare \S*hf-flax"


def rule_for(cmd: str):
    for pattern, shrink in RULES:
        if re.match(pattern, cmd):
            return pattern, shrink
    return None, None


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    """A scratch directory with the entry points, `python` on PATH, and the README's $VARS."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("pretrain.py", "train.py", "configs", "benchmarks"):
        os.symlink(os.path.join(REPO, name), root / name)
    bin_dir = root / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    # A wrapper, not a symlink: a symlinked venv interpreter outside its venv loses the venv.
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    (root / "venv" / ".installed").touch()  # the Makefile's install stamp: nothing to install
    squad = root / "squad"
    squad.mkdir()
    for split in ("train", "dev"):
        _squad_file(squad / f"{split}-v2.0.json", "2.0")
    corpus = os.path.join(SHARED, "corpus", "grimm_tales.txt")
    if not os.path.exists(corpus):  # a fresh clone: the embedded corpus, written out as text
        from albert_jax.data.text import CorpusSpec, iter_documents

        corpus = str(root / "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            for doc in iter_documents(CorpusSpec()):
                f.write("\n".join(doc) + "\n\n")
    env = dict(
        os.environ,
        # `python` is this interpreter; the rest of its environment's scripts follow.
        PATH=os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), os.environ["PATH"]]),
        PYTHONPATH=REPO,
        ALBERT_DIR=make_hf_dir(root / "albert-tiny"),
        GLUE_DIR=os.path.join(FIXTURES, "glue"),
        SQUAD_DIR=str(squad),
        RACE_DIR=os.path.join(FIXTURES, "race"),
        CONLL_DIR=os.path.join(FIXTURES, "conll"),
        CORPUS=corpus,
    )
    env.pop("XLA_FLAGS", None)
    return root, env


def test_readme_has_the_commands_users_need():
    for needle in ("make pretrain", "make test", "python pretrain.py", "python train.py", "srun ", "gcloud "):
        assert any(c.startswith(needle) for c in COMMANDS), needle
    with open(os.path.join(REPO, ".ci", "run")) as f:
        assert "make test" in f.read()  # the README's test command is what CI runs


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c[:70] for c in COMMANDS])
def test_readme_command_runs(cmd, playground):
    pattern, shrink = rule_for(cmd)
    assert pattern, f"README command without a small-size rule in tests/test_readme.py RULES: {cmd}"
    if shrink is None:
        pytest.skip(f"{cmd!r} is this test suite")
    if isinstance(shrink, str):
        pytest.skip(f"{cmd!r} {shrink}")
    if re.match(NEEDS_SHARED, cmd) and not os.path.isdir(SHARED):
        pytest.skip(f"{cmd!r} reads real data in {SHARED} (../shared is absent)")
    if re.match(NEEDS_HF_FLAX, cmd) and not os.environ.get("HF_FLAX_PYTHON"):
        pytest.skip(f"{cmd!r} needs the HF Flax side venv (set HF_FLAX_PYTHON)")
    root, env = playground
    shell_cmd, extra_env = shrink(cmd)
    with contextlib.ExitStack() as stack:
        bucket = re.search(r"gs://([\w.-]+)", shell_cmd)
        if bucket:  # a bucket of a local GCS emulator (tests/test_gcs.py), under the README's name
            pytest.importorskip("gcsfs", reason="gs:// needs the gcs extra")
            from test_gcs import emulator

            extra_env.update(stack.enter_context(emulator(bucket.group(1), str(root / "emulator.log"))))
        proc = subprocess.run(
            ["bash", "-c", shell_cmd],
            cwd=root,
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert proc.returncode == 0, (
        f"{shell_cmd}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    )
