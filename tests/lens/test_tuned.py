"""The tuned lens: translators, files in the tuned-lens package's layout (written by hand and,
where the package is installed, by the package itself), checks against the model, and
`analyze --lens` through it (zero translators: exactly the logit lens; others: exact ranks
against a brute-force reference)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import causalshift as cs
from causalshift.cli import main
from causalshift.errors import UserError
from causalshift.lens.models import lens_model
from causalshift.lens.tuned import (
    TunedLens,
    apply_translator,
    check_lens_specs,
    lens_translator,
    unembed_hash,
)
from causalshift.testing import tiny_hf_model

PACKAGE_CONFIG_KEYS = [
    "base_model_name_or_path",
    "d_model",
    "num_hidden_layers",
    "bias",
    "base_model_revision",
    "unembed_hash",
    "lens_type",
]


def random_lens(layers: int, width: int, seed: int = 0, scale: float = 0.2) -> TunedLens:
    lens = TunedLens(layers, width)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return lens


def test_translator_is_h_plus_a_h_plus_b() -> None:
    h = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    a = torch.tensor([[0.0, 1.0], [2.0, 0.0]])  # row i: output i
    b = torch.tensor([0.5, -0.5])
    # by hand: h + A h + b, row by row: [1,2] + [2,2] + b; [0,-1] + [-1,0] + b
    expected = torch.tensor([[3.5, 3.5], [-0.5, -1.5]])
    assert torch.equal(apply_translator(h, a, b), expected)
    lens = TunedLens(1, 2)
    assert torch.equal(lens.translate(0, h), h)  # zero at init: the logit lens
    assert lens.translate(1, h) is h  # row L: no translator
    with torch.no_grad():
        lens.layer_translators[0].weight.copy_(a)
        lens.layer_translators[0].bias.copy_(b)
    assert torch.equal(lens.translate(0, h), expected)
    assert torch.equal(lens.frozen()(0, h), expected)
    bf = h.to(torch.bfloat16)  # computed in float32, returned in the states' dtype
    assert TunedLens(1, 2).frozen()(0, bf).dtype == torch.bfloat16
    assert torch.equal(TunedLens(1, 2).frozen()(0, bf), bf)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    lens = random_lens(3, 8, seed=1)
    lens.save(tmp_path / "lens")
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert list(config) == PACKAGE_CONFIG_KEYS
    assert (config["d_model"], config["num_hidden_layers"], config["lens_type"]) == (
        8,
        3,
        "linear_tuned_lens",
    )
    state = torch.load(tmp_path / "lens" / "params.pt", weights_only=True)
    assert sorted(state) == sorted(f"{i}.{k}" for i in range(3) for k in ("weight", "bias"))
    back = TunedLens.load(tmp_path / "lens")
    h = torch.randn(5, 8)
    for layer in range(4):
        assert torch.equal(back.translate(layer, h), lens.translate(layer, h))


def test_loads_a_lens_written_in_the_package_layout(tmp_path: Path) -> None:
    """config.json as json.dump writes it (one line) and params.pt as torch.save of a
    ModuleList of nn.Linear: what `tuned_lens.nn.lenses.TunedLens.save` writes."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    linears = nn.ModuleList([nn.Linear(6, 6) for _ in range(2)])
    torch.save(linears.state_dict(), folder / "params.pt")
    config = {
        "base_model_name_or_path": "some/model",
        "d_model": 6,
        "num_hidden_layers": 2,
        "bias": True,
        "base_model_revision": None,
        "unembed_hash": None,
        "lens_type": "linear_tuned_lens",
    }
    (folder / "config.json").write_text(json.dumps(config))
    lens = TunedLens.load(folder)
    h = torch.randn(4, 6)
    for layer, linear in enumerate(linears):
        with torch.no_grad():
            assert torch.allclose(lens.translate(layer, h), h + linear(h), atol=1e-6)
    assert torch.equal(lens.translate(2, h), h)


def hf_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=97, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    model = GPT2LMHeadModel(cfg).eval()
    model.config.tie_last_hidden_states = False
    return model


