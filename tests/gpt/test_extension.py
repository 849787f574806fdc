"""A toy residual mode added the way docs/architecture.md says: one class, `@register`.

Nothing else is edited: config validation, the GPT, its optimizer groups, re-initialisation,
the HF class, report labels and order, run names all pick the mode up from the registry.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from causalshift.errors import UserError
from causalshift.gpt.config import GPTConfig, ResidualConfig
from causalshift.gpt.model import GPT
from causalshift.gpt.residual import (
    MODES,
    ResidualMode,
    label_order,
    learned_modes,
    mode_choices,
    register,
    residual_parameter_names,
)

VOCAB = 61


@pytest.fixture
def toy() -> Iterator[type[ResidualMode]]:
    """Registers the toy mode for one test (a real mode is registered at import time)."""

    @register
    class Toy(ResidualMode):
        """`toy`: alpha_l = A + (1 - A) sigmoid(w_l), w learned, init 0: (1 + A) / 2."""

        name, order, learned = "toy", 5, True
        help = "alpha_l = A + (1 - A) sigmoid(w_l); w learned, init 0"

        @classmethod
        def label(cls, cut_layer: int | None, alpha: object) -> str:
            return f"toy A={alpha:g}"

        def initial_parameters(self) -> dict[str, torch.Tensor]:
            return {"w": torch.zeros(self.n_layer)}

        def expected_coefficients(self, r) -> torch.Tensor:
            return self.alpha + (1.0 - self.alpha) * r.w.sigmoid()

    yield Toy
    del MODES["toy"]


def config(mode: str, **res) -> GPTConfig:
    return GPTConfig(
        n_layer=3,
        n_head=2,
        n_embd=16,
        block_size=8,
        vocab_size=VOCAB,
        residual=ResidualConfig(mode, **res),
    )


def test_toy_mode_is_registered(toy):
    assert "toy" in MODES and mode_choices().endswith("| toy")
    assert "toy" in learned_modes()
    with pytest.raises(UserError, match="--cut-layer applies to residual mode 'fixed'"):
        ResidualConfig("toy", cut_layer=1)
    with pytest.raises(ValueError, match="already registered"):
        register(type("Other", (ResidualMode,), {"name": "toy"}))


def test_toy_mode_trains(toy):
    torch.manual_seed(0)
    m = GPT(config("toy", alpha=0.5)).train()
    assert residual_parameter_names(m) == {"residual.w"}
    groups = {g["name"]: g["params"] for g in m.param_groups(0.1, 1e-3, 1e-2)}
    assert [p for p in groups["residual"]] == [m.residual.w]
    torch.testing.assert_close(m.residual.coefficients(), torch.full((3,), 0.75))
    idx = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    _, loss = m(idx, idx)
    loss.backward()
    assert m.residual.w.grad is not None and m.residual.w.grad.abs().sum() > 0
    opt = m.configure_optimizer(0.1, 1e-3, (0.9, 0.95), 1e-1, "cpu")
    opt.step()
    assert not torch.equal(m.residual.w, torch.zeros(3))
    m.residual.reset_parameters()  # the re-initialisation GPT and HF share
    assert torch.equal(m.residual.w, torch.zeros(3))


def test_toy_alphas_are_used(toy):
    """At init the toy's alpha is 0.75 in every block: a scalar model set to 0.75 agrees."""
    torch.manual_seed(0)
    m = GPT(config("toy", alpha=0.5)).eval()
    ref = GPT(config("scalar")).eval()
    ref.load_state_dict(m.state_dict(), strict=False)
    with torch.no_grad():
        ref.residual.alpha.fill_(0.75)
    idx = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(m(idx)[0], ref(idx)[0], atol=0, rtol=0)
        assert not torch.equal(m(idx)[0], GPT(config("none")).eval()(idx)[0])


def test_toy_label_order_and_slug(toy):
    from causalshift.results import mode_label, run_info

    cfg = {"model": {"n_layer": 3, "residual": {"mode": "toy", "alpha": 0.5}}}
    assert mode_label(run_info(cfg)) == "toy A=0.5"
    assert label_order("toy A=0.5") == 5 and label_order("scalar") == 4
    assert toy.slug(None, 0.5) == "toy"


def test_toy_mode_exports_to_hf(toy, tmp_path):
    """The HF class borrows the GPT's modules and re-initialises through the mode."""
    transformers = pytest.importorskip("transformers")
    from causalshift.evaluate.export import export_model
    from causalshift.testing import tiny_gpt

    m = tiny_gpt("toy", alpha=0.25)
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_model(m, tmp_path, False))
    idx = torch.randint(0, 50257, (1, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=idx).logits, m(idx)[0], atol=0, rtol=0)
