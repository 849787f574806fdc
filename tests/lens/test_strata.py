"""Stratified curves: membership by hand, each family a partition of the positions, and the
per-stratum sums of a real run adding up to the whole run's."""

import pytest
import torch

from causalshift.lens import engine
from causalshift.lens.models import lens_model
from causalshift.lens.strata import earlier_occurrence, model_strata, stratify
from causalshift.testing import tiny_hf_model


def test_earlier_occurrence_by_hand():
    tokens = torch.tensor([[5, 3, 5, 7, 3, 3], [1, 2, 3, 4, 5, 1]])
    expected = torch.tensor([[0, 0, 1, 0, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(earlier_occurrence(tokens), expected)


def test_strata_by_hand():
    # s = 1 (a BOS column, 0): positions i = 1..6, outputs t_2..t_7
    tokens = torch.tensor([[0, 4, 9, 4, 9, 9, 8, 4]])
    strata = stratify(tokens, 1)
    names = [s.name for s in strata.strata]
    assert names == [
        "freq_low",
        "freq_mid",
        "freq_high",
        "pos_q1",
        "pos_q2",
        "pos_q3",
        "pos_q4",
        "new",
        "copyable",
    ]
    member = strata.member[0]  # (P, G)
    # outputs 9 4 9 9 8 4; counts in t_1..t_7: 4 -> 3, 9 -> 3, 8 -> 1
    copyable = member[:, names.index("copyable")]
    assert copyable.tolist() == [0, 1, 1, 1, 0, 1]  # t_(i+1) seen at j <= i
    pos = member[:, 3:7].argmax(1)
    assert pos.tolist() == [0, 0, 1, 2, 2, 3]  # 6 positions in 4 equal-width bins
    for lo, hi in ((0, 3), (3, 7), (7, 9)):  # each family is a partition
        assert torch.equal(member[:, lo:hi].sum(1), torch.ones(6))
    assert strata.strata[3].definition == "positions i = 1..2"


def test_frequency_bins_by_hand():
    tokens = torch.tensor([[7, 1, 2, 2, 3, 3, 3]])  # no BOS: s = 0, outputs 1 2 2 3 3 3
    strata = stratify(tokens, 0)
    # counts 1, 2, 3: cumulative shares 1/6, 3/6, 6/6 -> edges 1 and 2
    assert strata.member[0, :, :3].argmax(1).tolist() == [0, 1, 1, 2, 2, 2]
    assert [s.definition for s in strata.strata[:3]] == [
        f"t_(i+1) occurs {lo}..{hi} times in the text" for lo, hi in ((1, 1), (2, 2), (3, 3))
    ]


def test_frequency_bins_hold_a_third_each_without_ties():
    tokens = torch.arange(1, 31).repeat_interleave(torch.arange(1, 31))[None, :]  # k times k
    strata = stratify(tokens[:, :301], 0)
    sizes = strata.member[0, :, :3].sum(0)
    assert sizes.sum() == 300
    assert all(abs(float(n) - 100) < 30 for n in sizes)  # ties only at bin edges


@pytest.mark.parametrize("targets", [("input", "output"), ("input", "output", "next2")])
def test_strata_sums_add_up_to_the_run(targets):
    lm = lens_model(tiny_hf_model("llama"), tokenizer=None, name="llama", source="config")
    tokens = torch.randint(0, 20, (5, 24), generator=torch.Generator().manual_seed(3))
    run = engine.run_lens(
        lm,
        tokens,
        topk=(1, 3),
        compute_dtype=torch.float32,
        progress=False,
        batch_size=2,
        targets=targets,
    )
    acc, strata = run.accumulator, run.strata
    assert strata is not None and strata.names == acc.names
    for lo, hi in ((0, 3), (3, 7), (7, 9)):
        assert torch.allclose(strata.sums[:, :, lo:hi].sum(2), acc.sums, atol=1e-4)
        assert torch.equal(strata.counts[:, lo:hi].sum(1), acc.counts)
    records = model_strata(run.strata, 3)
    assert [r.family for r in records] == ["frequency"] * 3 + ["position"] * 4 + ["copy"] * 2
    total = sum(r.num_positions for r in records if r.family == "copy")
    assert total == run.num_positions == 5 * 23
    for r in records:
        for row in r.layers:
            for name in acc.names:
                mean, (lo, hi) = row.value(name), row.interval(name)
                assert lo - 1e-9 <= mean <= hi + 1e-9


def test_a_stratum_mean_by_hand_at_the_last_layer():
    """top1_output of the copyable stratum at layer L = the model's greedy accuracy on the
    positions whose next token already occurred in the window."""
    model = tiny_hf_model("gpt2")
    lm = lens_model(model, tokenizer=None, name="gpt2", source="config")
    tokens = torch.randint(0, 15, (4, 20), generator=torch.Generator().manual_seed(8))
    run = engine.run_lens(lm, tokens, compute_dtype=torch.float32, progress=False)
    with torch.no_grad():
        hits = model(input_ids=tokens).logits[:, :-1].argmax(-1) == tokens[:, 1:]
    copyable = earlier_occurrence(tokens)[:, 1:]
    by_name = {r.name: r for r in model_strata(run.strata, 5)}
    for name, mask in (("copyable", copyable), ("new", ~copyable)):
        expected = hits[mask].float().mean().item()
        assert by_name[name].layers[-1].value("top1_output") == pytest.approx(expected)
        assert by_name[name].num_positions == int(mask.sum())


def test_an_empty_stratum_has_null_means():
    lm = lens_model(tiny_hf_model("llama"), tokenizer=None, name="llama", source="config")
    tokens = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(1))
    run = engine.run_lens(lm, tokens, compute_dtype=torch.float32, progress=False)
    by_name = {r.name: r for r in model_strata(run.strata, 5)}
    assert by_name["pos_q4"].num_positions == 0  # 3 positions in 4 bins
    assert by_name["pos_q4"].layers[0].value("top1_output") is None
    assert by_name["pos_q4"].shift_layer.crossover is None
    assert run.strata is not None
    no_strata = engine.run_lens(lm, tokens, progress=False, strata=False)
    assert no_strata.strata is None and model_strata(no_strata.strata, 5) == []
