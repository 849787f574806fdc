"""`analyze --sublayers`: the post-attention states of every family, recomputed by hand from
the blocks' own modules; the block rows unchanged by sublayers; the output target's lens
log-probability and the attention/MLP contributions against hand computations."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import causalshift as cs
from causalshift.cli import main
from causalshift.lens import engine
from causalshift.lens import metrics as M
from causalshift.lens import sublayers as SL
from causalshift.lens.models import FAMILIES, lens_model
from causalshift.results import AnalyzeResult, LayerRow, ModelResult, SublayerRow
from causalshift.testing import FAMILY_CONFIGS, TINY_VOCAB, tiny_gpt, tiny_hf_model

# Llama-like blocks (x + attn, norm before the MLP) and Gemma 2/3 blocks (attention output
# normed before the add, pre_feedforward_layernorm before the MLP): the test's own table.
LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma"}
GEMMA_SANDWICH = {"gemma2", "gemma3_text"}
TEST_FAMILIES = sorted({*FAMILY_CONFIGS, "gemma", "causalshift_gpt"})


def tiny_model(family: str):
    """A tiny random model of `family`: FAMILY_CONFIGS' configs, Gemma (1) built here (it has
    none there), causalshift's GPT with a gate (every alpha_l != 1)."""
    if family == "causalshift_gpt":
        return tiny_gpt("gate", vocab_size=TINY_VOCAB)
    if family in FAMILY_CONFIGS:
        return tiny_hf_model(family)
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, **{**FAMILY_CONFIGS["llama"], "head_dim": 8})
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # non-trivial norms, as tiny_hf_model makes them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def block_calls(lm, ids):
    """Each block's input state and call arguments (args, kwargs) during a forward."""
    calls = []

    def pre(_module, args, kwargs):
        calls.append((args, dict(kwargs)))

    handles = [b.register_forward_pre_hook(pre, with_kwargs=True) for b in lm.blocks]
    try:
        with torch.no_grad():
            lm.forward(ids)
    finally:
        for h in handles:
            h.remove()
    return calls


@torch.no_grad()
def by_hand(family: str, block, args, kwargs, model) -> tuple[torch.Tensor, torch.Tensor]:
    """(stream after the attention, block output) recomputed from the block's modules."""
    if family == "causalshift_gpt":  # Block.forward(x, alpha)
        x, alpha = args
        a = alpha * x + block.attn(block.ln_1(x))
        return a, a + block.mlp(block.ln_2(a))
    x = args[0] if args else kwargs.pop("hidden_states")
    kw = {k: v for k, v in kwargs.items() if not k.startswith("encoder_")}
    if family == "gpt2":
        a = x + block.attn(block.ln_1(x), **kw)[0]
        return a, a + block.mlp(block.ln_2(a))
    attn = block.self_attn(hidden_states=block.input_layernorm(x), **kw)[0]
    if family in LLAMA_LIKE:
        a = x + attn
        return a, a + block.mlp(block.post_attention_layernorm(a))
    assert family in GEMMA_SANDWICH
    a = x + block.post_attention_layernorm(attn)
    mlp = block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(a)))
    return a, a + mlp


def test_every_family_has_a_sublayer_entry_and_a_test():
    assert set(SL.POST_ATTENTION_INPUT) == set(FAMILIES)
    assert set(TEST_FAMILIES) == set(FAMILIES)


@pytest.mark.parametrize("family", TEST_FAMILIES)
def test_post_attention_state_equals_the_block_recomputed_by_hand(family):
    model = tiny_model(family)
    lm = lens_model(model, None, family, "config")
    assert lm.architecture == family
    ids = torch.randint(0, TINY_VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    states = engine.residual_stream(lm, ids, sublayers=True)
    plain = engine.residual_stream(lm, ids)
    assert len(states) == 2 * lm.num_layers + 1
    for a, b in zip(states[::2], plain, strict=True):  # the block rows are the plain stream
        assert torch.equal(a, b)
    for layer, (args, kwargs) in enumerate(block_calls(lm, ids), start=1):
        x = args[0] if args else kwargs["hidden_states"]
        assert torch.equal(x, states[2 * layer - 2])  # the block's input: row l-1
        attn, out = by_hand(family, lm.blocks[layer - 1], args, kwargs, model)
        torch.testing.assert_close(states[2 * layer - 1], attn, rtol=0, atol=0)
        torch.testing.assert_close(states[2 * layer], out, rtol=1e-6, atol=1e-6)
        # the attention changed the stream, and so did the MLP: no row repeats another
        assert not torch.allclose(states[2 * layer - 1], states[2 * layer - 2])
        assert not torch.allclose(states[2 * layer - 1], states[2 * layer])


def test_hooks_are_removed_after_a_sublayer_run():
    lm = lens_model(tiny_hf_model("llama"), None, "llama", "config")
    ids = torch.randint(0, TINY_VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))
    engine.residual_stream(lm, ids, sublayers=True)
    for module in lm.model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_row_specs_are_in_stream_order():
    rows = SL.row_specs(3, sublayers=True)
    assert [r.label for r in rows] == ["0", "1.attn", "1", "2.attn", "2", "3.attn", "3"]
    assert [r.position() for r in rows] == [0, 0.5, 1, 1.5, 2, 2.5, 3]
    assert [r.label for r in SL.row_specs(3, sublayers=False)] == ["0", "1", "2", "3"]
    assert list(range(7))[SL.block_rows(True)] == [0, 2, 4, 6]


