import keras
import numpy as np
import pytest

from keras_vtx.layers.transformer_decoder_block import TransformerDecoderBlock
from tests.test_case import (
    assert_all_weights_get_gradients,
    assert_allclose,
    assert_config_round_trip,
    np_attention,
    np_layer_norm,
    np_mlp,
    randomize_weights,
    save_load_in_functional_model,
    to_numpy,
)


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _data():
    tgt, memory = _x((2, 4, 8)), _x((2, 6, 8), 1)
    query_pos, pos = _x((2, 4, 8), 2), _x((2, 6, 8), 3)
    mask = np.ones((2, 6), bool)
    mask[1, 4:] = False
    return tgt, memory, query_pos, pos, mask


def _block(**kwargs):
    block = TransformerDecoderBlock(**{"num_heads": 2, "mlp_dim": 16, **kwargs})
    block.build((2, 4, 8), (2, 6, 8))
    randomize_weights(block)
    return block


def _np_block(block, tgt, memory, query_pos=None, pos=None, mask=None):
    cross_mask = None if mask is None else np.broadcast_to(mask[:, None, :], (2, 4, 6))

    def self_attn(h):
        return np_attention(block.self_attention, h, query_position=query_pos,
                            key_position=query_pos)[0]

    def cross_attn(h):
        return np_attention(block.cross_attention, h, value=memory, key=memory,
                            mask=cross_mask, query_position=query_pos, key_position=pos)[0]

    x = tgt.astype("float64")
    if block.norm_first:
        x = x + self_attn(np_layer_norm(block.norm1, x))
        x = x + cross_attn(np_layer_norm(block.norm2, x))
        return x + np_mlp(block.mlp, np_layer_norm(block.norm3, x))
    x = np_layer_norm(block.norm1, x + self_attn(x))
    x = np_layer_norm(block.norm2, x + cross_attn(x))
    return np_layer_norm(block.norm3, x + np_mlp(block.mlp, x))


@pytest.mark.parametrize("norm_first", [False, True])
def test_matches_numpy(norm_first):
    tgt, memory, query_pos, pos, mask = _data()
    block = _block(norm_first=norm_first)
    out = block(tgt, memory, query_position=query_pos, memory_position=pos, memory_mask=mask)
    assert tuple(out.shape) == tgt.shape
    assert_allclose(out, _np_block(block, tgt, memory, query_pos, pos, mask), atol=1e-4)
    # Masked memory positions are ignored whatever they hold.
    changed = memory.copy()
    changed[1, 4:] = 100.0
    again = block(tgt, changed, query_position=query_pos, memory_position=pos, memory_mask=mask)
    assert_allclose(again, out, atol=1e-5)


def test_matches_transformers_decoder_layer():
    torch = pytest.importorskip("torch")
    from transformers import DetrConfig
    from transformers.models.detr.modeling_detr import DetrDecoderLayer

    tgt, memory, query_pos, pos, mask = _data()
    block = _block()
    config = DetrConfig(d_model=8, decoder_attention_heads=2, decoder_ffn_dim=16,
                        use_timm_backbone=False, backbone_config={"model_type": "resnet"})
    config._attn_implementation = "eager"
    ref = DetrDecoderLayer(config).eval()

    def linear(module, dense):
        module.weight.data = torch.from_numpy(to_numpy(dense.kernel).T.copy())
        module.bias.data = torch.from_numpy(to_numpy(dense.bias).copy())

    def norm(module, layer):
        module.weight.data = torch.from_numpy(to_numpy(layer.gamma).copy())
        module.bias.data = torch.from_numpy(to_numpy(layer.beta).copy())

    for theirs, ours in ((ref.self_attn, block.self_attention),
                         (ref.encoder_attn, block.cross_attention)):
        for name, dense in (("q_proj", ours.query_dense), ("k_proj", ours.key_dense),
                            ("v_proj", ours.value_dense), ("o_proj", ours.output_dense)):
            linear(getattr(theirs, name), dense)
    linear(ref.mlp.fc1, block.mlp.fc1)
    linear(ref.mlp.fc2, block.mlp.fc2)
    for theirs, ours in ((ref.self_attn_layer_norm, block.norm1),
                         (ref.encoder_attn_layer_norm, block.norm2),
                         (ref.final_layer_norm, block.norm3)):
        norm(theirs, ours)
    additive = np.where(mask, 0.0, -1e9).astype("float32")[:, None, None, :]
    with torch.no_grad():
        expected = ref(
            torch.from_numpy(tgt), spatial_position_embeddings=torch.from_numpy(pos),
            object_queries_position_embeddings=torch.from_numpy(query_pos),
            encoder_hidden_states=torch.from_numpy(memory),
            encoder_attention_mask=torch.from_numpy(additive),
        )
    expected = expected[0] if isinstance(expected, tuple) else expected
    out = block(tgt, memory, query_position=query_pos, memory_position=pos, memory_mask=mask)
    assert_allclose(out, expected.numpy(), atol=1e-4)


def test_attention_scores_and_dropout():
    tgt, memory, query_pos, pos, mask = _data()
    block = _block(dropout=0.5, attention_dropout=0.5)
    out, self_scores, cross_scores = block(
        tgt, memory, query_position=query_pos, memory_position=pos, memory_mask=mask,
        return_attention_scores=True,
    )
    assert tuple(self_scores.shape) == (2, 2, 4, 4)
    assert tuple(cross_scores.shape) == (2, 2, 4, 6)
    assert_allclose(to_numpy(cross_scores)[1, :, :, 4:], 0.0, atol=1e-7)
    assert_allclose(out, _np_block(block, tgt, memory, query_pos, pos, mask), atol=1e-4)
    trained = block(tgt, memory, query_position=query_pos, memory_position=pos,
                    memory_mask=mask, training=True)
    assert np.abs(to_numpy(trained) - to_numpy(out)).max() > 1e-3


def test_gradients_config_and_saving(tmp_path):
    tgt, memory, query_pos, pos, mask = _data()
    block = _block(norm_first=True, activation="gelu", layer_norm_epsilon=1e-6)
    assert_all_weights_get_gradients(block, tgt, memory=keras.ops.convert_to_tensor(memory))
    clone = assert_config_round_trip(block)
    assert clone.norm_first and clone.activation == "gelu"
    reloaded = save_load_in_functional_model(block, [tgt, memory], tmp_path, atol=1e-6)
    assert reloaded.layer_norm_epsilon == 1e-6
