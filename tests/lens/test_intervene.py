"""Test-time residual attenuation (`causalshift intervene`): the hook's arithmetic against a
hand computation, alpha = 1 as the baseline, hooks removed after a run, the lens under an
attenuation (--with-lens) and its shift-layer marks, paired intervals, and the command."""

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from causalshift.cli import main
from causalshift.figures.intervene import plot_intervene
from causalshift.lens.engine import residual_stream
from causalshift.lens.intervene import (
    attenuated,
    intervene,
    next_token_stats,
    paired_change,
    scaled_residuals,
    sequence_sums,
)
from causalshift.lens.models import lens_model
from causalshift.testing import TINY_VOCAB, tiny_gpt, tiny_gpt2_folder, tiny_hf_model

FAMILIES = ("gpt2", "llama", "qwen3", "gemma2", "gemma3_text")
TEXT = " ".join(f"The river number {i} flows past the old mill into the valley." for i in range(80))


def tokens(seed: int = 0, n: int = 5, t: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY_VOCAB, (n, t), generator=g)


def tiny_lens(family: str):
    if family == "causalshift_gpt":
        model = tiny_gpt(vocab_size=TINY_VOCAB)
    else:
        model = tiny_hf_model(family)
    return lens_model(model, None, family, "test")


@torch.no_grad()
def logits(lm, ids):
    out = lm.forward(ids)
    return (out.logits if hasattr(out, "logits") else out[0]).float()


@pytest.mark.parametrize("family", [*FAMILIES, "causalshift_gpt"])
def test_alpha_one_is_baseline_and_hooks_are_removed(family):
    lm = tiny_lens(family)
    ids = tokens()
    before = logits(lm, ids)
    params = {k: v.clone() for k, v in lm.model.state_dict().items()}
    baseline, runs = intervene(lm, ids, [(1, 1.0), (lm.num_layers, 1.0), (2, 0.0)], batch_size=2)
    assert runs[0] == baseline and runs[1] == baseline  # exactly, not approximately
    assert runs[2].sums.stats().loss != baseline.sums.stats().loss  # alpha = 0 does change it
    assert all(not b._forward_hooks for b in lm.blocks)
    assert torch.equal(logits(lm, ids), before)
    after = lm.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in params.items())


def test_hook_removed_after_an_error():
    lm = tiny_lens("llama")
    with pytest.raises(RuntimeError), attenuated(lm, 2, 0.5):
        raise RuntimeError("inside")
    assert all(not b._forward_hooks for b in lm.blocks)
    with pytest.raises(ValueError):
        with attenuated(lm, lm.num_layers + 1, 0.5):
            pass


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_gpt2_matches_blocks_run_by_hand(alpha):
    """x_{l+1} = alpha * x_l + (block_l(x_l) - x_l) at the attenuated block, blocks by hand."""
    lm = tiny_lens("gpt2")
    ids = tokens(1)
    t = lm.model.transformer
    with torch.no_grad():
        x = t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))
        for i, block in enumerate(t.h, start=1):
            out = block(x)
            out = out[0] if isinstance(out, tuple) else out
            x = alpha * x + (out - x) if i == 2 else out
        expected = lm.model.lm_head(t.ln_f(x))
        plain = logits(lm, ids)
        with attenuated(lm, 2, alpha):
            got = logits(lm, ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, plain)


def gpt2_states_by_hand(lm, ids, alphas):
    """The residual stream [x_0, ..., x_L] of the tiny GPT-2, x_l = a_l x + (block_l(x) - x)."""
    t = lm.model.transformer
    with torch.no_grad():
        x = t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))
        states = [x]
        for a, block in zip(alphas, t.h, strict=True):
            out = block(x)
            out = out[0] if isinstance(out, tuple) else out
            x = a * x + (out - x)
            states.append(x)
    return states


def test_the_lens_capture_sees_the_attenuated_stream():
    """The attenuation hook is registered before the lens' capture hooks (forward hooks run
    in registration order, each seeing the output the previous one returned): the states the
    lens decodes are the attenuated ones, at the attenuated block and after it."""
    lm = tiny_lens("gpt2")
    ids = tokens(2)
    with attenuated(lm, 2, 0.25):
        got = residual_stream(lm, ids)
    expected = gpt2_states_by_hand(lm, ids, [1.0, 0.25, 1.0])
    plain = residual_stream(lm, ids)
    for layer, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        assert torch.equal(g, plain[layer]) == (layer < 2)  # unchanged before block 2 only
    assert all(not b._forward_hooks for b in lm.blocks)