@pytest.mark.parametrize("family", ["gpt2", "gemma3_text", "causalshift_gpt"])
def test_block_rows_are_identical_with_sublayers(family):
    lm = lens_model(tiny_model(family), None, family, "config")
    tokens = torch.randint(0, TINY_VOCAB, (5, 12), generator=torch.Generator().manual_seed(1))
    kw = dict(topk=(1, 5), batch_size=2, progress=False, compute_dtype=torch.float32)
    plain = engine.run_lens(lm, tokens, **kw)
    sub = engine.run_lens(lm, tokens, sublayers=True, **kw)
    names = plain.accumulator.names
    assert sub.accumulator.names == [*names, "logprob_output"]
    m = len(names)
    assert torch.equal(sub.accumulator.sums[:, ::2, :m], plain.accumulator.sums)
    assert torch.equal(sub.accumulator.counts[:, :m], plain.accumulator.counts)
    assert torch.equal(sub.strata.sums[..., :m], plain.strata.sums)  # block rows only
    assert sub.strata.sums.shape[1] == lm.num_layers + 1


def test_target_logprob_equals_log_softmax_with_chunks():
    g = torch.Generator().manual_seed(0)
    h, u = torch.randn(11, 6, generator=g), torch.randn(23, 6, generator=g)
    bias, targets = torch.randn(23, generator=g), torch.randint(0, 23, (11,), generator=g)
    for b, cap in ((None, None), (bias, None), (bias, 2.0)):
        z = h @ u.T + (0 if b is None else b)
        z = torch.tanh(z / cap) * cap if cap else z
        want = torch.log_softmax(z, dim=1)[torch.arange(11), targets]
        got = M.target_logprob(h, u, targets, b, cap, vocab_chunk=5, row_block=4)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])  # gemma2 soft-caps its logits
def test_logprob_output_by_hand(family):
    lm = lens_model(tiny_hf_model(family), None, family, "config")
    tokens = torch.randint(0, TINY_VOCAB, (3, 10), generator=torch.Generator().manual_seed(2))
    run = engine.run_lens(lm, tokens, batch_size=2, progress=False, sublayers=True)
    acc = run.accumulator
    j = acc.names.index("logprob_output")
    states = engine.residual_stream(lm, tokens, sublayers=True)
    for r, h in enumerate(states):
        logp = torch.log_softmax(lm.decode(h[:, :-1]), dim=-1)  # positions 0..T-2 (no BOS)
        want = logp.gather(-1, tokens[:, 1:, None]).mean()
        got = acc.sums[:, r, j].sum() / acc.counts[:, j].sum()
        assert math.isclose(float(got), float(want), rel_tol=1e-5, abs_tol=1e-5)


def test_contributions_by_hand():
    g = torch.Generator().manual_seed(4)
    names = ["top1_output", "top5_output", "cos_input", "projection", "logprob_output"]
    sums = torch.randn(4, 7, len(names), generator=g, dtype=torch.float64)
    counts = torch.randint(1, 9, (4, len(names)), generator=g).double()
    rows = SL.contributions(sums, counts, names, (1, 5))
    assert [r.layer for r in rows] == [1, 2, 3]
    assert list(rows[0].attn) == ["logprob_output", "top1_output", "top5_output", "projection"]
    s, c = sums.numpy(), counts.numpy()
    for row in rows:
        for part, (a, b) in (
            ("attn", (2 * row.layer - 2, 2 * row.layer - 1)),
            ("mlp", (2 * row.layer - 1, 2 * row.layer)),
        ):
            for name in row.attn:
                m = names.index(name)
                mean_b, mean_a = s[:, b, m].sum() / c[:, m].sum(), s[:, a, m].sum() / c[:, m].sum()
                per_seq = (s[:, b, m] - s[:, a, m]) / c[:, m]
                half = 1.96 * per_seq.std(ddof=1) / np.sqrt(4)
                value = getattr(row, part)[name]
                assert value == pytest.approx(mean_b - mean_a, abs=1e-12)
                lo, hi = row.interval(part, name)
                assert (lo, hi) == pytest.approx((value - half, value + half), abs=1e-12)
    # the changes add up to the change from layer 0 to layer L
    m = names.index("projection")
    total = sum(r.attn["projection"] + r.mlp["projection"] for r in rows)
    assert total == pytest.approx((s[:, 6, m].sum() - s[:, 0, m].sum()) / c[:, m].sum())


