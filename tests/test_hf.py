"""HF interop: round trips through transformers, partial checkpoints, .bin without torch, errors."""

from __future__ import annotations

import json
import logging
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import traverse_util
from test_modeling import init as random_params  # random values on init's shapes, no compile

from albert_jax import from_pretrained, modeling, save_pretrained
from albert_jax.config import AlbertConfig
from albert_jax.hf import params_from_hf, params_to_hf
from albert_jax.hf_files import load_torch_bin

ATOL = 1e-4
# Two groups of two layers and E≠H, so every index in the key table is exercised.
CONFIG = {
    "vocab_size": 67,
    "embedding_size": 16,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_hidden_groups": 2,
    "inner_group_num": 2,
    "num_attention_heads": 4,
    "intermediate_size": 40,
    "max_position_embeddings": 24,
    "hidden_act": "gelu_new",
}
HEADS = [
    ("AlbertModel", 2),
    ("AlbertForPreTraining", 2),
    ("AlbertForMaskedLM", 2),
    ("AlbertForSequenceClassification", 3),
    ("AlbertForMultipleChoice", 2),
    ("AlbertForTokenClassification", 4),
    ("AlbertForQuestionAnswering", 2),
]
OUTPUT_FIELDS = (
    "last_hidden_state",
    "pooler_output",
    "prediction_logits",
    "sop_logits",
    "logits",
    "start_logits",
    "end_logits",
)