@pytest.mark.parametrize("family", [*FAMILIES, "causalshift_gpt"])
def test_scaled_residuals_matches_one_block_and_baseline_exactly(family):
    """A coefficient vector that is 1 except at block l equals `attenuated(l, a)` bit for bit;
    all ones equals the unchanged model; every hook goes at the end."""
    lm = tiny_lens(family)
    ids = tokens(4)
    plain = logits(lm, ids)
    coef = torch.ones(lm.num_layers)
    with scaled_residuals(lm, lambda: coef):
        assert torch.equal(logits(lm, ids), plain)
    coef = torch.ones(lm.num_layers)
    coef[1] = 0.3
    with attenuated(lm, 2, 0.3):
        one = logits(lm, ids)
    with scaled_residuals(lm, lambda: coef):
        assert torch.equal(logits(lm, ids), one)
    assert all(not b._forward_hooks for b in lm.blocks)


def test_scaled_residuals_by_hand():
    lm = tiny_lens("gpt2")
    ids = tokens(5)
    coef = torch.tensor([0.5, 0.0, 0.8])
    with scaled_residuals(lm, lambda: coef):
        got = residual_stream(lm, ids)
    for g, e in zip(got, gpt2_states_by_hand(lm, ids, coef.tolist()), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_paired_change_by_hand():
    lm = tiny_lens("llama")
    ids = tokens(6, n=6, t=10)
    base = sequence_sums(lm, ids, 4)
    with attenuated(lm, 2, 0.0):
        cut = sequence_sums(lm, ids, 4)
    d = (cut.loss - base.loss) / cut.counts  # per-sequence differences of means
    half = 1.96 * float(d.std()) / math.sqrt(6)
    change = paired_change(cut, base)
    assert change["loss"] == pytest.approx(float(d.mean()))
    assert change["loss_ci95"] == pytest.approx([float(d.mean()) - half, float(d.mean()) + half])
    assert change["loss"] == pytest.approx(cut.stats().loss - base.stats().loss)


@pytest.mark.parametrize("bos", [False, True])
def test_next_token_stats_by_hand(bos):
    lm = tiny_lens("llama")
    ids = tokens(3, n=4, t=10)
    if bos:
        ids[:, 0] = 5
        lm.tokenizer = SimpleNamespace(bos_token_id=5)
    s = 1 if bos else 0
    z = logits(lm, ids)[:, s:-1]
    target = ids[:, s + 1 :]
    nll = F.cross_entropy(z.transpose(1, 2), target, reduction="none")
    hit = (z.argmax(-1) == target).double()
    stats = next_token_stats(lm, ids, batch_size=3)
    assert stats.loss == pytest.approx(float(nll.mean()), rel=1e-6)
    assert stats.top1 == pytest.approx(float(hit.mean()))
    per_seq = nll.double().mean(1)
    half = 1.96 * float(per_seq.std()) / math.sqrt(4)
    assert stats.loss_ci95 == pytest.approx((float(nll.mean()) - half, float(nll.mean()) + half))


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return tiny_gpt2_folder(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def shift_of_analyze(model, text_file, out, num_seqs, seq_len):
    """The shift layers `causalshift analyze` finds on the same windows (batch 8, top-1,5)."""
    args = ["--model", model, "--data", text_file, "--num-seqs", num_seqs, "--seq-len", seq_len]
    assert main(["analyze", *map(str, args), "--no-plots", "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())["models"][0]["shift_layer"]


def test_intervene_writes_files(tiny_gpt2, text_file, tmp_path):
    out = tmp_path / "out"
    args = ["--model", tiny_gpt2, "--data", text_file, "--num-seqs", "3", "--seq-len", "16"]
    code = main(["intervene", *map(str, args), "--alpha", "0,1", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "intervene.json").read_text())
    assert result["schema_version"] == 1
    base = result["baseline"]
    assert set(base) == {"loss", "loss_ci95", "top1", "top1_ci95", "shift_layer"}
    assert base["shift_layer"] == shift_of_analyze(tiny_gpt2, text_file, tmp_path / "a", 3, 16)
    assert [(r["layer"], r["alpha"]) for r in result["runs"]] == [
        (1, 0.0),
        (1, 1.0),
        (2, 0.0),
        (2, 1.0),
    ]
    for r in result["runs"]:
        assert "shift_layer" not in r  # the lens ran once, on the unchanged model
        if r["alpha"] == 1.0:
            assert r["loss"] == base["loss"] and r["loss_increase"] == 0.0
            assert r["loss_increase_ci95"] == [0.0, 0.0]
        lo, hi = r["loss_increase_ci95"]
        assert lo <= r["loss_increase"] <= hi
    assert result["model"]["num_layers"] == 2
    rows = list(csv.DictReader((out / "intervene.csv").open()))
    assert len(rows) == 4 and float(rows[0]["loss"]) == result["runs"][0]["loss"]
    assert float(rows[0]["loss_increase_hi"]) == result["runs"][0]["loss_increase_ci95"][1]
    assert "output_from" not in rows[0]
    assert (out / "intervene.png").stat().st_size > 0


def test_with_lens_stores_each_runs_shift_layers(tiny_gpt2, text_file, tmp_path):
    """--with-lens: alpha = 1 gives the plain lens' shift layers; alpha = 0 at block 1 is
    the lens of the attenuated model (checked against the engine run inside the hook)."""
    out = tmp_path / "out"
    args = ["--model", tiny_gpt2, "--data", text_file, "--num-seqs", "3", "--seq-len", "16"]
    code = main(["intervene", *map(str, args), "--alpha", "0,1", "--with-lens", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "intervene.json").read_text())
    plain = shift_of_analyze(tiny_gpt2, text_file, tmp_path / "a", 3, 16)
    assert result["baseline"]["shift_layer"] == plain
    for r in result["runs"]:
        assert set(r["shift_layer"]) == {"input_until", "output_from", "crossover"}
        if r["alpha"] == 1.0:
            assert r["shift_layer"] == plain
    rows = list(csv.DictReader((out / "intervene.csv").open()))
    cut = result["runs"][0]["shift_layer"]
    assert rows[0]["input_until"] == ("" if cut["input_until"] is None else str(cut["input_until"]))


def test_api_marks_shift_layers_and_runs_lens_under_the_hook(monkeypatch):
    """cs.intervene with with_lens: the lens is called once per run, inside the attenuation
    (every block hook in place while it runs), and once on the unchanged model."""
    import causalshift as cs
    import causalshift.lens.intervene_command as ic

    lm = tiny_lens("llama")
    lm.tokenizer = SimpleNamespace(bos_token_id=None)
    seen = []

    def fake_shift_lens(cfg, lm_, toks, progress=False):
        def shift():
            seen.append([len(b._forward_hooks) for b in lm_.blocks])
            return {"input_until": 0, "output_from": len(seen), "crossover": 1}

        return shift

    monkeypatch.setattr(ic, "shift_lens", fake_shift_lens)
    monkeypatch.setattr(ic, "_windows", lambda cfg, lm_, n, progress: tokens(7, n=n, t=8))
    doc = cs.intervene(lm, None, num_seqs=3, seq_len=8, layers=[2], alpha=[0.0, 0.5])
    assert seen == [[0, 0, 0]]
    assert doc["baseline"]["shift_layer"]["output_from"] == 1
    seen.clear()
    doc = cs.intervene(
        lm, None, num_seqs=3, seq_len=8, layers=[2], alpha=[0.0, 0.5], with_lens=True
    )
    assert seen == [[0, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert [r["shift_layer"]["output_from"] for r in doc["runs"]] == [2, 3]


def test_figure_marks_the_shift_layers():
    runs = [
        {"layer": layer, "alpha": a, "loss_increase": 0.1 * layer, "loss_increase_ci95": [0, 1]}
        for layer in (1, 2, 3)
        for a in (0.0, 0.5)
    ]
    shift = {"input_until": 0, "crossover": None, "output_from": 2}
    fig = plot_intervene(runs, None, model="m", shift_layer=shift)
    ax = fig.axes[0]
    vertical = sorted(line.get_xdata()[0] for line in ax.lines if len(set(line.get_xdata())) == 1)
    assert vertical == [0, 2]  # input_until and output_from; crossover is null
    labels = ax.get_legend_handles_labels()[1]
    assert "lens output_from = 2" in labels and "lens input_until = 0" in labels
    assert len(ax.collections) == 2  # one interval band per alpha


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layers", "3"], "--layers: 3 is not a block"),
        (["--layers", "0"], "--layers: 0 is not a block"),
        (["--alpha", "-0.5"], "--alpha must be >= 0"),
        (["--alpha", "nan"], "--alpha must be a finite number"),
        (["--alpha", "0,inf"], "--alpha must be a finite number"),
        (["--alpha", "x"], "expected comma-separated numbers"),
        (["--layers", "1,a"], "expected all or comma-separated layers"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_gpt2, text_file, tmp_path, capsys, extra, message):
    args = ["--model", tiny_gpt2, "--data", text_file, "--num-seqs", "2", "--seq-len", "8"]
    try:
        code = main(["intervene", *map(str, args), *extra, "--out", str(tmp_path / "o")])
    except SystemExit as e:  # argparse rejects a malformed list before `run`
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]]
    assert lines[-1].startswith("causalshift intervene: error: ") and message in lines[-1]
    assert not (tmp_path / "o" / "intervene.json").exists()
