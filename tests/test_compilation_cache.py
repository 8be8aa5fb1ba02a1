"""JAX's persistent compilation cache in WORKDIR: a restarted run compiles nothing new."""

import itertools
import os
import shutil
import subprocess

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache
from test_pretrain import REPO, cli_args, read_metrics

from albert_jax import workdir as workdir_lib
from albert_jax.training import run as run_lib

VOCAB = os.path.join(REPO, "tests", "fixtures", "tokenizer", "spiece.model")  # 2000 pieces

_CACHE_ENV = (
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
)


def _write_corpus(path):
    """A few hundred small documents in the lines layout: tokenized in a blink, no vocabulary to train."""
    words = itertools.cycle(
        itertools.product(["red", "old", "small", "quiet"], ["fox", "king", "river", "tree"])
    )
    docs = []
    for d in range(300):
        docs.append(
            "\n".join(f"The {a} {b} saw document {d} on day {i}." for i, (a, b) in zip(range(4), words))
        )
    path.write_text("\n\n".join(docs) + "\n")
    return str(path)


# Runs pretrain.py and, at exit, prints how many programs XLA compiled and how many of those came
# from the persistent cache, counted by JAX's own monitoring events.
_COUNTING = """
import atexit, collections, runpy, sys
import jax.monitoring
from jax._src import dispatch
seen = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **_: seen.update([event]))
jax.monitoring.register_event_duration_secs_listener(lambda event, _secs, **__: seen.update([event]))
atexit.register(lambda: print("programs", seen[dispatch.BACKEND_COMPILE_EVENT],
                              "cache_hits", seen["/jax/compilation_cache/cache_hits"], file=sys.stderr))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _start(args, env):
    """(programs compiled or loaded, of which loaded from the persistent cache) of one start."""
    proc = subprocess.run(
        [args[0], "-c", _COUNTING, *args[1:]],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = proc.stderr.strip().splitlines()[-1].split()
    assert counts[0] == "programs", proc.stderr[-3000:]
    return int(counts[1]), int(counts[3])


@pytest.mark.slow
def test_restart_compiles_nothing_new(tmp_path):
    """A run preempted after its step-2 checkpoint restarts with the same command: it restores, trains
    steps 3-4 and evaluates, and every program it needs comes from WORKDIR's cache (none compiled)."""
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_ENV}  # the run's own defaults
    workdir = tmp_path / "run"
    args = cli_args(
        workdir,
        total_steps=4,
        warmup_steps=1,
        log_every=1,
        eval_every=0,
        checkpoint_every=2,
        keep_checkpoints=3,
        **{
            "data.files": _write_corpus(tmp_path / "corpus.txt"),
            "data.tokenizer": VOCAB,
            "model.vocab_size": 2000,
        },
    )
    programs, hits = _start(args, env)
    assert programs - hits >= 3, (programs, hits)  # compiled: state init, train step, eval step at least
    assert (workdir / workdir_lib.COMPILATION_CACHE).is_dir()

    shutil.rmtree(workdir / workdir_lib.CHECKPOINTS / "4")  # killed between the step-2 and step-4 saves
    programs, hits = _start(args, env)
    assert [m["step"] for m in read_metrics(workdir) if "train/loss" in m] == [1, 2, 3, 4]  # it trained again
    assert programs >= 3 and hits == programs, (programs, hits)


@pytest.fixture
def cache_config(monkeypatch):
    """Lets `use_compilation_cache` change JAX's cache settings, and puts the session's back after."""
    saved = {
        name: getattr(jax.config, name) for name in ("jax_compilation_cache_dir", *run_lib._CACHE_THRESHOLDS)
    }
    for name in _CACHE_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.mark.parametrize(
    "setting, expected",
    [("", "{workdir}/compilation_cache"), ("none", None), ("{tmp}/xla", "{tmp}/xla")],
)
def test_cache_dir_setting(cache_config, tmp_path, setting, expected):
    workdir = str(tmp_path / "run")
    fill = lambda s: s.format(workdir=workdir, tmp=tmp_path)
    expected = expected and fill(expected)
    assert run_lib.use_compilation_cache(fill(setting), workdir) == expected
    assert jax.config.jax_compilation_cache_dir == expected
    if expected:
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0


def test_environment_wins(cache_config, monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))  # what JAX read from it
    assert run_lib.use_compilation_cache("", str(tmp_path / "run")) == str(tmp_path / "mine")
    assert run_lib.use_compilation_cache("none", str(tmp_path / "run")) == str(tmp_path / "mine")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
