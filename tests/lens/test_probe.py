"""The screen probe: its choice is used, cached per machine and reused, skipped by a forced
--dtype, and works without /proc/cpuinfo; compiled and eager kernels give the same metrics."""

import json

import pytest
import torch

from causalshift import runtime
from causalshift.lens import engine, probe
from causalshift.lens.models import lens_model
from causalshift.testing import tiny_hf_model

FAKE = {
    "float32": {"prepare": 1.0, "matmul": 10.0},
    "bfloat16": {"prepare": 1.0, "matmul": 8.0},
    "int8-intmm": {"skipped": "10.0x the fastest on 64 x 1024"},
    "int8-onednn": {"prepare": 20.0, "matmul": 4.0},
    "int8-fbgemm": {"prepare": 30.0, "matmul": 3.0},
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, and a probe that counts its calls and returns FAKE."""
    monkeypatch.setenv("CAUSALSHIFT_CACHE", str(tmp_path))
    calls = []

    def fake_probe(hidden, vocab_chunk):
        calls.append((hidden, vocab_chunk))
        return json.loads(json.dumps(FAKE))

    monkeypatch.setattr(probe, "probe", fake_probe)
    monkeypatch.setattr(probe, "machine_busy", lambda: False)  # tests share the machine
    monkeypatch.setattr(engine, "compiled_already", lambda: False)  # as in a fresh process
    return tmp_path, calls


def _tiny_lens():
    model = tiny_hf_model("llama")
    return lens_model(model, tokenizer=None, name="llama", source="config")


def test_estimate_and_pick_by_hand():
    """Cost = chunks x prepare + chunks x WORK_FRACTION x rows / PROBE_ROWS x matmul."""
    rows = 4 * probe.PROBE_ROWS / probe.WORK_FRACTION  # 4 matmuls per chunk
    costs = probe.estimate(FAKE, rows=int(rows), vocab=8192, vocab_chunk=4096)  # 2 chunks
    assert costs == pytest.approx(
        {"float32": 0.082, "bfloat16": 0.066, "int8-onednn": 0.072, "int8-fbgemm": 0.084}
    )
    assert probe.pick(costs) == ("bfloat16",)  # 0.066 < 0.9 x 0.082
    # a big run: matmuls dominate, FBGEMM is cheapest, bf16 is the cheaper float companion
    big = probe.estimate(FAKE, rows=10**7, vocab=8192, vocab_chunk=4096)
    assert probe.pick(big) == ("bfloat16", "int8-fbgemm")
    # a tiny run: preparing the int8 chunks costs more than it saves
    assert probe.pick(probe.estimate(FAKE, rows=10, vocab=8192, vocab_chunk=4096)) == ("float32",)
    # within PREFER_MARGIN of float32, float32 stays
    assert probe.pick({"float32": 1.0, "bfloat16": 0.95}) == ("float32",)


def test_the_probes_choice_is_used_and_recorded(cache):
    """run_lens with compute_dtype None (--dtype auto on CPU) runs the screens the probe
    picked, and records how; the metrics are the float32 ones."""
    _, calls = cache
    lm = _tiny_lens()
    tokens = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(1))
    ref = engine.run_lens(lm, tokens, compute_dtype=torch.float32, progress=False)
    assert calls == []  # a forced screen never probes
    assert ref.screen_choice.how == "--dtype" and ref.screens == ("float32",)
    run = engine.run_lens(lm, tokens, progress=False)
    assert calls == [(lm.unembed.shape[1], engine.VOCAB_CHUNK)]
    assert run.screen_choice.how == "probe"
    assert run.screen_choice.timings_ms == FAKE
    # 4 x 31 positions x 3 layers, one chunk: float32 4.6 ms, bf16 3.9, onednn 22.3
    assert run.screens == ("bfloat16",)
    assert torch.equal(run.accumulator.sums, ref.accumulator.sums)


def test_the_probe_is_cached_per_machine_and_reused(cache, monkeypatch):
    """The first choice writes the cache file (atomically, keyed by the machine); the second
    reads it and probes no more; another thread count or hidden bucket probes again."""
    folder, calls = cache
    first = probe.choose(None, "cpu", 640, rows=10**7)
    assert first.how == "probe" and first.screens == ("bfloat16", "int8-fbgemm")
    path = folder / "probe" / probe.CACHE_FILE
    (entry,) = json.loads(path.read_text()).values()
    assert entry["timings_ms"] == FAKE
    assert entry["key"]["hidden_bucket"] == 1024 and entry["key"]["torch"] == torch.__version__
    assert entry["key"]["cpu"] == runtime.cpu_model()
    again = probe.choose(None, "cpu", 700, rows=10**7)  # same bucket
    assert again.how == "probe (cached)" and again.screens == first.screens
    assert len(calls) == 1 and again.probe_seconds == 0.0
    probe.choose(None, "cpu", 2048, rows=10**7)  # another bucket
    assert len(calls) == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    probe.choose(None, "cpu", 640, rows=10**7)
    assert len(calls) == 3
    assert len(json.loads(path.read_text())) == 3
    path.write_text("{not json")  # a damaged cache is measured again, not an error
    assert probe.choose(None, "cpu", 640).how == "probe" and len(calls) == 4
    monkeypatch.setattr(probe, "machine_busy", lambda: True)  # measured, used, not kept
    assert probe.choose(None, "cpu", 4096).how == "probe" and len(calls) == 5
    assert probe.choose(None, "cpu", 4096).how == "probe" and len(calls) == 6


def test_a_forced_dtype_skips_the_probe(cache):
    _, calls = cache
    assert probe.choose("float32", "cpu", 64).screens == ("float32",)
    assert probe.choose(torch.bfloat16, "cpu", 64).screens == ("bfloat16",)
    float_screen = "bfloat16" if runtime.cpu_has_bf16() else "float32"
    assert probe.choose("int8-fbgemm", "cpu", 64).screens == (float_screen, "int8-fbgemm")
    assert probe.choose("int8", "cpu", 64).screens[-1] == probe.default_int8_kernel()
    assert probe.choose(None, "cuda", 64).screens == ("bfloat16",)
    with pytest.raises(ValueError, match="CPU only"):
        probe.choose("int8-onednn", "cuda", 64)
    assert calls == []


def test_int8_follows_the_cpus_facts(monkeypatch):
    """`--dtype int8`: torch._int_mm with VNNI/AMX, else a quantized-linear kernel."""
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    monkeypatch.setattr(runtime, "_int_mm_works", lambda: True)
    assert probe.default_int8_kernel() == "int8-intmm"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2"}))
    assert probe.default_int8_kernel() in ("int8-onednn", "int8-fbgemm", "int8-intmm")


def test_the_probe_runs_without_proc_cpuinfo(tmp_path, monkeypatch):
    """macOS, ARM: no /proc/cpuinfo. The key falls back on `platform`, and the real probe
    (not a fake) times every available screen and picks one of them."""
    monkeypatch.setenv("CAUSALSHIFT_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "missing")
    key = probe.machine_key(64, 512)
    assert key["flags_sha"] and key["cpu"] and key["cpu"] != "unknown"
    choice = probe.choose(None, "cpu", 64, rows=10**6, vocab=4096, vocab_chunk=512)
    assert choice.how == "probe" and choice.probe_seconds > 0
    assert set(choice.timings_ms) == set(probe.SCREEN_NAMES)
    assert "matmul" in choice.timings_ms["float32"]
    timed = {n for n, t in choice.timings_ms.items() if "matmul" in t}
    assert set(choice.screens) <= timed | {"float32"}


@pytest.mark.parametrize("screens", [("float32",), ("float32", "int8-onednn")])
def test_compiled_kernels_give_the_eager_metrics(screens, monkeypatch):
    """Runs above COMPILE_AFTER compile the counting kernels; the metrics do not change."""
    from causalshift.lens.screen import int8_kernel_works

    if not all(int8_kernel_works(s) for s in screens if s.startswith("int8")):
        pytest.skip("kernel not available")
    monkeypatch.setattr(engine, "INT8_AFTER", 20)
    lm = _tiny_lens()
    tokens = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(3))
    kw = dict(compute_dtype=screens[-1], progress=False, vocab_chunk=40)
    monkeypatch.setattr(engine, "compiled_already", lambda: False)  # as in a fresh process
    eager = engine.run_lens(lm, tokens, **kw)
    monkeypatch.setattr(engine, "COMPILE_AFTER", 0)
    compiled = engine.run_lens(lm, tokens, **kw)
    assert not eager.compiled and compiled.compiled
    assert eager.screens == compiled.screens and eager.screens[-1] == screens[-1]
    assert torch.equal(eager.accumulator.sums, compiled.accumulator.sums)


def test_analyze_records_the_screen_choice(tiny_hf_dir, tiny_text_file, tmp_path, cache):
    """results.json: each model's lens_screens, and environment.lens_screen with how they
    were chosen and the probe's timings; a forced --dtype is recorded as such."""
    from causalshift.cli import main

    args = ["analyze", "--model", str(tiny_hf_dir), "--data", str(tiny_text_file)]
    args += ["--num-seqs", "2", "--seq-len", "16", "--no-plots", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "auto")]) == 0
    res = json.loads((tmp_path / "auto" / "results.json").read_text())
    (model,) = res["models"]
    choice = res["environment"]["lens_screen"][model["name"]]
    assert choice["how"] == "probe" and choice["timings_ms"] == FAKE
    assert model["lens_screens"] == choice["screens"]
    assert choice["compiled_kernels"] is False  # a small run counts eagerly
    assert res["environment"]["cpu_capability"] == runtime.cpu_capability()
    assert main([*args, "--dtype", "int8-fbgemm", "--out", str(tmp_path / "forced")]) == 0
    res = json.loads((tmp_path / "forced" / "results.json").read_text())
    choice = res["environment"]["lens_screen"][model["name"]]
    assert choice["how"] == "--dtype" and choice["timings_ms"] == {}
    assert res["models"][0]["lens_screens"][-1] == "int8-fbgemm"
    assert res["config"]["lens_dtype"] == "int8-fbgemm"


def test_forcing_a_kernel_that_does_not_run_is_one_line(cache, monkeypatch):
    from causalshift.errors import UserError

    monkeypatch.setattr(probe, "available", lambda name: name != "int8-fbgemm")
    with pytest.raises(UserError, match="int8-fbgemm: this kernel does not run"):
        probe.choose("int8-fbgemm", "cpu", 64)