def tuned_lens_package(monkeypatch: pytest.MonkeyPatch):
    """The tuned-lens package, or a skip. Version 0.2.0 asks transformer_lens for
    HookedTransformer, which TransformerLens 4 removed: it is told TransformerLens is absent
    (only HF models are used here)."""
    tl = pytest.importorskip("tuned_lens")
    import tuned_lens.model_surgery
    import tuned_lens.nn.unembed

    for module in (tuned_lens.model_surgery, tuned_lens.nn.unembed):
        monkeypatch.setattr(module, "_transformer_lens_available", False, raising=False)
    return tl


def test_round_trip_with_the_tuned_lens_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lens the package trains for a model decodes to the same logits here, and ours loads
    in the package (both directions)."""
    tl = tuned_lens_package(monkeypatch)
    model = hf_gpt2()
    lm = lens_model(model, None, "gpt2", "memory")
    theirs = tl.TunedLens.from_model(model)
    with torch.no_grad():
        for p in theirs.layer_translators.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    theirs.save(tmp_path / "theirs")
    ours = TunedLens.load(tmp_path / "theirs", lm)  # no hash warning: same fingerprint
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states  # L+1; the last normed
        for layer in range(lm.num_layers):
            expected = theirs.forward(hidden[layer], idx=layer)
            got = lm.decode(ours.translate(layer, hidden[layer]))
            assert torch.allclose(got, expected, atol=1e-4)
    random_lens(2, 16, seed=3).save(tmp_path / "ours")
    back = tl.TunedLens.from_model_and_pretrained(model, str(tmp_path / "ours"))
    mine = TunedLens.load(tmp_path / "ours")
    h = torch.randn(3, 16)
    with torch.no_grad():
        for layer in range(2):
            assert torch.allclose(back.transform_hidden(h, layer), mine.translate(layer, h))


def test_the_hash_is_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    tl = tuned_lens_package(monkeypatch)
    model = hf_gpt2()
    theirs = tl.TunedLens.from_model(model)
    assert theirs.config.unembed_hash == unembed_hash(model.lm_head.weight)


def test_a_lens_for_another_model_is_one_line(tmp_path: Path) -> None:
    lm = lens_model(tiny_hf_model("llama"), None, "tiny", "memory")  # 3 layers, width 32
    random_lens(3, 16).save(tmp_path / "narrow")
    random_lens(2, 32).save(tmp_path / "shallow")
    with pytest.raises(UserError, match=r"3 layers of width 16.*tiny has 3 layers of width 32"):
        TunedLens.load(tmp_path / "narrow", lm)
    with pytest.raises(UserError, match=r"2 layers of width 32"):
        lens_translator(f"tuned:{tmp_path / 'shallow'}", lm)
    assert lens_translator("logit", lm) is None
    (tmp_path / "shallow" / "checksums.json").unlink()  # now a hand-made file: no checksum
    torch.save({"0.weight": torch.zeros(32, 32)}, tmp_path / "shallow" / "params.pt")
    with pytest.raises(UserError, match=r"expected the keys 0\.weight"):
        TunedLens.load(tmp_path / "shallow")
    with pytest.raises(UserError, match="not found"):
        TunedLens.load(tmp_path / "missing")


def test_lens_specs() -> None:
    assert check_lens_specs(("logit",)) == ("logit",)
    assert check_lens_specs("logit") == ("logit",)
    with pytest.raises(UserError, match="unknown lens 'tunde:x'"):
        check_lens_specs(("tunde:x",))
    with pytest.raises(UserError, match="not found"):
        check_lens_specs(("logit", "tuned:/no/such/lens"))
    with pytest.raises(UserError, match="once"):
        check_lens_specs(("logit", "logit"))
    with pytest.raises(UserError, match="at least one"):
        check_lens_specs(())


ANALYZE = ["--num-seqs", "3", "--seq-len", "12", "--no-plots", "--device", "cpu"]


def test_zero_translators_give_the_logit_lens_exactly(
    tiny_hf_dir: Path, tiny_text_file: Path, tmp_path: Path
) -> None:
    """analyze --lens logit,tuned:DIR with an untrained lens: two results per model, every
    number equal; results.json says which lens, layers.csv gets a lens column."""
    TunedLens(2, 32).save(tmp_path / "zero")
    argv = ["analyze", "--model", str(tiny_hf_dir), "--data", str(tiny_text_file), *ANALYZE]
    lens = f"tuned:{tmp_path / 'zero'}"
    assert main([*argv, "--lens", f"logit,{lens}", "--out", str(tmp_path / "a")]) == 0
    models = json.loads((tmp_path / "a" / "results.json").read_text())["models"]
    assert [m["lens"] for m in models] == ["logit", lens]
    assert models[0]["layers"] == models[1]["layers"]
    assert models[0]["strata"] == models[1]["strata"]
    header = (tmp_path / "a" / "layers.csv").read_text().splitlines()[0].split(",")
    assert header[:8] == ["model", "layer", "depth", "metric", "value", "ci95_low", "ci95_high",
                          "lens"]  # fmt: skip
    # a lens that is not zero changes the numbers, but not at row L (no translator there)
    random_lens(2, 32, scale=0.5).save(tmp_path / "random")
    lens = f"tuned:{tmp_path / 'random'}"
    assert main([*argv, "--lens", f"logit,{lens}", "--out", str(tmp_path / "b")]) == 0
    logit, tuned = json.loads((tmp_path / "b" / "results.json").read_text())["models"]
    assert logit["layers"][0] != tuned["layers"][0]
    assert logit["layers"][2] == tuned["layers"][2]
    # old files without the key read as the logit lens
    from causalshift.results import ModelResult

    old = {k: v for k, v in logit.items() if k != "lens"}
    assert ModelResult.from_dict(old).lens == "logit"
    assert "lens" not in ModelResult.from_dict(old).to_dict()


def test_tuned_ranks_and_cosines_match_a_brute_force_reference(tmp_path: Path) -> None:
    """Every metric of the tuned lens, from U . N(h + A h + b) decoded over the whole
    vocabulary in float32 (ranks: entries strictly above the target)."""
    model = tiny_hf_model("llama")
    lm = lens_model(model, None, "tiny", "memory")
    lens = random_lens(3, 32, seed=2, scale=0.3)
    lens.save(tmp_path / "lens")
    ids = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(1))
    result = cs.measure(model, tokens=ids, topk=(1, 5), lens=f"tuned:{tmp_path / 'lens'}")
    assert result.model.lens == f"tuned:{tmp_path / 'lens'}"
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[:-1]
        last = model.model.norm  # our row L is the pre-norm stream: captured by a hook
        states: list[torch.Tensor] = []
        handle = last.register_forward_pre_hook(lambda _m, args: states.append(args[0]))
        model(ids)
        handle.remove()
    rows = [*hidden, states[0]]
    inputs, outputs = ids[:, :-1].reshape(-1), ids[:, 1:].reshape(-1)
    for layer, h in enumerate(rows):
        z = lm.decode(lens.translate(layer, h[:, :-1].reshape(-1, 32)))
        for name, target in (("input", inputs), ("output", outputs)):
            ranks = (z > z.gather(1, target[:, None])).sum(1)
            for k in (1, 5):
                expected = (ranks < k).double().mean().item()
                got = result.layers.loc[layer, f"top{k}_{name}"]
                assert got == pytest.approx(expected, abs=1e-12), (layer, name, k)
        hn = lm.norm(lens.translate(layer, h[:, :-1].reshape(-1, 32))).float()
        cos = torch.cosine_similarity(hn, lm.unembed[outputs].float(), dim=1).mean().item()
        assert result.layers.loc[layer, "cos_output"] == pytest.approx(cos, abs=1e-5)


def test_figures_draw_one_line_style_per_lens() -> None:
    from causalshift.figures.common import lens_style, lens_title, model_colors, several_lenses
    from causalshift.results import ModelResult

    a = ModelResult(name="a", num_layers=2, source="x")
    a_tuned = ModelResult(name="a", lens="tuned:/d", num_layers=2, source="x")
    b = ModelResult(name="b", num_layers=2, source="y")
    assert model_colors([a, a_tuned, b]) == [0, 0, 1]  # colours per model
    assert not several_lenses([a, b]) and several_lenses([a, a_tuned])
    assert lens_style("--", a, False) == "--"  # one lens: the usual styles
    assert (lens_style("--", a, True), lens_style("-o", a_tuned, True)) == ("x-", "o--")
    assert lens_title([a]) == "logit lens" and lens_title([a_tuned, a]) == "logit and tuned lenses"
    assert a_tuned.label == "a (tuned lens)" and a.label == "a"
