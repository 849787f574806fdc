"""Adding a metric the way docs/architecture.md says: one `Metric` entry in the table of
`causalshift.lens.metrics`. The engine's columns, masks and results follow from it."""

import pytest
import torch

from causalshift.lens import engine
from causalshift.lens import metrics as M
from causalshift.lens.models import lens_model
from causalshift.testing import tiny_hf_model

# The toy metric: the normed state's dot product with the input token's embedding, counted
# only where the next token differs (positions="shift", like the projection).
TOY = M.Metric(
    "dot_input",
    "h . W_E[t_i]",
    lambda x, k: (x.states * x.input_embed).sum(-1),
    positions="shift",
)


def test_a_toy_metric_added_to_the_table_runs_end_to_end(monkeypatch):
    lm = lens_model(tiny_hf_model("llama"), tokenizer=None, name="llama", source="config")
    tokens = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(5))
    tokens[:, 4] = tokens[:, 3]  # a repeat in every sequence: left out of the toy metric
    kw = dict(topk=(1, 3), compute_dtype=torch.float32, progress=False, batch_size=2)
    before = engine.run_lens(lm, tokens, **kw)

    monkeypatch.setattr(M, "METRICS", M.METRICS + (TOY,))
    assert M.metric_names((1, 3))[-1] == "dot_input"
    assert M.label("dot_input") == "h . W_E[t_i]"
    run = engine.run_lens(lm, tokens, **kw)
    acc = run.accumulator
    assert acc.names == [*before.accumulator.names, "dot_input"]
    # every existing column is unchanged
    assert torch.equal(acc.sums[..., :-1], before.accumulator.sums)
    assert torch.equal(acc.counts[:, :-1], before.accumulator.counts)

    # by hand: positions 0..T-2 (no BOS), mean over the positions with t_i != t_{i+1}
    states = engine.residual_stream(lm, tokens)
    inputs, outputs = tokens[:, :-1], tokens[:, 1:]
    keep = inputs != outputs
    embed = lm.embed.detach().float()[inputs]  # (S, P, d)
    summary = acc.layer_summary()
    for layer, h in enumerate(states):
        with torch.no_grad():
            dots = (lm.norm(h[:, :-1]).float() * embed).sum(-1)  # (S, P)
        expected = float(dots[keep].double().sum() / keep.sum())
        assert summary[layer]["dot_input"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert (
        int(acc.counts[:, -1].sum()) == int(keep.sum()) == 3 * 9 - run.excluded_projection_positions
    )


def test_the_table_orders_columns_and_masks():
    columns = M.metric_table((1, 5))
    assert [c.name for c in columns] == [
        "top1_input",
        "top1_output",
        "top5_input",
        "top5_output",
        "cos_input",
        "cos_output",
        "cos_random",
        "projection",
    ]
    assert [c.name for c in columns if c.shift_only] == ["projection"]
    assert M.label("top5_output") == M.label("top1_output") == "output t_(i+1)"
    with pytest.raises(KeyError):
        M.label("topx_output")


def test_a_metric_names_its_positions():
    with pytest.raises(ValueError, match="positions"):
        M.Metric("odd", "odd", lambda x, k: x.states.sum(-1), positions="odd")