def hf_random(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = getattr(transformers, name)(transformers.AlbertConfig(**{**CONFIG, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def inputs_for(head: str) -> dict[str, np.ndarray]:
    shape = (2, 3, 9) if head == "AlbertForMultipleChoice" else (3, 10)
    rng = np.random.default_rng(0)
    mask = np.ones(shape, np.int64)
    mask.reshape(-1, shape[-1])[1, 6:] = 0
    token_types = np.zeros(shape, np.int64)
    token_types[..., 4:] = 1
    ids = rng.integers(0, CONFIG["vocab_size"], shape)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": token_types}


def flat(params) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def assert_params_equal(a, b) -> None:
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        assert fa[key].dtype == fb[key].dtype, key
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("head,num_labels", HEADS)
def test_round_trip_through_transformers(tmp_path, head, num_labels):
    config = AlbertConfig(**CONFIG, num_labels=num_labels)
    module = modeling.HEADS[head](config)
    params = random_params(module)
    save_pretrained(tmp_path / "ours", module, params)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == [head]

    model, info = getattr(transformers, head).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.config.num_labels == num_labels
    model.eval()

    inputs = inputs_for(head)
    ours = jax.jit(lambda p, i: module.apply({"params": p}, **i))(
        params, {k: jnp.asarray(v) for k, v in inputs.items()}
    )
    with torch.no_grad():
        theirs = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    for field in OUTPUT_FIELDS:
        if hasattr(ours, field):
            np.testing.assert_allclose(
                np.asarray(getattr(ours, field)),
                getattr(theirs, field).numpy(),
                atol=ATOL,
                rtol=0,
                err_msg=field,
            )

    model.save_pretrained(tmp_path / "hf")
    module2, params2 = from_pretrained(tmp_path / "hf", head)
    assert module2.config == config
    assert_params_equal(params, params2)


@pytest.mark.parametrize("head", ["AlbertModel", "AlbertForPreTraining", "AlbertForQuestionAnswering"])
def test_hf_to_ours_to_hf_is_lossless(head):
    model = hf_random(head)
    config = AlbertConfig.from_hf_dict(model.config.to_dict())
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    back = params_to_hf(config, params_from_hf(config, head, state))
    tied = {"predictions.decoder.weight", "predictions.decoder.bias"}
    assert back.keys() == state.keys() - tied
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


def test_save_accepts_boxed_params(tmp_path):
    module = modeling.AlbertForMaskedLM(AlbertConfig(**CONFIG))
    boxes = jax.eval_shape(lambda: modeling.init_params(module, jax.random.key(0)))
    is_box = lambda x: isinstance(x, nn.Partitioned)
    boxed = jax.tree.map(lambda box, x: box.replace_boxed(x), boxes, random_params(module), is_leaf=is_box)
    assert any(is_box(x) for x in jax.tree.leaves(boxed, is_leaf=is_box))
    save_pretrained(tmp_path, module, boxed)
    _, params = from_pretrained(tmp_path, modeling.AlbertForMaskedLM)
    assert_params_equal(nn.unbox(boxed), params)


# --- partial checkpoints -------------------------------------------------------------------------


def test_pretraining_checkpoint_into_classifier(tmp_path, caplog):
    hf_random("AlbertForPreTraining").save_pretrained(tmp_path)
    _, pretrain = from_pretrained(tmp_path, "AlbertForPreTraining")
    with caplog.at_level(logging.INFO, logger="albert_jax.hf"):
        _module, params = from_pretrained(
            tmp_path, "AlbertForSequenceClassification", num_labels=3, rng_seed=5
        )
    fresh = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(fresh) == 1 and "classifier/kernel" in fresh[0] and "classifier/bias" in fresh[0]
    unused = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert "predictions.dense.weight" in unused and "sop_classifier.classifier.weight" in unused
    assert "predictions.decoder" not in unused  # tied copies are not news
    assert params["classifier"]["kernel"].shape == (32, 3)
    assert_params_equal(params["albert"], pretrain["albert"])
    _, again = from_pretrained(tmp_path, "AlbertForSequenceClassification", num_labels=3, rng_seed=5)
    assert_params_equal(params, again)  # fresh heads are reproducible from rng_seed


def test_bare_model_checkpoint_into_head_and_back(tmp_path, caplog):
    base = hf_random("AlbertModel")
    base.save_pretrained(tmp_path / "base")
    _, base_params = from_pretrained(tmp_path / "base")
    with caplog.at_level(logging.INFO, logger="albert_jax.hf"):
        _, mlm = from_pretrained(tmp_path / "base", "AlbertForMaskedLM")
    assert "predictions/dense/kernel" in caplog.text
    assert "albert.pooler.weight" in caplog.text  # MaskedLM has no pooler: logged as unused
    base_params = dict(base_params)
    base_params.pop("pooler")
    assert_params_equal(mlm["albert"], base_params)

    hf_random("AlbertForPreTraining").save_pretrained(tmp_path / "pretrain")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="albert_jax.hf"):
        _module, params = from_pretrained(tmp_path / "pretrain", modeling.AlbertModel)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert set(params) == {"embeddings", "encoder", "pooler"}


def test_legacy_key_names(tmp_path):
    """Older checkpoints store the tied decoder and may name LayerNorm parameters gamma/beta."""
    model = hf_random("AlbertForMaskedLM")
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    assert "predictions.decoder.weight" in state  # torch's state_dict lists tied weights under both names
    state["predictions.LayerNorm.gamma"] = state.pop("predictions.LayerNorm.weight")
    state["predictions.LayerNorm.beta"] = state.pop("predictions.LayerNorm.bias")
    config = AlbertConfig.from_hf_dict(model.config.to_dict())
    params = params_from_hf(config, "AlbertForMaskedLM", state)
    np.testing.assert_array_equal(
        params["predictions"]["LayerNorm"]["scale"], state["predictions.LayerNorm.gamma"]
    )


def test_missing_encoder_tensor_is_an_error():
    model = hf_random("AlbertModel")
    state = {k: v for k, v in model.state_dict().items() if "albert_layers.1.ffn." not in k}
    config = AlbertConfig.from_hf_dict(model.config.to_dict())
    with pytest.raises(ValueError, match=r"albert_layer_groups\.0\.albert_layers\.1\.ffn\.weight"):
        params_from_hf(config, "AlbertModel", state)


# --- file formats --------------------------------------------------------------------------------


def test_torch_bin_without_torch(tmp_path, monkeypatch):
    model = hf_random("AlbertForPreTraining")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    x = torch.arange(12.0).reshape(3, 4)
    odd = {  # non-contiguous views, shared storage, and dtypes numpy lacks
        "t": x.t(),
        "row": x[1],
        "bf16": x.to(torch.bfloat16),
        "i64": torch.arange(5),
        "half": x.half()[:, 1:3],
    }
    torch.save(odd, tmp_path / "odd.bin")
    expected = {k: v.float().numpy() if k == "bf16" else v.numpy() for k, v in odd.items()}

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    loaded = load_torch_bin(tmp_path / "odd.bin")
    _, params = from_pretrained(tmp_path, "AlbertForPreTraining")
    monkeypatch.undo()

    for key, value in expected.items():
        assert loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key].astype(value.dtype), value, err_msg=key)
    config = AlbertConfig.from_hf_dict(model.config.to_dict())
    assert_params_equal(params, params_from_hf(config, "AlbertForPreTraining", model.state_dict()))


def test_bin_rejects_arbitrary_globals(tmp_path):
    torch.save({"x": torch.ones(2), "evil": print}, tmp_path / "evil.bin")
    with pytest.raises(Exception, match="not allowed"):
        load_torch_bin(tmp_path / "evil.bin")


def test_sharded_safetensors(tmp_path):
    model = hf_random("AlbertForMaskedLM")
    model.config.save_pretrained(tmp_path)
    state = params_to_hf(
        AlbertConfig.from_hf_dict(model.config.to_dict()),
        params_from_hf(
            AlbertConfig.from_hf_dict(model.config.to_dict()), "AlbertForMaskedLM", model.state_dict()
        ),
    )
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, shard_keys in shards.items():
        shard = {k: state[k] for k in shard_keys}
        safetensors.numpy.save_file(shard, tmp_path / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    _, params = from_pretrained(tmp_path, "AlbertForMaskedLM")
    assert params_to_hf(AlbertConfig.from_hf_dict(model.config.to_dict()), params).keys() == state.keys()


def test_dtype_override(tmp_path):
    module = modeling.AlbertModel(AlbertConfig(**CONFIG))
    save_pretrained(tmp_path, module, random_params(module))
    module16, params = from_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert module16.config.dtype == module16.config.param_dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    mixed, params = from_pretrained(tmp_path, dtype="bfloat16", param_dtype="float32")
    assert mixed.config.dtype == "bfloat16" and mixed.config.param_dtype == "float32"
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


# --- errors --------------------------------------------------------------------------------------


def test_shape_mismatch_names_the_tensor(tmp_path):
    hf_random("AlbertForSequenceClassification", num_labels=3).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'classifier\.weight' has shape \(3, 32\), expected \(5, 32\)"):
        from_pretrained(tmp_path, "AlbertForSequenceClassification", num_labels=5)
    with pytest.raises(ValueError, match=r"albert\.embeddings\.word_embeddings\.weight"):
        from_pretrained(tmp_path, "AlbertModel", vocab_size=70)


def test_missing_directory_or_weights(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        from_pretrained(missing)
    (tmp_path / "config.json").write_text(json.dumps(AlbertConfig(**CONFIG).to_hf_dict()))
    with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors"):
        from_pretrained(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_pretrained(tmp_path / "empty")


def test_invalid_config_and_class(tmp_path):
    module = modeling.AlbertModel(AlbertConfig(**CONFIG))
    save_pretrained(tmp_path, module, random_params(module))
    with pytest.raises(ValueError, match="invalid AlbertConfig.*not divisible by num_attention_heads"):
        from_pretrained(tmp_path, num_attention_heads=5)
    with pytest.raises(ValueError, match="unknown ALBERT class 'AlbertForCausalLM'"):
        from_pretrained(tmp_path, "AlbertForCausalLM")
    with pytest.raises(ValueError, match="not an ALBERT model class"):
        from_pretrained(tmp_path, nn.Dense)
