"""Every supported architecture family, as a tiny random model built from a config:
the lens finds its blocks, final norm and unembedding, and at layer L it reproduces the
model's own logits."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from causalshift.errors import UserError
from causalshift.lens import engine
from causalshift.lens.models import lens_model, load
from causalshift.testing import FAMILY_CONFIGS as FAMILIES
from causalshift.testing import tiny_hf_model as tiny_model


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_lens_at_last_layer_equals_model_logits(model_type):
    model = tiny_model(model_type)
    lm = lens_model(model, tokenizer=None, name=model_type, source="config")
    assert lm.num_layers == 3
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))
    states = engine.residual_stream(lm, ids)
    assert len(states) == 4 and states[0].shape == (2, 11, 32)
    with torch.no_grad():
        expected = model(input_ids=ids).logits.float()
    torch.testing.assert_close(lm.decode(states[-1]), expected, atol=1e-4, rtol=1e-4)
    tied = model.config.get_text_config().tie_word_embeddings
    assert lm.tied_embeddings == tied
    assert (lm.unembed.data_ptr() == lm.embed.data_ptr()) == tied


@pytest.mark.parametrize("model_type", ["gpt2", "gemma3_text"])
def test_layer_zero_is_stream_entering_block_one(model_type):
    model = tiny_model(model_type)
    lm = lens_model(model, tokenizer=None, name=model_type, source="config")
    ids = torch.tensor([[1, 2, 3, 4]])
    h0 = engine.residual_stream(lm, ids)[0]
    with torch.no_grad():
        if model_type == "gpt2":
            t = model.transformer
            expected = t.wte(ids) + t.wpe(torch.arange(4))[None]
        else:  # Gemma scales the embedding by sqrt(d) before block 1
            expected = model.model.embed_tokens(ids)
            raw = model.model.embed_tokens.weight[ids]
            assert torch.allclose(expected, raw * 32**0.5, atol=1e-4)
    torch.testing.assert_close(h0, expected)


def test_unknown_architecture_is_named():
    config = AutoConfig.for_model(
        "gpt_neox",
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UserError, match="gpt_neox"):
        lens_model(model, tokenizer=None, name="neox", source="config")


def test_load_saved_hf_folder_and_errors(tmp_path):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path / "qwen")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(
        models.WordLevel({f"w{i}": i for i in range(97)} | {"[UNK]": 96}, unk_token="[UNK]")
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path / "qwen")
    lm = load(str(tmp_path / "qwen"))
    assert lm.architecture == "qwen2" and lm.num_layers == 3
    with pytest.raises(UserError, match="not found"):
        load(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no network"):
        load("nonexistent-org-xyz/nonexistent-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load(str(tmp_path / "empty"))


def _small_gguf(path):
    """A small GGUF file written with the `gguf` package (metadata and one tensor)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(8)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(50)])
    w.add_tensor("token_embd.weight", np.zeros((50, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unreadable_gguf_is_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUSALSHIFT_CACHE", str(tmp_path / "cache"))
    whole = _small_gguf(tmp_path / "small.gguf").read_bytes()
    cut = tmp_path / "t.gguf"
    cut.write_bytes(whole[:300])  # inside the metadata: the reader raised struct.error
    with pytest.raises(UserError, match=rf"cannot read model file {cut} .*truncated"):
        load(str(cut))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(UserError, match=rf"model file {junk} is not a GGUF file"):
        load(str(junk))
    # complete, but no model transformers can build from it: named too
    with pytest.raises(UserError, match=rf"cannot read model file {tmp_path / 'small.gguf'}"):
        load(str(tmp_path / "small.gguf"))
    assert not list((tmp_path / "cache" / "models").glob("*"))  # no half-converted folder


def test_missing_tokenizer_is_named(tmp_path):
    tiny_model("qwen2").save_pretrained(tmp_path / "qwen")  # weights and config only
    with pytest.raises(UserError, match=rf"{tmp_path / 'qwen'} has no tokenizer \(tokenizer"):
        load(str(tmp_path / "qwen"))  # before: a one-token tokenizer, "only 0 tokens of text"
