"""Residual strategies: exact formulas, equivalences between modes, gradients, validation."""

from __future__ import annotations

import pytest
import torch

from causalshift.errors import UserError
from causalshift.gpt import GPT, GPTConfig, ResidualConfig, build_residual
from causalshift.gpt.residual import residual_parameter_names

VOCAB = 97


def cfg(mode: str = "none", n_layer: int = 4, **res) -> GPTConfig:
    return GPTConfig(
        n_layer=n_layer,
        n_head=2,
        n_embd=32,
        block_size=16,
        vocab_size=VOCAB,
        residual=ResidualConfig(mode=mode, **res),
    )


def same_weights(mode: str, **res) -> GPT:
    """A model of `mode` with the weights of the seed-0 baseline."""
    torch.manual_seed(0)
    base = GPT(cfg())
    m = GPT(cfg(mode, **res))
    m.load_state_dict(base.state_dict(), strict=False)
    return m.eval()


def logits(m: GPT) -> torch.Tensor:
    idx = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return m(idx)[0]


def test_none_and_fixed_coefficients():
    assert build_residual(ResidualConfig(), 3).coefficients().tolist() == [1, 1, 1]
    r = build_residual(ResidualConfig("fixed", cut_layer=2, alpha=0.25), 3)
    assert r.coefficients().tolist() == [1, 0.25, 1]
    assert list(r.parameters()) == [] and r.gate_p() is None
    assert r.state_dict() == {}  # derived from the config, not stored


def test_fixed_alpha_one_equals_none():
    torch.testing.assert_close(
        logits(same_weights("fixed", cut_layer=3, alpha=1.0)), logits(same_weights("none")),
        atol=0, rtol=0,
    )  # fmt: skip


def test_fixed_cut_changes_output():
    cut = logits(same_weights("fixed", cut_layer=3))
    assert not torch.allclose(cut, logits(same_weights("none")))


def test_fixed_cut_erases_history():
    """With a full cut at block K, the stream after K is F_K(x): the tokens before K's input
    reach the output only through F_K. Cutting at layer 1 drops the raw embeddings."""
    m = same_weights("fixed", cut_layer=1, alpha=0.0)
    idx = torch.randint(0, VOCAB, (1, 8))
    x = m.embed(idx)
    blk = m.transformer.h[0]
    want = blk.attn(blk.ln_1(x))
    want = want + blk.mlp(blk.ln_2(want))
    torch.testing.assert_close(m.hidden_states(idx)[1], want)


def test_gate_formula_and_init():
    r = build_residual(ResidualConfig("gate", alpha=0.2, tau=0.5), 4)
    assert dict(r.named_parameters()).keys() == {"theta"}
    torch.testing.assert_close(r.gate_p(), torch.full((4,), 0.25))
    with torch.no_grad():
        r.theta.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
    p = torch.softmax(r.theta / 0.5, 0)
    torch.testing.assert_close(r.gate_p(), p)
    torch.testing.assert_close(r.coefficients(), 1 - p * 0.8)
    torch.testing.assert_close(r.expected_coefficients(), r.coefficients())


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_one_hot_gate_equals_fixed(alpha):
    gate = same_weights("gate", alpha=alpha, tau=0.01)
    with torch.no_grad():
        gate.residual.theta.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0]))  # p = one-hot on K = 3
    assert gate.residual.gate_p()[2] == 1.0
    fixed = same_weights("fixed", cut_layer=3, alpha=alpha)
    torch.testing.assert_close(logits(gate), logits(fixed), atol=1e-6, rtol=1e-6)


def test_gradient_reaches_theta():
    m = GPT(cfg("gate")).train()
    idx = torch.randint(0, VOCAB, (2, 10))
    _, loss = m(idx, idx)
    loss.backward()
    g = m.residual.theta.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert residual_parameter_names(m) == {"residual.theta"}


def test_gate_hard_training_is_one_hot_with_gradient():
    m = GPT(cfg("gate-hard", alpha=0.1)).train()
    with torch.no_grad():
        m.residual.theta.copy_(torch.tensor([0.5, -0.2, 0.1, 0.3]))
    seen = set()
    for step in range(40):
        m.residual.begin_step(step, seed=7)
        a = m.residual.coefficients()
        assert (a == torch.tensor(0.1)).sum() == 1 and (a == 1.0).sum() == 3
        seen.add(int(a.argmin()))
    assert len(seen) > 1  # the cut is sampled, not fixed
    # the same (seed, step) draws the same cut; micro-batches of one step agree
    m.residual.begin_step(5, seed=7)
    a1 = m.residual.coefficients()
    a2 = m.residual.coefficients()
    m.residual.begin_step(5, seed=7)
    torch.testing.assert_close(a1, m.residual.coefficients())
    torch.testing.assert_close(a1, a2)
    idx = torch.randint(0, VOCAB, (2, 10))
    _, loss = m(idx, idx)
    loss.backward()
    g = m.residual.theta.grad
    assert g is not None and g.abs().sum() > 0
    # eval: the expected alpha, i.e. the soft gate formula
    m.eval()
    p = torch.softmax(m.residual.theta, 0)
    torch.testing.assert_close(m.residual.coefficients(), 1 - p * 0.9)


def test_gate_hard_without_begin_step_samples_fresh():
    r = build_residual(ResidualConfig("gate-hard"), 6).train()
    cuts = {int(r.coefficients().argmin()) for _ in range(50)}
    assert len(cuts) > 1


def test_gate_hard_samples_follow_p():
    r = build_residual(ResidualConfig("gate-hard"), 3).train()
    with torch.no_grad():
        r.theta.copy_(torch.log(torch.tensor([0.7, 0.2, 0.1])))
    counts = torch.zeros(3)
    for step in range(2000):
        r.begin_step(step)
        counts[int(r.coefficients().argmin())] += 1
    freq = counts / counts.sum()
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.04, rtol=0)


def test_scalar_init_equals_none_and_learns():
    m = same_weights("scalar")
    assert residual_parameter_names(m) == {"residual.alpha"}
    torch.testing.assert_close(logits(m), logits(same_weights("none")), atol=0, rtol=0)
    m.train()
    idx = torch.randint(0, VOCAB, (2, 10))
    m(idx, idx)[1].backward()
    assert m.residual.alpha.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mode="cut"), "unknown residual mode"),
        (dict(mode="fixed", cut_layer=1, alpha=-0.1), "alpha must be >= 0"),
        (dict(mode="gate", alpha=-1.0), "alpha must be >= 0"),
        (dict(mode="fixed"), "needs a cut layer"),
        (dict(mode="gate", tau=0.0), "tau must be > 0"),
    ],
)
def test_residual_config_validation(kwargs, message):
    with pytest.raises(UserError, match=message):
        ResidualConfig(**kwargs)


def test_cut_layer_range():
    with pytest.raises(UserError, match=r"cut layer 13 is out of range 1\.\.12"):
        GPTConfig(residual=ResidualConfig("fixed", cut_layer=13))
    with pytest.raises(UserError, match="out of range"):
        cfg("fixed", cut_layer=0)
    with pytest.raises(UserError, match="not divisible"):
        GPTConfig(n_embd=100, n_head=12)
