"""The speed benchmarks at toy sizes: peers, fixed cost, the probe and the kernels run and
return what the report reads. No timing thresholds; agreement and exactness are asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ is not installed

from bench import common, peers, speed  # noqa: E402
from bench.report import render  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama():
    from causalshift.lens.models import lens_model
    from causalshift.testing import tiny_hf_model

    return lens_model(tiny_hf_model("llama"), tokenizer=None, name="llama", source="config")


def test_peers_agree_with_causalshift(tiny_llama):
    """tuned-lens's LogitLens (and TransformerLens, where it can boot this model offline)
    give causalshift's per-layer top-k rates; a peer that cannot run is a note."""
    tokens = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    res = peers.compare_loaded(tiny_llama, tokens, reps=1, batch_size=2)
    ran = [k for k in ("tuned-lens", "transformer-lens") if k in res["tokens_per_second"]]
    assert set(ran) | set(res["skipped"]) == {"tuned-lens", "transformer-lens"}
    if peers.peer_versions()["tuned-lens"]:
        assert "tuned-lens" in ran
    for k in ran:
        assert res["max_rate_diff"][k] == 0.0 and res["speedup_vs"][k] > 0
    assert res["rates"]["columns"] == ["top1_input", "top1_output", "top5_input", "top5_output"]
    assert 0 <= res["lens_share_of_time"] <= 1
    doc = render({"machine_start": common.machine(), "peers": {"models": [res], "versions": {}}})
    assert "## causalshift against tuned-lens and TransformerLens" in doc
    assert "the model's forward alone" in doc


def test_a_missing_peer_is_skipped_with_a_note(tiny_llama, monkeypatch):
    monkeypatch.setattr(
        peers, "peer_versions", lambda: {"tuned-lens": None, "transformer-lens": None}
    )
    tokens = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(1))
    res = peers.compare_loaded(tiny_llama, tokens, reps=1, batch_size=1)
    assert set(res["tokens_per_second"]) == {"causalshift", "forward_only"}
    assert all("not installed" in why for why in res["skipped"].values())
    assert res["speedup_vs"] == {}


def test_startup_probe_splits_the_run(tmp_path):
    """One run's time: setup (tokenize, choose, prepare) + batches; the engine's functions
    are restored afterwards."""
    from causalshift.lens import engine, probe
    from causalshift.testing import tiny_gpt2_folder

    folder = tiny_gpt2_folder(tmp_path / "gpt2")
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"The river number {i} flows past the mill." for i in range(80)))
    r = speed.startup_probe(str(folder), num_seqs=3, seq_len=16, batch_size=2, data=str(text))
    assert len(r["batch_s"]) == 2 and r["first_batch_extra_s"] is not None
    assert r["setup_s"] >= r["tokenize_s"] + r["prepare_s"] - 1e-6
    assert r["fixed_s"] >= r["setup_s"] and r["total_s"] >= sum(r["batch_s"])
    assert r["forward_tokens_per_second"] > 0 and r["screens"] and r["screen_how"]
    assert engine.choose is probe.choose
    assert "prepare" in vars(engine.LensWeights) and isinstance(
        vars(engine.LensWeights)["prepare"], classmethod
    )


def test_fit_fixed_cost_by_hand():
    rows = [{"num_seqs": 1, "total_s": 3.0}, {"num_seqs": 4, "total_s": 6.0}]
    rows.append({"num_seqs": 32, "total_s": 34.0})
    fit = speed.fit_fixed_cost(rows)
    assert fit["per_sequence_s"] == pytest.approx(1.0) and fit["fixed_s"] == pytest.approx(2.0)
    assert speed.fit_fixed_cost(rows[:1]) is None


def test_kernels_probe_record_and_report():
    """Every available screen is timed; the quantized kernels are exact with 7-bit rows
    (8-bit rows saturate on CPUs without VNNI only, so that is recorded, not asserted)."""
    from causalshift.lens.probe import SCREEN_NAMES, available

    k = speed.kernels(hidden=64, vocab_chunk=256, rows=(8,), reps=1)
    assert set(k["gflops"][0]) == {"rows"} | {n for n in SCREEN_NAMES if available(n)}
    for kernel, errors in k["saturation"].items():
        if errors is not None:
            assert errors["7_bit"] == 0.0, kernel
    pr = speed.probe_record(hidden=64, vocab=4096, layers=2, seq_len=16, seqs=(1, 8))
    assert pr["seconds"] > 0 and [p["num_seqs"] for p in pr["picks"]] == [1, 8]
    assert set(pr["timings_ms"]) == set(SCREEN_NAMES)
    rows = [
        dict(
            num_seqs=n,
            seq_len=16,
            model="m",
            total_s=1.0 + n,
            tokens_per_second=10.0,
            forward_tokens_per_second=40.0,
            lens_share_of_time=0.75,
            fixed_s=0.5,
            tokenize_s=0.1,
            choose_s=0.0,
            prepare_s=0.2,
            first_batch_extra_s=None,
            screens=["float32"],
            compiled_kernels=False,
        )  # fmt: skip
        for n in (1, 4)
    ]
    res = {"startup": rows, "fit": speed.fit_fixed_cost(rows), "kernels": k, "probe": pr}
    doc = render({"machine_start": common.machine(), "speed": res})
    assert "## Fixed cost and run size" in doc and "### The screen the probe chose" in doc
    assert "### The screens' kernels on the chunk shape" in doc
