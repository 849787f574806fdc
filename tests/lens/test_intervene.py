"""Test-time residual attenuation (`causalshift intervene`): the hook's arithmetic against a
hand computation, alpha = 1 as the baseline, hooks removed after a run, and the command."""

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from causalshift.cli import main
from causalshift.lens.intervene import attenuated, intervene, next_token_stats
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
    assert runs[2].loss != baseline.loss  # alpha = 0 does change the model
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


def test_intervene_writes_files(tiny_gpt2, text_file, tmp_path):
    out = tmp_path / "out"
    args = ["--model", tiny_gpt2, "--data", text_file, "--num-seqs", "3", "--seq-len", "16"]
    code = main(["intervene", *map(str, args), "--alpha", "0,1", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "intervene.json").read_text())
    assert result["schema_version"] == 1
    assert set(result["baseline"]) == {"loss", "loss_ci95", "top1", "top1_ci95"}
    assert [(r["layer"], r["alpha"]) for r in result["runs"]] == [
        (1, 0.0),
        (1, 1.0),
        (2, 0.0),
        (2, 1.0),
    ]
    for r in result["runs"]:
        if r["alpha"] == 1.0:
            assert r["loss"] == result["baseline"]["loss"] and r["loss_increase"] == 0.0
    assert result["model"]["num_layers"] == 2
    rows = list(csv.DictReader((out / "intervene.csv").open()))
    assert len(rows) == 4 and float(rows[0]["loss"]) == result["runs"][0]["loss"]
    assert (out / "intervene.png").stat().st_size > 0


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
