"""`AlbertConfig.sharing`, the ALBERT paper's cross-layer sharing ablations (Lan et al., 2019, Table 4).

"all" is HF's ALBERT and keeps its tests in test_modeling.py / test_hf.py. Here: the Table 4 parameter
counts, each variant's parameter tree and forward pass, "none" against HF's num_hidden_groups =
num_hidden_layers, HF export (and its refusal for the partial variants), and the config round trips.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import traverse_util
from test_modeling import (
    COMMON,
    TINY,
    abstract_params,
    apply,
    assert_close,
    batch,
    count,
    hf_forward,
    hf_model,
)
from test_modeling import init as random_params

from albert_jax import errors, export, from_pretrained, modeling, save_pretrained
from albert_jax import workdir as workdir_lib
from albert_jax.config import SHARED_BLOCKS, AlbertConfig
from albert_jax.hf import params_from_hf, params_to_hf
from configs import common
from configs import pretrain as pretrain_configs

SHARINGS = list(SHARED_BLOCKS)
LAYERS = TINY["num_hidden_layers"]
FFN_PARTS = ("ffn", "ffn_output", "full_layer_layer_norm")


def tiny(sharing: str, **overrides) -> AlbertConfig:
    return AlbertConfig(**{**TINY, "inner_group_num": 2, **overrides}, sharing=sharing)


def boxed_params(module: nn.Module) -> dict[tuple[str, ...], nn.Partitioned]:
    boxes = jax.eval_shape(lambda: modeling.init_params(module, jax.random.key(0)))
    return traverse_util.flatten_dict(boxes, is_leaf=lambda _, x: isinstance(x, nn.Partitioned))


# --- Table 4 -------------------------------------------------------------------------------------

# Lan et al. (2019), Table 4, ALBERT-base (H=768, 12 layers, vocabulary 30000): millions of parameters.
TABLE_4 = {
    ("all", 768): 31,
    ("ffn", 768): 57,
    ("attention", 768): 83,
    ("none", 768): 108,
    ("all", 128): 12,
    ("ffn", 128): 38,
    ("attention", 128): 64,
    ("none", 128): 89,
}
# Ours exactly: AlbertModel (embeddings, E→H map, encoder, pooler), which HF counts as albert-base's 11.7M.
OURS = {
    ("all", 768): 31_705_344,
    ("ffn", 768): 57_708_288,
    ("attention", 768): 83_668_992,
    ("none", 768): 109_671_936,
    ("all", 128): 11_683_584,
    ("ffn", 128): 37_686_528,
    ("attention", 128): 63_647_232,
    ("none", 128): 89_650_176,
}


@pytest.mark.parametrize("sharing,embedding_size", list(TABLE_4))
def test_parameter_counts_match_table_4(sharing, embedding_size):
    config = AlbertConfig.from_preset("base", sharing=sharing, embedding_size=embedding_size)
    flat = traverse_util.flatten_dict(abstract_params(modeling.AlbertModel(config)), sep="/")
    total = count(flat)
    assert total == OURS[sharing, embedding_size]
    # Two differences in bookkeeping, none in the shared blocks: the original maps E→H only when E≠H
    # (HF, and so we, always do; 0.59M at E=768), and the paper's not-shared rows match the model
    # without its pooler (0.59M; 108M is also BERT-base's figure in its Table 1), the others with it.
    mapping = count({k: v for k, v in flat.items() if k.startswith("encoder/embedding_hidden_mapping_in")})
    pooler = count({k: v for k, v in flat.items() if k.startswith("pooler/")})
    paper_layout = total - mapping * (embedding_size == config.hidden_size) - pooler * (sharing == "none")
    assert round(paper_layout / 1e6) == TABLE_4[sharing, embedding_size]


# --- the parameter tree --------------------------------------------------------------------------


@pytest.mark.parametrize("sharing", SHARINGS)
def test_parameter_tree(sharing):
    """Shared blocks once (`shared/`, or HF's `group_0/` for "all"), each layer's own blocks stacked on a
    leading "layers" axis (`layers/`); every leaf keeps a logical name per dimension."""
    config = tiny(sharing)
    flat = boxed_params(modeling.AlbertModel(config))
    assert all(isinstance(box, nn.Partitioned) and len(box.names) == box.value.ndim for box in flat.values())
    encoder = {
        k[1:]: box for k, box in flat.items() if k[0] == "encoder" and k[1].startswith(("group", "lay", "sh"))
    }
    modules = {k[0] for k in encoder}
    assert (
        modules
        == {
            "all": {"group_0"},
            "none": {"layers"},
            "attention": {"layers", "shared"},
            "ffn": {"layers", "shared"},
        }[sharing]
    )
    for (module, layer, block, *_), box in encoder.items():
        assert layer in ("layer_0", "layer_1")
        assert block == "attention" or block in FFN_PARTS, block
        in_shared = module in ("shared", "group_0")
        assert in_shared == (("attention" if block == "attention" else "ffn") in SHARED_BLOCKS[sharing])
        if module == "layers":
            assert box.names[0] == "layers" and box.value.shape[0] == LAYERS
        else:
            assert "layers" not in box.names
    # Layers start different (split parameter keys), and shared blocks appear once.
    params = nn.unbox(modeling.init_params(modeling.AlbertModel(config), jax.random.key(0)))
    if sharing != "all":
        stacked = traverse_util.flatten_dict(params["encoder"]["layers"])
        kernel = next(v for k, v in stacked.items() if k[-1] == "kernel")
        assert not np.allclose(kernel[0], kernel[1])


@pytest.mark.parametrize("sharing", ["none", "attention", "ffn"])
def test_rejects_layer_groups(sharing):
    with pytest.raises(errors.ConfigError, match=f"sharing='{sharing}' needs num_hidden_groups=1, got 2"):
        tiny(sharing, num_hidden_groups=2)


def test_rejects_unknown_sharing():
    with pytest.raises(errors.ConfigError, match="sharing 'layers' is not one of all, attention, ffn, none"):
        tiny("layers")
    with pytest.raises(errors.ConfigError, match="sharing list is not one of"):
        AlbertConfig.from_hf_dict({**tiny("all").to_hf_dict(), "sharing": ["ffn"]})


def test_layers_axis_is_replicated():
    """ "layers" is in no rule: replicated, as sharding.py's rules leave every unlisted name."""
    rules = tuple(tuple(r) for r in common.logical_axis_rules())
    assert nn.logical_to_mesh_axes(("layers", "hidden", "heads", "kv"), rules) == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor", None
    )