def test_old_results_load_and_sublayer_rows_round_trip():
    old = {"layer": 2, "top1_input": 0.5, "ci95": {"top1_input": [0.4, 0.6]}}
    row = LayerRow.from_dict(old)
    assert row.is_block and row.name == "2" and row.position == 2 and row.to_dict() == old
    attn = {"layer": 2, "label": "2.attn", "depth": 0.75, "top1_input": 0.1, "ci95": {}}
    row = LayerRow.from_dict(attn)
    assert not row.is_block and row.name == "2.attn" and row.position == 1.5
    assert row.values == {"top1_input": 0.1} and row.to_dict() == attn
    model = {"name": "m", "num_layers": 2, "layers": [old]}
    assert ModelResult.from_dict(model).to_dict() == model  # no "sublayers" key added
    sub = SublayerRow(
        layer=1,
        attn={"projection": 0.2},
        mlp={"projection": 0.1},
        ci95={"attn": {"projection": [0.1, 0.3]}, "mlp": {"projection": [0, 0.2]}},
    )
    new = {**model, "sublayers": [sub.to_dict()]}
    assert ModelResult.from_dict(new).to_dict() == new
    assert ModelResult.from_dict(new).sublayers[0].interval("attn", "projection") == (0.1, 0.3)


def analyze(folder, text, out, *extra):
    argv = [
        "analyze",
        "--model",
        str(folder),
        "--data",
        str(text),
        "--num-seqs",
        "3",
        "--seq-len",
        "12",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def test_analyze_sublayers_files(tiny_hf_dir, tiny_text_file, tmp_path):
    plain = analyze(tiny_hf_dir, tiny_text_file, tmp_path / "a", "--no-plots")
    out = tmp_path / "b"
    sub = analyze(tiny_hf_dir, tiny_text_file, out, "--sublayers", "--save-positions")
    (p,), (m,) = plain["models"], sub["models"]
    n = m["num_layers"]
    assert [r.get("label", r["layer"]) for r in m["layers"]] == [0, "1.attn", 1, "2.attn", 2]
    assert [r["depth"] for r in m["layers"] if "label" in r] == [0.5 / n, 1.5 / n]
    blocks = [r for r in m["layers"] if "label" not in r]
    for a, b in zip(p["layers"], blocks, strict=True):  # exact JSON values
        assert {k: v for k, v in b.items() if k in a and k != "ci95"} == {
            k: v for k, v in a.items() if k != "ci95"
        }
        assert set(b) - set(a) == {"logprob_output"}
        assert b["ci95"] == {**a["ci95"], "logprob_output": b["ci95"]["logprob_output"]}
    assert m["shift_layer"] == p["shift_layer"]
    assert "sublayers" not in p
    assert [s["layer"] for s in m["sublayers"]] == [1, 2]
    first = m["sublayers"][0]
    assert set(first["attn"]) == {"logprob_output", "top1_output", "top5_output", "projection"}
    assert first["attn"]["projection"] == pytest.approx(
        m["layers"][1]["projection"] - m["layers"][0]["projection"]
    )
    assert first["mlp"]["logprob_output"] == pytest.approx(
        m["layers"][2]["logprob_output"] - m["layers"][1]["logprob_output"]
    )
    with open(out / "layers.csv", newline="") as f:
        layers = [r["layer"] for r in csv.DictReader(f) if r["metric"] == "top1_output"]
    assert layers == ["0", "1.attn", "1", "2.attn", "2"]
    for name in ("sublayers.png", "topk_match.png", "similarity.png", "strata.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    import pyarrow.parquet as pq

    table = pq.read_table(out / "positions.parquet")
    assert sorted(set(table.column("layer").to_pylist())) == list(range(n + 1))
    assert AnalyzeResult.read(out).models[0].block_layers()[-1].layer == n


def test_sublayers_refuse_an_unsupported_family(
    tiny_hf_dir, tiny_text_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.delitem(SL.POST_ATTENTION_INPUT, "gpt2")
    argv = [
        "analyze",
        "--model",
        str(tiny_hf_dir),
        "--data",
        str(tiny_text_file),
        "--num-seqs",
        "2",
        "--seq-len",
        "8",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
        "--sublayers",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert lines == [err.strip().splitlines()[-1]] and "Traceback" not in err
    assert "--sublayers does not support architecture 'gpt2'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_measure_sublayers_matches_the_plain_measure():
    model = tiny_hf_model("qwen3")
    tokens = torch.randint(0, TINY_VOCAB, (4, 10), generator=torch.Generator().manual_seed(5))
    plain = cs.measure(model, tokens=tokens)
    sub = cs.measure(model, tokens=tokens, sublayers=True)
    assert plain.sublayers is None
    layers = sub.layers
    assert list(layers["label"]) == ["0", "1.attn", "1", "2.attn", "2", "3.attn", "3"]
    blocks = layers[~layers["label"].str.endswith(".attn")].reset_index(drop=True)
    cols = list(plain.layers.columns)
    assert blocks[cols].equals(plain.layers[cols])
    table = sub.sublayers
    assert list(table["sublayer"]) == ["attn", "mlp"] * 3
    assert {"logprob_output", "logprob_output_lo", "top5_output_hi"} <= set(table.columns)
