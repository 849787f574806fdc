"""Smoke tests of the benchmark functions at toy sizes: they run and return what the report
reads. No timing thresholds; the metric agreement checks are real assertions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ is not installed

from bench import common, lens, train  # noqa: E402


def test_alternate_interleaves_and_rotates():
    calls = []
    times, last = common.alternate(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2
    )
    assert calls == ["a", "b", "b", "a"]
    assert set(times) == {"a", "b"} and all(len(v) == 2 for v in times.values())


def test_matmul_peak_and_machine():
    peak = common.matmul_peak(size=(64, 64, 64), reps=1)
    from causalshift.lens.screen import int8_kernel_works

    quantized = {k for k in ("int8-onednn", "int8-fbgemm") if int8_kernel_works(k)}
    assert set(peak) == {"bfloat16", "float32", "int8"} | quantized
    assert all(v > 0 for v in peak.values())
    assert common.peak_key("int8-intmm") == "int8" and common.peak_key("float32") == "float32"
    info = common.machine()
    assert {"cpu", "torch", "torch_threads", "loadavg", "cpu_capability", "isa_env"} <= set(info)
    table = common.md_table([{"x": 1, "y": 0.5}])
    assert table.splitlines()[0] == "| x | y |"


@pytest.fixture(scope="module")
def tiny_lm():
    return lens.random_model(hidden=64, layers=2, vocab=512)


def test_plain_lens_agrees_with_engine_float32(tiny_lm):
    from causalshift.lens.engine import run_lens

    tokens = lens.random_tokens(3, 12, 512)
    plain, positions = lens.plain_lens(tiny_lm, tokens, batch_size=2)
    run = run_lens(tiny_lm, tokens, compute_dtype=torch.float32, batch_size=2, progress=False)
    assert positions == run.num_positions
    ours = lens.run_means(run)
    assert plain.shape == ours.shape == (3, 8)
    assert float((plain - ours).abs().max()) < 1e-5


def test_lens_compare_keys(tiny_lm):
    tokens = lens.random_tokens(2, 10, 512)
    res = lens.compare(tiny_lm, tokens, reps=1, batch_size=2, peak={"bfloat16": 1.0})
    for key in (
        "tokens_per_second",
        "speedup_fast_vs_plain",
        "speedup_fast_vs_float32",
        "max_abs_diff_fast_vs_float32",
        "max_abs_diff_plain_vs_float32",
        "effective_gflops",
        "executed_fraction",
        "executed_gops_fast",
        "fast_screens",
    ):
        assert key in res, key
    expected = {"plain", "ours_float32", "ours_fast", "forward_only"}
    if res["fast_screens"] != ["bfloat16"]:  # int8 on CPUs with VNNI: bf16 measured beside
        expected.add("ours_bf16")
    assert set(res["tokens_per_second"]) == expected
    assert res["max_abs_diff_fast_vs_float32"] == 0.0
    assert res["max_abs_diff_plain_vs_float32"] < 1e-4
    assert 0 < res["executed_fraction"] <= 1
    from bench.report import render

    doc = render({"machine_start": common.machine(), "lens": {"gemma": res}})
    assert "## Logit lens" in doc and "Speedup of the fast path" in doc


def test_lens_scaling_and_memory_probe(tiny_lm):
    tokens = lens.random_tokens(2, 16, 512)
    res = lens.scaling(
        tiny_lm,
        tokens,
        seqs=(1, 2),
        seq_lens=(8, 16),
        base_len=8,
        layers=(1, 2),
        vocabs=(256, 512),
        hidden=64,
        random_tokens_shape=(1, 8),
    )
    assert [len(res[k]) for k in ("seqs", "seq_len", "layers", "vocab")] == [2, 2, 2, 2]
    assert all("ms_per_token" in r for rows in res.values() for r in rows)
    mem = lens.memory_probe(num_seqs=2, seq_len=8, layers=1, vocab=256, hidden=64)
    assert mem["peak_rss_mib"] >= mem["rss_after_load_mib"] > 0


def test_weights_memory_probe():
    res = lens.weights_memory_probe(vocab=512, hidden=64)
    # 512 columns: all before INT8_AFTER, so on the bf16 (or float32) screen
    per_entry = 4 if res["screens"].startswith("float32") else 2
    assert res["copy_mib"] == 512 * 64 * per_entry / 2**20 and res["seconds"] >= 0


def test_train_compare_and_modes():
    res = train.compare(
        "tiny",
        batch_size=2,
        steps=1,
        reps=1,
        warmup=1,
        compile=False,
        dtype="float32",
        peak={"float32": 1.0, "bfloat16": 1.0},
    )
    assert set(res["tokens_per_second"]) == {"ours", "plain"}
    assert res["ratio_ours_vs_plain"] > 0 and set(res["mfu"]) == {"ours", "plain"}
    modes = train.residual_modes(
        "tiny",
        modes=("none", "gate"),
        batch_size=2,
        steps=1,
        reps=1,
        compile=False,
        dtype="float32",
    )
    assert set(modes["overhead_vs_none"]) == {"none", "gate"}
    assert modes["overhead_vs_none"]["none"] == 0
    growth = train.growth((("tiny", 2),), steps=1, compile=False, dtype="float32")
    assert growth[0]["tokens_per_second"] > 0 and growth[0]["params"] > 0
    from bench.report import render

    doc = render({"train": {"eager": res, "modes": modes, "growth": growth}})
    assert "trainer / plain" in doc and "### Residual modes" in doc


def test_plain_gpt_matches_shape_of_ours():
    from bench.nanogpt import PlainGPT
    from causalshift.gpt.model import GPT
    from causalshift.train.config import preset

    c = preset("tiny").model
    plain = PlainGPT(c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size)
    ours = GPT(c)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in ours.parameters())


def test_prepare_compare(tmp_path):
    from bench import prepare

    src = tmp_path / "t.txt"
    src.write_text("\n\n\n".join(f"Document {i} says hello to the world." for i in range(30)))
    res = prepare.compare(str(src), max_docs=30, threads=1, reps=1)
    assert res["tokens"] > 0
    assert 0 <= res["prepared_tokens"] - res["tokens"] <= 1  # an EOT where val cuts a doc
    assert res["ratio_prepare_vs_tiktoken"] > 0


def test_gemma2_shape_code_path_at_toy_size():
    shape = dict(
        lens.GEMMA2_2B_SHAPE,
        hidden_size=64,
        num_hidden_layers=2,
        vocab_size=512,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        intermediate_size=128,
        query_pre_attn_scalar=32,
    )
    lm = lens.random_model("gemma2", **shape)
    assert lm.architecture == "gemma2" and lm.num_layers == 2
    res = lens.compare(
        lm,
        lens.random_tokens(2, 8, 512),
        reps=1,
        with_plain=False,
        with_float32=False,
        peak={"bfloat16": 1.0},
    )
    assert {"ours_fast", "forward_only"} <= set(res["tokens_per_second"])


def test_retirement_by_layer(tiny_lm):
    rows = lens.retirement_by_layer(tiny_lm, lens.random_tokens(2, 12, 512), vocab_chunk=128)
    assert [r["layer"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert 0 <= r["rows_scanning_all_vocab"] <= r["work_executed"] + 1e-9 <= 1 + 1e-9


def test_logits_output_cost_keys():
    res = train.logits_output_cost("tiny", batch_size=2, steps=1, reps=1, compile=False)
    assert set(res["tokens_per_second_vs_plain"]) == {
        "trainer",
        "plain_returning_logits",
        "plain_loss_only",
    }
    assert res["tokens_per_second_vs_plain"]["plain_loss_only"] == 1.0