# --- forward and backward ------------------------------------------------------------------------


def _loss_and_grad(module: nn.Module, inputs: dict):
    """Jitted value and gradient of a training-mode (dropout on) pretraining forward pass."""

    def loss(p):
        rngs = {"dropout": jax.random.key(0)}
        out = module.apply({"params": p}, **inputs, deterministic=False, output_hidden_states=True, rngs=rngs)
        return jnp.sum(out.prediction_logits**2) + jnp.sum(out.sop_logits**2), out

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize("sharing", ["none", "attention", "ffn"])
def test_forward_and_gradient(sharing):
    """Training mode runs, outputs one state per layer, and reaches every parameter."""
    config = tiny(sharing, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    module = modeling.AlbertForPreTraining(config)
    inputs = {k: jnp.asarray(v) for k, v in batch(config, (2, 10)).items()}
    (_, out), grads = _loss_and_grad(module, inputs)(random_params(module, 1))
    assert len(out.hidden_states) == LAYERS * 2 + 1
    zero = [k for k, g in traverse_util.flatten_dict(grads, sep="/").items() if not np.any(np.asarray(g))]
    assert not zero, zero


def test_unrolled_and_remat_agree():
    """scan_layers=False (the loop unrolled) and remat: the same tree, loss and gradient."""
    config = tiny("attention", num_hidden_layers=3, inner_group_num=1, hidden_dropout_prob=0.1)
    module = modeling.AlbertForPreTraining(config)
    params = random_params(module, 1)
    inputs = {k: jnp.asarray(v) for k, v in batch(config, (2, 10)).items()}
    (value, _), grads = _loss_and_grad(module, inputs)(params)
    for variant in (config.replace(scan_layers=False), config.replace(remat_policy="full")):
        other = modeling.AlbertForPreTraining(variant)
        assert jax.tree.structure(abstract_params(other)) == jax.tree.structure(params)
        (value2, _), grads2 = _loss_and_grad(other, inputs)(params)
        np.testing.assert_allclose(value2, value, rtol=1e-5)
        for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4, rtol=1e-4)


# --- HF ------------------------------------------------------------------------------------------

NONE_HF = dict(  # HF's not-shared: one group per layer, two inner layers each
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=3,
    num_hidden_groups=3,
    inner_group_num=2,
    num_attention_heads=4,
    intermediate_size=37,
    hidden_act="gelu_new",
)


