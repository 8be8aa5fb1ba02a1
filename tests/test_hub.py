"""albert_jax.hub: local directories pass through, Hub ids download (faked here) or fail in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import jax
import pytest
from huggingface_hub.utils import LocalEntryNotFoundError

from albert_jax import from_pretrained, hub, modeling, save_pretrained
from albert_jax.config import AlbertConfig
from albert_jax.tokenizer import AlbertTokenizer

SPIECE = Path(__file__).parent / "fixtures" / "tokenizer" / "spiece.model"
HUB_ID = "albert/albert-base-v2"
TINY = {
    "vocab_size": 30,
    "embedding_size": 8,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 16,
}


@pytest.fixture
def online(monkeypatch):
    """Neither HF_HUB_OFFLINE nor TRANSFORMERS_OFFLINE set, whatever the environment running the tests says."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty Hub cache: nothing is downloaded and nothing is found."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def test_local_directory_passes_through(tmp_path):
    assert hub.local_dir(tmp_path) == tmp_path
    assert hub.local_dir(str(tmp_path)) == tmp_path


def test_not_a_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="config.json is a file"):
        hub.local_dir(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        hub.local_dir(tmp_path / "missing")  # an absolute path is never a Hub id


def _assert_offline_error(excinfo: pytest.ExceptionInfo) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{HUB_ID} is not a local directory and could not be fetched")
    assert "HF_HUB_OFFLINE=1" in message and f"hf download {HUB_ID} --local-dir DIR" in message


@pytest.mark.usefixtures("offline")
def test_hub_id_offline_is_one_line():
    with pytest.raises(FileNotFoundError) as excinfo:
        hub.local_dir(HUB_ID)
    _assert_offline_error(excinfo)
    with pytest.raises(FileNotFoundError) as excinfo:
        AlbertTokenizer.from_pretrained(HUB_ID)
    _assert_offline_error(excinfo)
    with pytest.raises(FileNotFoundError) as excinfo:
        from_pretrained(HUB_ID)
    _assert_offline_error(excinfo)


@pytest.mark.usefixtures("online")
def test_hub_id_without_network(monkeypatch):
    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -3] Temporary failure\nPlease check ...")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(FileNotFoundError) as excinfo:
        hub.local_dir(HUB_ID)
    message = str(excinfo.value)
    assert "\n" not in message and HUB_ID in message and "HF_HUB_OFFLINE" in message
    assert "no network" in message and "ConnectError" in message


@pytest.mark.usefixtures("online")
def test_hub_id_other_failure(monkeypatch):
    def unknown(*args, **kwargs):
        raise ValueError("Repository Not Found for url: https://huggingface.co/api/models/nobody/nothing")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unknown)
    with pytest.raises(
        FileNotFoundError, match=r"^nobody/nothing is not a local .*\(ValueError: Repository Not"
    ):
        from_pretrained("nobody/nothing")


@pytest.mark.usefixtures("online")
def test_tokenizer_and_model_accept_a_hub_id(monkeypatch, tmp_path):
    snapshot = tmp_path / "snapshot"
    module = modeling.AlbertModel(AlbertConfig(**TINY))
    params = modeling.init_params(module, jax.random.key(0), seq_len=4)
    save_pretrained(snapshot, module, params)
    shutil.copy(SPIECE, snapshot / "spiece.model")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    tok = AlbertTokenizer.from_pretrained(HUB_ID)
    assert tok.encode("hello world") == AlbertTokenizer(SPIECE).encode("hello world")
    loaded, _ = from_pretrained(HUB_ID)
    assert loaded.config == module.config
    assert [repo for repo, _ in calls] == [HUB_ID, HUB_ID]
    for _, kwargs in calls:
        assert set(kwargs["allow_patterns"]) == set(hub.HUB_PATTERNS)
        assert {"config.json", "spiece.model", "*.safetensors"} <= set(kwargs["allow_patterns"])
        assert kwargs["local_files_only"] is False
