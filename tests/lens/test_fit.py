"""Fitting the tuned lens: the streaming KL and its gradient against a dense reference, a tiny
model whose translator must learn a known rotation, and `causalshift fit-lens` end to end
(with --resume equal to an uninterrupted run)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import causalshift as cs
from causalshift.cli import main
from causalshift.lens import fit as F
from causalshift.lens.engine import chunk_bounds
from causalshift.lens.fit_command import CHECKPOINT_NAME, FitConfig, fit_lens
from causalshift.lens.models import LensModel
from causalshift.lens.tuned import TunedLens
from causalshift.results import FitLensResult


def dense_kl(hf: torch.Tensor, hn: torch.Tensor, u: torch.Tensor, bias, cap) -> torch.Tensor:
    """KL(softmax(z(hf)) || softmax(z(hn))) in float64 from the full logits."""

    def logits(h: torch.Tensor) -> torch.Tensor:
        z = h.double() @ u.double().T
        if bias is not None:
            z = z + bias.double()
        return cap * torch.tanh(z / cap) if cap else z

    p = torch.log_softmax(logits(hf), -1)
    return (p.exp() * (p - torch.log_softmax(logits(hn), -1))).sum(-1)


@pytest.mark.parametrize("cap", [None, 5.0])
@pytest.mark.parametrize("with_bias", [False, True])
def test_streaming_kl_and_gradient_equal_the_dense_ones(with_bias: bool, cap: float | None) -> None:
    gen = torch.Generator().manual_seed(0)
    vocab, d, n, layers = 1000, 16, 7, 3
    u = torch.randn(vocab, d, generator=gen)
    bias = torch.randn(vocab, generator=gen) if with_bias else None
    head = F.Unembedding(u, bias, cap, chunk_bounds(vocab, 256))  # chunks 16, 32, ..., 256
    hf = torch.randn(n, d, generator=gen) * 2
    hn = (torch.randn(layers, n, d, generator=gen) * 2).requires_grad_()
    kl = F.lens_kl(hn, F.teacher(hf, head), head)
    ref = dense_kl(hf, hn, u, bias, cap)
    assert torch.allclose(kl.double(), ref, atol=2e-5)
    (g,) = torch.autograd.grad(kl.sum(), hn)
    (g_ref,) = torch.autograd.grad(ref.sum(), hn)
    assert torch.allclose(g.double(), g_ref.double(), atol=2e-5)
    # the logit lens on the final states themselves: KL 0
    same = F.kl_and_grad(hf[None], F.teacher(hf, head), head, grad=False)[0]
    assert same.abs().max() < 1e-4


def test_layer_groups_bound_the_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    head = F.Unembedding(torch.zeros(100, 4), None, None, chunk_bounds(100, 32))
    monkeypatch.setattr(F, "CHUNK_ELEMENTS", 3 * 10 * 32)
    assert F.layer_groups(range(7), 10, head) == [[0, 1, 2], [3, 4, 5], [6]]
    monkeypatch.setattr(F, "CHUNK_ELEMENTS", 1)
    assert F.layer_groups(range(2), 10, head) == [[0], [1]]


class _Rotate(nn.Module):
    """A block that rotates the stream: x -> x R^T (R orthogonal)."""

    def __init__(self, rotation: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("rotation", rotation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.rotation.T


class _RotationModel(nn.Module):
    def __init__(self, embed: nn.Embedding, block: nn.Module) -> None:
        super().__init__()
        self.embed, self.blocks = embed, nn.ModuleList([block])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.blocks[0](self.embed(ids))


def rotation_model(d: int = 8, vocab: int = 40, seed: int = 0) -> tuple[LensModel, torch.Tensor]:
    """A one-block model whose block rotates the embedding: the final distribution is the
    logit lens of a rotated layer-0 state, so translator 0 must learn the rotation."""
    gen = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    embed = nn.Embedding(vocab, d)
    with torch.no_grad():
        embed.weight.copy_(torch.randn(vocab, d, generator=gen) * 1.5)
    model = _RotationModel(embed, _Rotate(rotation)).eval()
    unembed = torch.randn(vocab, d, generator=gen)
    lm = LensModel(
        name="rotation", source="memory", architecture="test", model=model, tokenizer=None,
        blocks=model.blocks, norm=nn.Identity(), unembed=unembed, unembed_bias=None,
        embed=embed.weight, softcap=None, max_positions=None, takes_input_ids=False,
    )  # fmt: skip
    return lm, rotation


def test_the_translator_learns_a_known_rotation() -> None:
    """h_1 = R h_0 and the norm is the identity: the only exact translator of row 0 maps h
    to R h, i.e. I + A_0 = R; the fit must find it and bring the KL to about 0."""
    lm, rotation = rotation_model()
    lm.model.requires_grad_(False)
    lens = TunedLens.for_model(lm)
    head = F.Unembedding.of(lm, 16, torch.device("cpu"))
    ids = torch.randint(0, 40, (8, 12), generator=torch.Generator().manual_seed(1))
    before = F.held_out_kl(lm, None, ids, 4, head)[0].sum(0) / ids.numel()
    assert before[0] > 0.5 and before[1] < 1e-5  # the logit lens is far off at row 0
    # L-BFGS on the fit's own loss and gradient (train_step): the optimum is exact here
    opt = torch.optim.LBFGS(
        lens.parameters(), max_iter=100, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        return F.train_step(lm, lens, ids, 0, head).sum()

    opt.step(closure)
    after = F.held_out_kl(lm, lens, ids, 4, head)[0].sum(0) / ids.numel()
    assert after[0] < 1e-5
    learned = torch.eye(8) + lens.layer_translators[0].weight.detach()
    assert torch.allclose(learned, rotation, atol=0.01)
    assert lens.layer_translators[0].bias.detach().abs().max() < 0.01


FIT = ["--seq-len", "12", "--batch-size", "2", "--eval-seqs", "2", "--skip-tokens", "24",
       "--device", "cpu", "--lr", "0.01", "--checkpoint-every", "1"]  # fmt: skip


def test_fit_lens_end_to_end_and_resume(
    tiny_hf_dir: Path, tiny_text_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["fit-lens", "--model", str(tiny_hf_dir), "--data", str(tiny_text_file), *FIT]
    assert main([*base, "--steps", "4", "--out", str(tmp_path / "full")]) == 0
    out = capsys.readouterr().out
    assert "KL tuned" in out and f"tuned lens written to {tmp_path / 'full'}" in out
    files = sorted(p.name for p in (tmp_path / "full").iterdir() if not p.name.startswith("."))
    assert files == ["checksums.json", "config.json", "fit.json", "fit_lens.png", "params.pt"]
    result = FitLensResult.read(tmp_path / "full")
    assert result.training["steps"] == 4 and result.training["tokens"] == 4 * 2 * 12
    assert [r.layer for r in result.layers] == [0, 1, 2] and len(result.history) == 4
    assert result.layers[2].kl_tuned == result.layers[2].kl_logit  # row L: the model itself
    assert abs(result.layers[2].kl_logit) < 1e-4
    # the same run stopped by a signal after two steps, then resumed from its checkpoint
    args = dict(model=str(tiny_hf_dir), data=str(tiny_text_file), steps=4, seq_len=12,
                batch_size=2, eval_seqs=2, skip_tokens=24, device="cpu", lr=0.01,
                checkpoint_every=3, out=str(tmp_path / "cut"))  # fmt: skip
    calls = iter(range(100))
    code = fit_lens(FitConfig(**args), {}, stop=lambda: signal.SIGTERM if next(calls) == 1 else 0)
    assert code == 128 + signal.SIGTERM and (tmp_path / "cut" / CHECKPOINT_NAME).is_file()
    assert not (tmp_path / "cut" / "params.pt").exists()
    assert main(["fit-lens", "--resume", "--out", str(tmp_path / "cut"), "--lr", "0.1"]) == 2
    assert "--lr 0.1 differs from the run's 0.01" in capsys.readouterr().err
    assert main(["fit-lens", "--resume", "--out", str(tmp_path / "cut")]) == 0
    full, cut = (torch.load(tmp_path / d / "params.pt") for d in ("full", "cut"))
    for key in full:
        assert torch.allclose(full[key], cut[key], atol=1e-6), key
    resumed = FitLensResult.read(tmp_path / "cut")
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in result.history], rel=1e-5
    )
    assert main(["fit-lens", "--resume", "--out", str(tmp_path / "cut")]) == 2
    assert "finished lens: nothing to resume" in capsys.readouterr().err
    assert main([*base, "--steps", "1", "--out", str(tmp_path / "full")]) == 2
    assert "already holds a tuned lens" in capsys.readouterr().err


def test_fit_lens_from_python_then_analyze_through_it(
    tiny_hf_dir: Path, tiny_text_file: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    result = cs.fit_lens(
        model, tokenizer, out=tmp_path / "lens", data=str(tiny_text_file), steps=2,
        seq_len=12, batch_size=2, eval_seqs=2, skip_tokens=0, plots=False,
    )  # fmt: skip
    assert len(result.layers) == 3 and result.training["steps"] == 2
    assert all(p.requires_grad for p in model.parameters())  # the caller's flags are back
    assert json.loads((tmp_path / "lens" / "config.json").read_text())["num_hidden_layers"] == 2
    both = cs.measure(
        model, tokenizer, data=str(tiny_text_file), num_seqs=2, seq_len=12,
        lens=("logit", f"tuned:{tmp_path / 'lens'}"),
    )  # fmt: skip
    assert [m.lens_kind for m in both.result.models] == ["logit", "tuned"]
    with pytest.raises(cs.UserError, match="unknown option"):
        cs.fit_lens(model, tokenizer, out=tmp_path / "x", bogus=1)


def test_fit_json_round_trip_and_figure(tmp_path: Path) -> None:
    from causalshift.figures.fit_lens import plot_fit_lens
    from causalshift.results import FitLayerRow

    rows = [
        FitLayerRow(layer=0, kl_tuned=2.0, kl_logit=9.0, ci95={"kl_tuned": [1.5, 2.5]}),
        FitLayerRow(layer=1, kl_tuned=0.5, kl_logit=1.0),
        FitLayerRow(layer=2, kl_tuned=0.0, kl_logit=0.0),
    ]
    result = FitLensResult(model={"name": "m"}, layers=rows, history=[{"step": 1, "loss": 3.0}])
    result.write(tmp_path)
    back = FitLensResult.read(tmp_path)
    assert back == result and back.layers[0].ci95 == {"kl_tuned": [1.5, 2.5]}
    fig = plot_fit_lens(back, None)
    ax = fig.axes[0]
    assert [list(line.get_xdata()) for line in ax.lines] == [[0, 1], [0, 1]]  # not layer L
    assert [list(line.get_ydata()) for line in ax.lines] == [[9.0, 1.0], [2.0, 0.5]]
    assert plot_fit_lens(back, tmp_path / "f.png") == tmp_path / "f.png"
    assert plot_fit_lens(FitLensResult(), None) is None
