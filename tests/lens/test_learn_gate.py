"""The gate learned on a frozen model (`causalshift intervene --learn-gate`): the training
gate's formula, exactness at A = 1 and for a one-hot gate, the gradient against finite
differences of a hand-run model, a frozen model left as it was, a constructed model where
only one block's cut helps, the command, its figure and the Python call."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from causalshift.cli import main
from causalshift.figures.learned_gate import plot_learned_gate
from causalshift.lens.intervene import attenuated, scaled_residuals, sequence_sums
from causalshift.lens.learn_gate import (
    FrozenGate,
    GateSettings,
    batch_indices,
    fit_gate,
    learn_gate,
)
from causalshift.lens.models import lens_model
from causalshift.testing import TINY_VOCAB, tiny_gpt2_folder, tiny_hf_model

TEXT = " ".join(f"The river number {i} flows past the old mill into the valley." for i in range(80))


def tiny_lens(family: str = "gpt2", seed: int = 0):
    return lens_model(tiny_hf_model(family, seed=seed), None, family, "test")


def tokens(seed: int = 0, n: int = 6, t: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY_VOCAB, (n, t), generator=g)


@torch.no_grad()
def logits(lm, ids):
    return lm.forward(ids).logits.float()


def test_gate_is_the_training_formula():
    """p = softmax(theta / tau), alpha_l = 1 - p_l (1 - A), by hand in float64; uniform
    at the start; exactly 1 everywhere when A = 1."""
    gate = FrozenGate(5, GateSettings(alpha=0.2, tau=0.5))
    assert torch.equal(gate.p(), torch.full((5,), 0.2))
    with torch.no_grad():
        gate.theta.copy_(torch.tensor([0.3, -1.0, 2.0, 0.0, 0.7]))
    theta = gate.theta.detach().double()
    p = torch.exp(theta / 0.5) / torch.exp(theta / 0.5).sum()
    torch.testing.assert_close(gate.p().double(), p, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gate.coefficients().double(), 1 - p * 0.8, rtol=1e-6, atol=1e-7)
    assert float(gate.p().detach().sum()) == pytest.approx(1.0, abs=1e-6)
    one = FrozenGate(5, GateSettings(alpha=1.0))
    with torch.no_grad():
        one.theta.copy_(torch.randn(5, generator=torch.Generator().manual_seed(1)) * 3)
    assert torch.equal(one.coefficients(), torch.ones(5))


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text"])
def test_gate_with_A_one_is_the_unchanged_model_and_one_hot_is_the_cut(family):
    lm = tiny_lens(family)
    ids = tokens(2)
    plain = logits(lm, ids)
    gate = FrozenGate(lm.num_layers, GateSettings(alpha=1.0))
    with torch.no_grad():
        gate.theta.copy_(torch.tensor([0.5, -2.0, 1.0]))
    with scaled_residuals(lm, gate.coefficients), torch.no_grad():
        assert torch.equal(logits(lm, ids), plain)
    one_hot = FrozenGate(lm.num_layers, GateSettings(alpha=0.3))
    with torch.no_grad():
        one_hot.theta.copy_(torch.tensor([-1e4, 0.0, -1e4]))  # p exactly (0, 1, 0)
    with scaled_residuals(lm, one_hot.coefficients), torch.no_grad():
        gated = logits(lm, ids)
    with attenuated(lm, 2, 0.3):
        assert torch.equal(gated, logits(lm, ids))
    assert all(not b._forward_hooks for b in lm.blocks)


def hand_loss(model, ids, alphas):
    """The tiny GPT-2's mean next-token loss with x_l = a_l x + (block_l(x) - x), blocks run
    by hand (no hooks)."""
    t = model.transformer
    x = t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))
    for a, block in zip(alphas, t.h, strict=True):
        out = block(x)
        out = out[0] if isinstance(out, tuple) else out
        x = a * x + (out - x)
    z = model.lm_head(t.ln_f(x))[:, :-1]
    return F.cross_entropy(z.transpose(1, 2), ids[:, 1:])


def fd_gradient(model, ids, settings, eps=1e-5):
    """d loss / d theta at theta = 0 by central differences on the hand-run model (float64)."""
    n = len(model.transformer.h)
    grads = []
    with torch.no_grad():
        for layer in range(n):
            values = []
            for sign in (1, -1):
                theta = torch.zeros(n, dtype=torch.float64)
                theta[layer] = sign * eps
                p = torch.softmax(theta / settings.tau, 0)
                values.append(float(hand_loss(model, ids, 1 - p * (1 - settings.alpha))))
            grads.append((values[0] - values[1]) / (2 * eps))
    return torch.tensor(grads, dtype=torch.float64)


def test_gradient_reaches_theta_as_finite_differences_say():
    """The autograd gradient through the hooks equals central differences of the loss of the
    blocks run by hand, and Adam's first step moves theta against it (mass goes where
    attenuating lowers the loss)."""
    lm = tiny_lens("gpt2", seed=3)
    with torch.no_grad():
        lm.model.transformer.wte.weight.mul_(20)  # logits large enough to differ by layer
    lm.model.double()
    ids = tokens(4, n=4, t=10)
    settings = GateSettings(alpha=0.0, tau=1.0, steps=1, lr=0.01, batch_size=4)
    expected = fd_gradient(lm.model, ids, settings)
    gate = FrozenGate(lm.num_layers, settings)
    with scaled_residuals(lm, lambda: gate.coefficients().double()):
        nll = F.cross_entropy(
            lm.forward(ids).logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="mean"
        )
        nll.backward()
    torch.testing.assert_close(gate.theta.grad.double(), expected, rtol=1e-4, atol=1e-7)
    assert expected.abs().min() > 1e-6  # every coordinate has a sign
    fit = fit_gate(lm, ids, settings)
    # Adam's first step is lr * g / (|g| + eps): -lr * sign(g) here.
    torch.testing.assert_close(fit.theta, -0.01 * torch.sign(expected).float(), rtol=1e-3, atol=0)


def test_fit_leaves_the_model_as_it_was():
    lm = tiny_lens("llama")
    lm.model.train()  # the user's model in training mode, weights requiring grad
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    flags = [p.requires_grad for p in lm.model.parameters()]
    fit = fit_gate(lm, tokens(5, n=5), GateSettings(steps=4, lr=0.5, batch_size=2))
    after = lm.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # bitwise
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    assert all(p.grad is None for p in lm.model.parameters())  # the gradient went to theta
    assert lm.model.training
    assert all(not b._forward_hooks for b in lm.blocks)
    assert [h["step"] for h in fit.history] == [1, 2, 3, 4]
    for h in fit.history:
        assert math.fsum(h["p"]) == pytest.approx(1.0, abs=1e-6) and len(h["p"]) == 3
        assert math.isfinite(h["train_loss"])
    assert fit.history[-1]["p"] != pytest.approx([1 / 3] * 3, abs=1e-3)  # p moved
    assert fit.p.tolist() == fit.history[-1]["p"]


def test_batch_indices_cycle_through_epochs():
    batches = batch_indices(5, 2, 5, seed=0)
    assert [len(b) for b in batches] == [2] * 5
    first, second = torch.cat(batches[:2]), torch.cat(batches[2:4])
    assert len(set(first.tolist())) == 4 and len(set(second.tolist())) == 4
    assert [len(b) for b in batch_indices(3, 8, 2, seed=0)] == [3, 3]


def test_the_gate_finds_the_one_block_whose_cut_helps():
    """A constructed model: large embeddings make every position predict its own token, and
    block 2 adds a large constant vote for token 7; only a cut at block 3 drops both (a cut
    at 1 or 2 keeps block 2's vote). The cut losses, measured directly, say block 3; the
    gate, fitted on other windows, must put its mass there and lower the held-out loss."""
    lm = tiny_lens("gpt2")
    t = lm.model.transformer
    with torch.no_grad():
        t.wte.weight.mul_(30)
        t.h[1].mlp.c_proj.bias.copy_(t.wte.weight[7])
    g = torch.Generator().manual_seed(0)
    fit_ids = torch.randint(8, TINY_VOCAB, (16, 16), generator=g)
    held = torch.randint(8, TINY_VOCAB, (8, 16), generator=g)
    cuts = []
    for layer in (1, 2, 3):
        with attenuated(lm, layer, 0.0):
            cuts.append(sequence_sums(lm, held, 8).stats().loss)
    assert cuts[2] < min(cuts[:2]) - 5  # the construction: only block 3's cut helps
    doc = learn_gate(lm, fit_ids, held, GateSettings(alpha=0.0, steps=30, lr=0.2, batch_size=4))
    p = doc["gate"]["p"]
    assert doc["gate"]["argmax_layer"] == 3 and p[2] > 0.9
    change = doc["heldout"]["after_minus_before"]
    assert change["loss_ci95"][1] < 0  # lower, with a paired interval below zero
    assert doc["heldout"]["argmax_cut"]["loss"] == pytest.approx(cuts[2])
    first, last = doc["history"][0]["train_loss"], doc["history"][-1]["train_loss"]
    assert last < first - 5


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return tiny_gpt2_folder(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_command_writes_learn_gate_json_and_figure(tiny_gpt2, text_file, tmp_path):
    out = tmp_path / "out"
    args = ["--model", tiny_gpt2, "--data", text_file, "--num-seqs", "3", "--seq-len", "16"]
    extra = ["--learn-gate", "--steps", "3", "--eval-seqs", "2", "--with-lens", "--lr", "0.3"]
    assert main(["intervene", *map(str, args), *extra, "--out", str(out)]) == 0
    assert not (out / "intervene.json").exists()
    doc = json.loads((out / "learn_gate.json").read_text())
    gate = doc["gate"]
    assert gate["alpha"] == 0.5 and gate["tau"] == 1.0 and len(gate["p"]) == 2
    assert math.fsum(gate["p"]) == pytest.approx(1.0, abs=1e-6)
    assert gate["p_init"] == [0.5, 0.5]
    assert [1 - p * 0.5 for p in gate["p"]] == pytest.approx(gate["coefficients"])
    assert len(doc["history"]) == 3 and doc["fit"]["num_sequences"] == 3
    held = doc["heldout"]
    assert set(held["unchanged"]["shift_layer"]) == {"input_until", "output_from", "crossover"}
    assert "shift_layer" in held["after"]  # --with-lens: the lens under the learned gate
    change = held["after_minus_before"]["loss"]
    assert change == pytest.approx(held["after"]["loss"] - held["before"]["loss"])
    assert doc["data"]["num_sequences"] == 5 and doc["config"]["alpha"] == [0.5]
    assert (out / "gate_p.png").stat().st_size > 0


def test_python_call_gives_the_command_numbers(tiny_gpt2, text_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import causalshift as cs

    out = tmp_path / "out"
    args = ["--model", tiny_gpt2, "--data", text_file, "--num-seqs", "3", "--seq-len", "16"]
    assert (
        main(["intervene", *map(str, args), "--learn-gate", "--steps", "2", "--out", str(out)]) == 0
    )
    cli = json.loads((out / "learn_gate.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    doc = cs.intervene(
        model,
        AutoTokenizer.from_pretrained(tiny_gpt2),
        data=str(text_file),
        num_seqs=3,
        seq_len=16,
        learn_gate=True,
        steps=2,
    )
    assert doc["gate"] == cli["gate"] and doc["heldout"] == cli["heldout"]
    assert all(p.requires_grad for p in model.parameters())  # handed back as it came


def test_figure_draws_final_p_and_history():
    doc = {
        "gate": {"alpha": 0.5, "tau": 1.0, "p": [0.1, 0.2, 0.7], "p_init": [1 / 3] * 3},
        "history": [{"step": 1, "p": [0.3, 0.3, 0.4]}, {"step": 2, "p": [0.1, 0.2, 0.7]}],
        "heldout": {"unchanged": {"shift_layer": {"input_until": 1, "output_from": 3}}},
        "model": {"name": "m"},
    }
    fig = plot_learned_gate(doc, None)
    bars, heat = fig.axes[0], fig.axes[1]
    assert [round(r.get_height(), 3) for r in bars.patches] == [0.1, 0.2, 0.7]
    vertical = sorted(line.get_xdata()[0] for line in bars.lines if len(set(line.get_xdata())) == 1)
    assert vertical == [1, 3]
    grid = heat.images[0].get_array()
    assert grid.shape == (3, 3)  # blocks x (start + 2 steps)
    assert grid[2, 2] == pytest.approx(0.7) and grid[0, 0] == pytest.approx(1 / 3)
