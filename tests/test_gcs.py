"""gs:// WORKDIRs and inputs, against a local GCS emulator (gcp-storage-emulator) on 127.0.0.1.

Everything goes to the emulator, arrays included (the emulator gets one header added, see _EMULATOR):
gcsfs (behind etils.epath) and google-cloud-storage (behind tensorboardX) read STORAGE_EMULATOR_HOST,
and tensorstore (behind orbax) reads TENSORSTORE_GCS_HTTP_URL. The emulator ignores GCS's generation
preconditions, so the run-lock test covers the existence-checked path of the gs:// lock, not the
precondition itself.
"""

import contextlib
import importlib.util
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from etils import epath
from test_pretrain import REPO, cli_args

from albert_jax import run_lock
from albert_jax.data.text import CorpusSpec, iter_documents
from albert_jax.tokenizer import train_tokenizer

# Looked up, not imported: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT (set by the fixture) on import.
for _module in ("gcsfs", "gcp_storage_emulator"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not installed (pip install -e .[test])", allow_module_level=True)

BUCKET = "albert"


# The emulator leaves out the x-goog-generation header on downloads, which real GCS always sends and
# tensorstore needs for OCDBT's conditional manifest writes ("Malformed StorageGeneration" without it).
_EMULATOR = """
import sys
from gcp_storage_emulator.handlers import objects

plain_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", 1))
    except Exception:
        pass  # not found: plain_download answers 404
    return plain_download(request, response, storage, *args, **kwargs)


objects.download = download  # before the server module builds its handler table
from gcp_storage_emulator.__main__ import main

sys.exit(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def emulator(bucket: str, log: str):
    """An in-memory emulator with `bucket`, on a free port; yields the environment that points every
    client at it (also set in os.environ while it runs)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    err = open(log, "w")  # a file: a full pipe would block the server
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _EMULATOR,
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--default-bucket={bucket}",
            "--in-memory",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                with open(log) as f:
                    raise RuntimeError(f"the GCS emulator did not start: {f.read()[-2000:]}") from None
            time.sleep(0.1)
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (orbax's arrays)
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no storage-control API in the emulator
        "GOOGLE_CLOUD_PROJECT": "test",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.kill()
        server.wait()
        err.close()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator with bucket `albert`, for this module's tests."""
    with emulator(BUCKET, str(tmp_path_factory.mktemp("gcs") / "emulator.log")):
        yield f"gs://{BUCKET}"


def _losses(metrics_text: str) -> dict[int, dict]:
    return {m["step"]: m for m in map(json.loads, metrics_text.splitlines()) if "loss" in m}


def _wait_for_checkpoint(workdir: epath.Path, proc: subprocess.Popen, log, timeout: float = 240) -> None:
    """Until a checkpoint of the run is committed (orbax's commit_success.txt is in the bucket)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {log.read_text()[-3000:]}")
        if list(workdir.glob("checkpoints/*/commit_success.txt")):
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for a checkpoint in the bucket")


@pytest.mark.slow
def test_gs_workdir_killed_run_resumes_exactly(gcs, tmp_path):
    """A tiny pretraining run into gs://, corpus and vocabulary read from gs://, SIGKILLed after a
    checkpoint and rerun, logs the same losses, bit for bit, as an uninterrupted local run."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = list(itertools.islice(iter_documents(CorpusSpec()), 150))
    for k, part in enumerate((docs[::2], docs[1::2])):  # two files: data.files is a glob
        (corpus / f"part{k}.txt").write_text("\n\n".join("\n".join(d) for d in part) + "\n")
    vocab = train_tokenizer(sorted(map(str, corpus.glob("*.txt"))), str(tmp_path / "spiece"), vocab_size=1000)
    bucket = epath.Path(gcs)
    for f in corpus.glob("*.txt"):
        (bucket / "corpus" / f.name).write_bytes(f.read_bytes())
    (bucket / "spiece.model").write_bytes(open(vocab, "rb").read())

    overrides = dict(
        total_steps=12, warmup_steps=2, log_every=1, eval_every=0, checkpoint_every=3, keep_checkpoints=2
    )
    local = {"data.files": f"{corpus}/*.txt", "data.tokenizer": vocab, "data.format": "lines"}
    remote = {
        "data.files": f"{gcs}/corpus/*.txt",
        "data.tokenizer": f"{gcs}/spiece.model",
        "data.format": "lines",
    }
    reference = tmp_path / "reference"
    args = cli_args(str(reference), tmp_path, **overrides, **local)
    subprocess.run(args, check=True, cwd=REPO, capture_output=True, timeout=300)

    workdir = bucket / "run"
    args = cli_args(str(workdir), tmp_path, **overrides, **remote)
    log = tmp_path / "killed.log"  # a file, not a pipe nobody reads while it runs
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for_checkpoint(workdir, proc, log)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    assert (workdir / "run.lock").exists()  # left behind by the killed run
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "took over the stale lock" in done.stderr and "resumed from step" in done.stderr, done.stderr[
        -3000:
    ]

    ref = _losses((reference / "metrics.jsonl").read_text())
    got = _losses((workdir / "metrics.jsonl").read_text())
    assert sorted(got) == sorted(ref) == list(range(1, 13))
    for step in ref:
        for key in ("loss", "mlm_loss", "sop_loss", "grad_norm"):
            assert got[step][key] == ref[step][key], (step, key, got[step][key], ref[step][key])
    # Every run file is in the bucket, and nothing was written to a local "gs:" directory.
    names = {p.name for p in workdir.iterdir()}
    assert {"config.json", "model_config.json", "spiece.model", "tokenizer_config.json", "data.json"} <= names
    assert "run.lock" not in names
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints" / "12" / "commit_success.txt").exists()
    assert not os.path.exists(os.path.join(REPO, "gs:"))


def test_gs_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(gcs):
    workdir = epath.Path(gcs) / "locked"
    lock = workdir / "run.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = {"host": socket.gethostname(), "pid": sleeper.pid, "start": run_lock._proc_start(sleeper.pid)}
        lock.write_text(json.dumps({**here, "time": time.time()}))
        with pytest.raises(run_lock.WorkdirInUse, match=f"pid {sleeper.pid} on "):
            run_lock.RunLock(str(workdir)).acquire()
        assert json.loads(lock.read_text())["pid"] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
    with run_lock.held(str(workdir)):  # its process is gone now
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_fine_tuning_result_files_go_to_the_bucket(gcs):
    """Prediction files (written by the tasks) and the run's JSON files land in gs://, not in a local
    "gs:" folder."""
    from albert_jax.tasks import glue
    from albert_jax.training import finetune

    workdir = epath.Path(gcs) / "finetuned"
    examples = [
        glue.GlueExample(0, "A man sleeps.", "Nobody sleeps.", None),
        glue.GlueExample(1, "x", "y", None),
    ]
    path = glue.write_submission(
        "rte", "test", examples, ["not_entailment", "entailment"], workdir / "predictions"
    )
    assert path == f"{gcs}/finetuned/predictions/RTE.tsv"
    assert epath.Path(path).read_text() == "index\tprediction\n0\tnot_entailment\n1\tentailment\n"
    finetune._write_json(str(workdir), "summary.json", {"best": {"step": 3}})
    assert json.loads((workdir / "summary.json").read_text()) == {"best": {"step": 3}}
    assert not os.path.exists(os.path.join(os.getcwd(), "gs:"))
