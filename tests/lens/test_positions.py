"""positions.parquet: exact ranks (the reference definition on full logits, uncapped), rows
that agree with the aggregated results, nulls where a target or metric does not apply."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from causalshift.cli import main
from causalshift.lens import engine
from causalshift.lens.metrics import target_ranks
from causalshift.lens.models import lens_model
from causalshift.lens.positions import model_positions, position_table
from causalshift.testing import tiny_gpt2_folder, tiny_hf_model


@pytest.fixture(scope="module")
def llama_run():
    lm = lens_model(tiny_hf_model("llama"), tokenizer=None, name="llama", source="config")
    tokens = torch.randint(0, 40, (5, 14), generator=torch.Generator().manual_seed(6))
    tokens[:, 5] = tokens[:, 4]  # a repeat in every window: no projection there
    kw = dict(topk=(1, 5), compute_dtype=torch.bfloat16, progress=False, batch_size=2)
    run = engine.run_lens(lm, tokens, save_positions=True, **kw)
    return lm, tokens, run, engine.run_lens(lm, tokens, **kw)


def test_positions_do_not_change_the_results(llama_run):
    _, _, run, plain = llama_run
    assert plain.positions is None
    assert torch.equal(run.accumulator.sums, plain.accumulator.sums)
    assert torch.equal(run.accumulator.counts, plain.accumulator.counts)


def test_ranks_are_exact_and_uncapped(llama_run):
    lm, tokens, run, _ = llama_run
    states = engine.residual_stream(lm, tokens)
    cols = run.positions.columns
    n_pos = tokens.shape[1] - 1
    for layer, h in enumerate(states):
        with torch.no_grad():
            logits = lm.norm(h[:, :-1]).float() @ lm.unembed.float().T  # (S, P, V)
        logits = logits.reshape(-1, logits.shape[-1])
        for name, target in (("rank_input", tokens[:, :-1]), ("rank_output", tokens[:, 1:])):
            expected = target_ranks(logits, target.reshape(-1)).reshape(-1, n_pos)
            assert torch.equal(cols[name][layer].long(), expected), (layer, name)
        nxt = target_ranks(
            logits.reshape(-1, n_pos, logits.shape[-1])[:, :-1].reshape(-1, logits.shape[-1]),
            tokens[:, 2:].reshape(-1),
        ).reshape(-1, n_pos - 1)
        assert torch.equal(cols["rank_next2"][layer, :, :-1].long(), nxt)
        assert bool((cols["rank_next2"][layer, :, -1] == -1).all())
    assert int(cols["rank_output"].max()) > 5  # not capped at max(topk)


def test_the_table_agrees_with_the_layer_means(llama_run):
    lm, tokens, run, _ = llama_run
    table = model_positions(run.positions, run.first_position, lm, tokens)
    n_seqs, seq_len = tokens.shape
    assert table.num_rows == n_seqs * (seq_len - 1) * (lm.num_layers + 1)
    df = table.to_pandas()
    summary = run.accumulator.layer_summary()
    for layer, g in df.groupby("layer"):
        for k in (1, 5):
            assert (g.rank_output < k).mean() == pytest.approx(summary[layer][f"top{k}_output"])
            assert (g.rank_input < k).mean() == pytest.approx(summary[layer][f"top{k}_input"])
        assert g.cos_output.mean() == pytest.approx(summary[layer]["cos_output"], rel=1e-5)
        assert g.projection.mean() == pytest.approx(summary[layer]["projection"], rel=1e-4)
    first = df[(df.sequence == 2) & (df.position == 3) & (df.layer == 1)].iloc[0]
    assert (first.input_id, first.output_id, first.next2_id) == tuple(tokens[2, 3:6].tolist())
    repeats = run.excluded_projection_positions  # t_i == t_(i+1): no projection
    assert repeats >= n_seqs and df.projection.isna().sum() == repeats * (lm.num_layers + 1)
    last = df[df.position == seq_len - 2]
    assert last.rank_next2.isna().all() and last.next2_id.isna().all()
    assert df.input_token.isna().all()  # no tokenizer: no strings


def test_token_strings_decode_each_id():
    tokens = torch.tensor([[1, 2, 3, 2]])
    cols = {n: torch.zeros(1, 1, 3) for n in ("rank_input", "rank_output", "rank_next2")}
    cols |= {n: torch.zeros(1, 1, 3) for n in ("cos_input", "cos_output", "cos_random")}
    cols["projection"] = torch.zeros(1, 1, 3)
    from causalshift.lens.positions import PositionRecords

    records = PositionRecords(torch.tensor([0]), cols)
    table = position_table(records, tokens, 0, "m", decode=lambda i: f"<{i}>")
    column = table.to_pydict()
    assert column["input_token"] == ["<1>", "<2>", "<3>"]
    assert column["next2_token"] == ["<3>", "<2>", None]
    assert column["next2_id"] == [3, 2, None]
    assert column["model"] == ["m"] * 3 and column["position"] == [0, 1, 2]


def test_analyze_save_positions_and_next2(tmp_path):
    """The CLI: --save-positions writes positions.parquet (mean of rank < 5 per layer =
    top5_output of results.json), --targets ...,next2 adds top{k}_next2 everywhere."""
    model = tiny_gpt2_folder(tmp_path / "tiny")
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"The mill {i} turns by the river." for i in range(80)))
    out = tmp_path / "out"
    args = ["analyze", "--model", model, "--data", text, "--num-seqs", 3, "--seq-len", 16]
    args += ["--targets", "input,output,next2", "--save-positions", "--out", out]
    assert main([str(a) for a in args]) == 0
    results = json.loads((out / "results.json").read_text())
    (m,) = results["models"]
    df = pq.read_table(out / "positions.parquet").to_pandas()
    assert len(df) == 3 * 15 * 3
    for row in m["layers"]:
        g = df[df.layer == row["layer"]]
        assert (g.rank_output < 5).mean() == pytest.approx(row["top5_output"])
        assert (g.rank_next2 < 5).sum() / g.rank_next2.notna().sum() == pytest.approx(
            row["top5_next2"]
        )
    assert set(df.columns) >= {"input_token", "output_token", "next2_token", "rank_next2"}
    assert isinstance(df.output_token.iloc[0], str)
    assert np.all(df.sequence.unique() == [0, 1, 2])
    assert "top1_next2" in (out / "layers.csv").read_text()
    assert (out / "strata.png").stat().st_size > 0
    assert [s["family"] for s in m["strata"]][-2:] == ["copy", "copy"]


def test_unknown_targets_are_one_error_line(tmp_path, capsys):
    assert main(["analyze", "--targets", "input,output,next3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "next3" in err.strip().splitlines()[-1]
