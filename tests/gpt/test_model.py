"""The GPT model: HF GPT-2 equivalence, shapes, loss, optimizer groups, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from causalshift.errors import UserError
from causalshift.gpt import GPT, GPTConfig, load_model, save_model
from causalshift.gpt.io import from_hf_gpt2, is_run_dir, load_weights
from causalshift.testing import tiny_gpt_config
from causalshift.train.config import preset

VOCAB = 101


def tiny(mode: str = "none", **res) -> GPTConfig:
    return tiny_gpt_config(mode, vocab_size=VOCAB, **res)


def tokens(B: int = 2, T: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def test_matches_hf_gpt2_logits():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=3, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():  # random biases and LayerNorm affine too, so every copy is checked
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.normal_(0, 0.1)
    ours = from_hf_gpt2(hf)
    idx = tokens()
    with torch.no_grad():
        want = hf(idx).logits
        got, loss = ours(idx)
    assert loss is None
    assert got.shape == (2, 12, VOCAB)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # our loss equals HF's shifted loss
    with torch.no_grad():
        _, loss = ours(idx[:, :-1], idx[:, 1:])
        hf_loss = hf(idx, labels=idx).loss
    torch.testing.assert_close(loss, hf_loss, atol=1e-5, rtol=1e-5)


def test_param_names_are_hf_gpt2():
    m = GPT(tiny())
    names = set(m.state_dict())
    assert "transformer.wte.weight" in names and "lm_head.weight" in names
    assert "transformer.h.2.attn.c_attn.weight" in names
    assert "transformer.h.0.mlp.c_proj.bias" in names and "transformer.ln_f.weight" in names
    assert m.lm_head.weight is m.transformer.wte.weight
    assert not any(n.startswith("residual.") for n in names)  # `none` adds no tensors


def test_forward_loss_and_ignore_index():
    m = GPT(tiny())
    idx = tokens()
    logits, loss = m(idx, idx)
    assert logits.shape == (2, 12, VOCAB) and loss.ndim == 0
    # near log(V) at init
    assert abs(loss.item() - torch.log(torch.tensor(float(VOCAB))).item()) < 0.5
    targets = idx.clone()
    targets[:, 6:] = -1
    _, part = m(idx, targets)
    want = torch.nn.functional.cross_entropy(
        logits[:, :6].reshape(-1, VOCAB), idx[:, :6].reshape(-1)
    )
    torch.testing.assert_close(part, want)


def test_too_long_sequence_raises():
    with pytest.raises(ValueError, match="block_size"):
        GPT(tiny())(tokens(T=17))


def test_hidden_states_end_at_logits():
    m = GPT(tiny()).eval()
    idx = tokens()
    with torch.no_grad():
        hs = m.hidden_states(idx)
        logits, _ = m(idx)
    assert len(hs) == 4
    torch.testing.assert_close(m.lm_head(m.transformer.ln_f(hs[-1])), logits)


def test_init_and_counts():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=4, n_head=2, n_embd=64, block_size=16, vocab_size=VOCAB)
    m = GPT(cfg)
    c_proj = m.transformer.h[0].mlp.c_proj.weight
    c_fc = m.transformer.h[0].mlp.c_fc.weight
    assert abs(c_fc.std().item() - 0.02) < 0.002
    assert abs(c_proj.std().item() - 0.02 / (2 * 4) ** 0.5) < 0.001
    assert m.transformer.h[0].attn.c_attn.bias.abs().sum() == 0
    total = sum(p.numel() for p in m.parameters())
    assert m.num_params(non_embedding=False) == total
    assert m.num_params() == total - 16 * 64
    assert m.flops_per_token() == 6 * m.num_params() + 12 * 4 * 64 * 16


def test_gpt2_124m_param_count():
    m = GPT(preset("gpt2-124m").model)
    assert m.num_params(non_embedding=False) == 124_439_808  # GPT-2 small


def test_optimizer_groups():
    m = GPT(tiny("gate"))
    opt = m.configure_optimizer(0.1, 6e-4, (0.9, 0.95), 1e-2, "cpu")
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"decay", "no_decay", "residual"}
    assert groups["residual"]["params"] == [m.residual.theta]
    assert groups["residual"]["weight_decay"] == 0.0 and groups["residual"]["lr"] == 1e-2
    assert all(p.dim() >= 2 for p in groups["decay"]["params"])
    assert all(p.dim() == 1 for p in groups["no_decay"]["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == m.num_params(non_embedding=False)
    plain = GPT(tiny()).configure_optimizer(0.1, 6e-4, (0.9, 0.95), 1e-2, "cpu")
    assert [g["name"] for g in plain.param_groups] == ["decay", "no_decay"]


def test_config_dict_round_trip():
    cfg = tiny("fixed", cut_layer=2, alpha=0.25)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert GPTConfig.from_dict(d) == cfg
    with pytest.raises(UserError, match="unknown keys"):
        GPTConfig.from_dict({**d, "n_lyer": 3})


@pytest.mark.parametrize("mode", ["none", "fixed", "gate", "scalar"])
def test_save_load_round_trip(tmp_path, mode):
    res = {"cut_layer": 2} if mode == "fixed" else {}
    cfg = tiny(mode, **res)
    m = GPT(cfg).eval()
    if mode in ("gate", "scalar"):
        with torch.no_grad():
            next(m.residual.parameters()).normal_()
    (tmp_path / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "train": {}}))
    save_model(m, tmp_path)
    assert is_run_dir(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config == cfg and not loaded.training
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx)[0], m(idx)[0], atol=0, rtol=0)
    fresh = load_weights(GPT(cfg), tmp_path)
    torch.testing.assert_close(fresh.transformer.wte.weight, m.transformer.wte.weight)


def test_load_errors(tmp_path):
    cfg = tiny()
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(UserError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    with pytest.raises(UserError, match="model.safetensors not found"):
        load_model(tmp_path)
    save_model(GPT(cfg), tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="model.safetensors is truncated or corrupt"):
        load_model(tmp_path)
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_model(tmp_path)
    # a config that does not match the weights
    save_model(GPT(cfg), tmp_path)
    other = GPTConfig.from_dict({**cfg.to_dict(), "n_layer": 4})
    (tmp_path / "config.json").write_text(json.dumps({"model": other.to_dict()}))
    with pytest.raises(UserError, match="does not match"):
        load_model(tmp_path)


def test_package_names_load_lazily():
    """`causalshift.gpt` lists each name once and loads it on first use."""
    import causalshift.gpt as gpt

    assert sorted(gpt.__all__) == sorted(gpt._HOME)
    assert all(getattr(gpt, name) is not None for name in gpt.__all__)
    assert gpt.model.GPT is GPT
    with pytest.raises(AttributeError):
        gpt.nothing  # noqa: B018


def test_gpt_config_and_residual_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, causalshift.gpt.config, causalshift.gpt.residual; "
        "print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False"]