@pytest.mark.parametrize("head", ["AlbertModel", "AlbertForPreTraining"])
def test_none_equals_hf_with_a_group_per_layer(head):
    model = hf_model(head, **COMMON, **NONE_HF)
    hf_config = AlbertConfig.from_hf_dict(model.config.to_dict())
    assert hf_config.sharing == "all" and hf_config.num_hidden_groups == 3  # read as HF wrote it
    config = hf_config.replace(sharing="none", num_hidden_groups=1)
    assert config.hf_equivalent() == hf_config
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    params = params_from_hf(config, head, state)
    inputs = batch(config, (3, 11))
    theirs = hf_forward(model, inputs, output_hidden_states=True, output_attentions=True)
    ours = apply(
        modeling.HEADS[head](config), params, inputs, output_hidden_states=True, output_attentions=True
    )
    for field in ("last_hidden_state", "pooler_output", "prediction_logits", "sop_logits"):
        if hasattr(ours, field):
            assert_close(getattr(ours, field), getattr(theirs, field), field)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 3 * 2 + 1
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        assert_close(a, b, f"hidden_states[{i}]")
    for i, (a, b) in enumerate(zip(ours.attentions, theirs.attentions)):
        assert_close(a, b, f"attentions[{i}]")
    back = params_to_hf(config, params)
    tied = {"predictions.decoder.weight", "predictions.decoder.bias"}
    assert back.keys() == state.keys() - tied
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


def test_none_exports_to_hf(tmp_path):
    config = tiny("none", num_hidden_layers=3)
    module = modeling.AlbertForPreTraining(config)
    params = random_params(module, 2)
    save_pretrained(tmp_path, module, params)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["num_hidden_groups"] == 3 and "sharing" not in written
    model, info = transformers.AlbertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    inputs = batch(config, (3, 10))
    theirs = hf_forward(model.eval(), inputs)
    ours = apply(module, params, inputs)
    assert_close(ours.prediction_logits, theirs.prediction_logits, "prediction_logits")
    assert_close(ours.sop_logits, theirs.sop_logits, "sop_logits")
    # An HF directory loads as HF describes it; asked for, as the stacked layout it came from.
    as_hf, _ = from_pretrained(tmp_path, "AlbertForPreTraining")
    assert as_hf.config == config.hf_equivalent()
    again, params2 = from_pretrained(tmp_path, "AlbertForPreTraining", sharing="none", num_hidden_groups=1)
    assert again.config == config
    a, b = traverse_util.flatten_dict(params), traverse_util.flatten_dict(params2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))


@pytest.mark.parametrize(
    "sharing,shared,own", [("attention", "attention", "FFN"), ("ffn", "FFN", "attention")]
)
def test_partial_sharing_refuses_hf_export(tmp_path, sharing, shared, own):
    config = tiny(sharing)
    module = modeling.AlbertModel(config)
    message = (
        f"sharing='{sharing}' cannot be exported to Hugging Face: HF's ALBERT shares whole layers or none, "
        f"it has no layout for a shared {shared} with a per-layer {own}"
    )
    with pytest.raises(errors.ConfigError, match=message):
        save_pretrained(tmp_path / "out", module, random_params(module))
    assert not (tmp_path / "out").exists()
    # A run's WORKDIR: refused before any checkpoint is read.
    run = tmp_path / "run"
    (run / workdir_lib.CHECKPOINTS).mkdir(parents=True)
    hf = {**config.to_hf_dict(), "architectures": ["AlbertForPreTraining"]}
    (run / workdir_lib.MODEL_CONFIG).write_text(json.dumps(hf))
    assert workdir_lib.read_model_config(run) == (config, "AlbertForPreTraining")
    with pytest.raises(errors.ConfigError, match=message):
        export.export(str(run), str(tmp_path / "exported"))


@pytest.mark.parametrize("sharing", ["attention", "ffn"])
def test_partial_sharing_moves_between_heads(sharing):
    """What `pretrained.load` does with a run's checkpoint: through HF's names (the shared block once,
    in group 0) into the fine-tuning head, losslessly."""
    config = tiny(sharing)
    pretraining = random_params(modeling.AlbertForPreTraining(config), 3)
    state = params_to_hf(config, pretraining)
    later = {k.split(".")[6] for k in state if k.startswith("albert.encoder.albert_layer_groups.1.")}
    assert later == ({"attention"} if sharing == "ffn" else set(FFN_PARTS))  # group 1: its own blocks
    classifier = params_from_hf(config, "AlbertForSequenceClassification", state)
    a, b = traverse_util.flatten_dict(pretraining["albert"]), traverse_util.flatten_dict(classifier["albert"])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sharing", SHARINGS)
def test_config_round_trip(sharing):
    config = tiny(sharing)
    d = config.to_hf_dict()
    assert d.get("sharing", "all") == sharing and ("sharing" in d) == (sharing != "all")
    assert AlbertConfig.from_hf_dict(json.loads(json.dumps(d))) == config


def test_command_line_field():
    """`--config.model.sharing=ffn`: every config's model block has the field, default "all"."""
    c = pretrain_configs.get_config("base")
    assert c.model.sharing == "all" == common.model_config().sharing
    c.model.sharing = "ffn"
    assert AlbertConfig(**c.model.to_dict()).sharing == "ffn"
