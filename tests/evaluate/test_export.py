"""`causalshift export`: GPT2LMHeadModel for `none`, Auto-registered class for other modes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

transformers = pytest.importorskip("transformers")

from causalshift.cli import main  # noqa: E402
from causalshift.errors import UserError  # noqa: E402
from causalshift.evaluate.export import export_model  # noqa: E402
from causalshift.gpt import GPT, GPTConfig, load_model, save_model  # noqa: E402
from causalshift.testing import tiny_gpt  # noqa: E402

VOCAB = 50257  # the GPT-2 tokenizer is copied alongside: keep its vocabulary


def make_model(mode: str = "none", seed: int = 0, **res) -> GPT:
    return tiny_gpt(mode, seed, vocab_size=VOCAB, **res)


def probe(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(seed))


def logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return out[0] if isinstance(out, tuple) else out.logits


def tokenizer_available() -> bool:
    try:
        from causalshift.corpus import gpt2_tokenizer_dir

        gpt2_tokenizer_dir()
        return True
    except Exception:
        return False


def test_none_exports_plain_gpt2(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUSALSHIFT_CACHE", str(tmp_path / "cache"))
    m = make_model("none")
    with_tok = tokenizer_available()
    out = export_model(m, tmp_path / "hf", tokenizer=with_tok)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert cfg["n_positions"] == 16 and cfg["activation_function"] == "gelu_new"
    assert cfg["layer_norm_epsilon"] == 1e-5 and cfg["tie_word_embeddings"] is True
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    idx = probe()
    torch.testing.assert_close(logits(hf, idx), logits(m, idx), atol=1e-5, rtol=1e-5)
    # and back: an export folder loads as our GPT too
    torch.testing.assert_close(logits(load_model(out), idx), logits(m, idx), atol=1e-5, rtol=1e-5)
    if not with_tok:
        pytest.skip("causalshift.corpus.gpt2_tokenizer_dir unavailable: tokenizer part not checked")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("Hello world").input_ids == [15496, 995]


def test_bias_false_exports_with_zero_biases(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=VOCAB, bias=False)
    m = GPT(cfg).eval()
    out = export_model(m, tmp_path / "hf", tokenizer=False)
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    idx = probe()
    torch.testing.assert_close(logits(hf, idx), logits(m, idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("mode", "res"),
    [("fixed", {"cut_layer": 2, "alpha": 0.3}), ("gate", {"alpha": 0.1, "tau": 0.5}),
     ("gate-hard", {}), ("scalar", {})],
)  # fmt: skip
def test_other_modes_round_trip_through_auto_classes(tmp_path, mode, res):
    import causalshift  # noqa: F401  (the registration hook)

    m = make_model(mode, **res)
    out = export_model(m, tmp_path / "hf", tokenizer=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "causalshift_gpt" and cfg["residual"]["mode"] == mode
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(hf).__name__ == "CausalShiftGPTForCausalLM" and not hf.training
    assert hf.lm_head.weight is hf.transformer.wte.weight
    idx = probe()
    torch.testing.assert_close(logits(hf, idx), logits(m, idx), atol=0, rtol=0)
    torch.testing.assert_close(logits(load_model(out), idx), logits(m, idx), atol=0, rtol=0)


def test_hf_class_conventions(tmp_path):
    from causalshift import register_auto_classes

    register_auto_classes()
    register_auto_classes()  # idempotent
    m = make_model("gate")
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_model(m, tmp_path / "hf", False))
    idx = probe()
    with torch.no_grad():
        out = hf(input_ids=idx, labels=idx, output_hidden_states=True)
        _, ours = m(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(out.loss, ours)  # HF labels are shifted inside
    assert len(out.hidden_states) == 4
    torch.testing.assert_close(out.hidden_states[-1], m.hidden_states(idx)[-1])
    right = torch.ones_like(idx)
    right[0, 10:] = 0
    hf(input_ids=idx, attention_mask=right)  # right padding is fine
    with pytest.raises(ValueError, match="right padding"):
        hf(input_ids=idx, attention_mask=right.flip(1))
    gen = hf.generate(idx[:1, :4], max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, 7)
    # greedy generation = argmax of our own logits, step by step
    seq = idx[:1, :4]
    for _ in range(3):
        seq = torch.cat([seq, logits(m, seq)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(gen, seq)


def test_hf_config_mirrors_gpt_config():
    """The HF config declares every GPTConfig field with the same default."""
    from causalshift.evaluate.hf_config import CausalShiftGPTConfig

    hf = CausalShiftGPTConfig()
    assert hf.to_gpt_config() == GPTConfig()
    for name, value in GPTConfig().to_dict().items():
        assert getattr(hf, name) == value, name


def test_fresh_process_loads_after_import_causalshift(tmp_path):
    """The real contract: a new interpreter, `import causalshift`, then the Auto class."""
    m = make_model("fixed", cut_layer=3)
    out = export_model(m, tmp_path / "hf", tokenizer=False)
    idx = probe()
    torch.save({"idx": idx, "logits": logits(m, idx)}, tmp_path / "want.pt")
    code = textwrap.dedent(
        f"""
        import sys
        import causalshift
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        import torch
        from transformers import AutoModelForCausalLM
        hf = AutoModelForCausalLM.from_pretrained({str(out)!r})
        want = torch.load({str(tmp_path / "want.pt")!r})
        with torch.no_grad():
            got = hf(want["idx"]).logits
        assert torch.equal(got, want["logits"]), (got - want["logits"]).abs().max()
        print("OK", type(hf).__name__)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OK CausalShiftGPTForCausalLM" in r.stdout


def test_fresh_process_loads_when_transformers_came_first(tmp_path):
    """transformers imported before causalshift: the hook registers at once, the model later."""
    out = export_model(make_model("gate"), tmp_path / "hf", tokenizer=False)
    code = textwrap.dedent(
        f"""
        from transformers import AutoModelForCausalLM
        import causalshift
        hf = AutoModelForCausalLM.from_pretrained({str(out)!r})
        print("OK", type(hf).__name__)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OK CausalShiftGPTForCausalLM" in r.stdout


def test_cli_export(tmp_path, capsys):
    m = make_model("gate")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"model": m.config.to_dict()}))
    save_model(m, run_dir)
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--out", str(out), "--no-tokenizer"]) == 0
    assert "CausalShiftGPTForCausalLM" in capsys.readouterr().out
    assert main(["export", str(run_dir), "--out", str(out), "--no-tokenizer"]) == 0  # replace
    assert main(["export", str(tmp_path / "missing"), "--out", str(out)]) == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    assert main(["export", str(run_dir), "--out", str(tmp_path / "other")]) == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    (run_dir / "model.safetensors").write_bytes(b"garbage")
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_export_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(UserError, match="not a causalshift export"):
        export_model(make_model(), tmp_path, tokenizer=False)


def test_import_causalshift_is_light():
    code = "import sys, causalshift; print('torch' in sys.modules, 'transformers' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
