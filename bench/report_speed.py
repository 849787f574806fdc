"""docs/benchmarks.md sections on speed across CPUs: causalshift against its peers, the fixed
cost and tokens/s by run size, the screen the probe chose and the int8 kernels (from the
"peers" and "speed" sections of `bench.run_all`'s results; no measuring here)."""

from __future__ import annotations

from typing import Any

from bench.common import md_table

PEER_LABELS = {
    "causalshift": "causalshift analyze (default `--dtype auto`)",
    "tuned-lens": "tuned-lens (stock LogitLens, top-k by hand)",
    "transformer-lens": "TransformerLens (TransformerBridge, accumulated_resid + unembed)",
    "forward_only": "the model's forward alone (the ceiling)",
}


def _f(x: Any, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def cpu_class(m: dict[str, Any]) -> str:
    """e.g. 'AMD EPYC, AVX2 (flags: avx2), 2 cores' from `bench.common.machine`."""
    flags = ", ".join(m.get("cpu_flags") or []) or "-"
    env = m.get("isa_env") or {}
    emulated = f"; emulated with {', '.join(f'{k}={v}' for k, v in env.items())}" if env else ""
    return (
        f"{m.get('cpu', '?')}, torch dispatches to {m.get('cpu_capability', '?')} "
        f"(flags: {flags}), {m.get('cpu_count', '?')} cores{emulated}"
    )


def _choice_words(choice: dict[str, Any] | None) -> str:
    """How the default screens were chosen, in words, with the probe's timings."""
    if not choice:
        return "-"
    screens = " then ".join(choice.get("screens") or [])
    timed = {k: v["matmul"] for k, v in (choice.get("timings_ms") or {}).items() if "matmul" in v}
    parts = ", ".join(f"{k} {v:.3g} ms" for k, v in sorted(timed.items(), key=lambda kv: kv[1]))
    return f"{screens} ({choice.get('how')}; ms per chunk step: {parts or '-'})"


def peers(res: dict[str, Any]) -> str:
    """The peers table, per model."""
    p = res.get("peers")
    if not p or not p.get("models"):
        return ""
    m0 = res.get("machine_start", {})
    versions = p.get("versions") or {}
    out = [
        "## causalshift against tuned-lens and TransformerLens\n",
        f"CPU class: {cpu_class(m0)}. Versions: "
        + ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items())
        + f". torch dispatched to {p.get('cpu_capability', '?')}. Each contender decodes "
        "every layer of the same token windows of `wiki` with the same model object (loaded "
        "by causalshift; TransformerLens boots on a copy), batch 8, 2 threads, in alternating "
        "order (`bench/peers.py`); tokens/s = tokens / median seconds.\n",
    ]
    for m in p["models"]:
        out += _peer_model(m)
    return "\n".join(out) + "\n"


def _peer_model(m: dict[str, Any]) -> list[str]:
    tps = m["tokens_per_second"]
    rows = []
    for k, label in PEER_LABELS.items():
        if k not in tps:
            continue
        rows.append(
            {
                "implementation": label,
                "tokens/s": tps[k],
                "causalshift x": tps["causalshift"] / tps[k] if k != "causalshift" else 1.0,
                "max |top-k rate - causalshift's|": m.get("max_rate_diff", {}).get(k),
            }
        )
    skipped = "".join(f"\n- {k}: skipped, {why}" for k, why in (m.get("skipped") or {}).items())
    per_rep = "; ".join(
        f"{k}: {', '.join(f'{x:.1f}' for x in v)}"
        for k, v in m.get("speedup_vs_per_rep", {}).items()
    )
    return [
        f"\n### {m['model']}, {m['num_seqs']} x {m['seq_len']} tokens, {m['reps']} repetitions\n",
        md_table(rows),
        f"\nScreens (default `--dtype auto`): {_choice_words(m.get('screen_choice'))}; "
        f"counting kernels {'compiled' if m.get('compiled_kernels') else 'eager'}. The lens "
        f"takes {100 * m['lens_share_of_time']:.0f}% of causalshift's time "
        f"({_f(m['causalshift_vs_forward'])}x the forward alone). Speedup per repetition "
        f"(pairs run back to back): {per_rep or '-'}. The rate columns compare per-layer "
        "top-1/top-5 input and output match rates with causalshift's (0 = identical; ties "
        "broken by `torch.topk` could make a peer differ by 1/positions).\n" + skipped,
    ]


def speed(res: dict[str, Any]) -> str:
    """Fixed cost and tokens/s by run size; the probe; the int8 kernels."""
    s = res.get("speed")
    if not s:
        return ""
    return "\n".join(_startup(s, res) + _probe(s) + _kernels(s)) + "\n"


def _startup(s: dict[str, Any], res: dict[str, Any]) -> list[str]:
    rows = [
        {
            "sequences": r["num_seqs"],
            "total s": r["total_s"],
            "tokens/s": r["tokens_per_second"],
            "forward-only tokens/s": r["forward_tokens_per_second"],
            "lens share": f"{100 * r['lens_share_of_time']:.0f}%",
            "fixed s": r["fixed_s"],
            "tokenize / choose / prepare s": (
                f"{r['tokenize_s']:.2f} / {r['choose_s']:.2f} / {r['prepare_s']:.2f}"
            ),
            "first batch extra s": r.get("first_batch_extra_s"),
            "screens": "+".join(r["screens"]),
            "kernels": ("compiled" if r["compiled_kernels"] else "eager")
            + (" (forced)" if r.get("compile_forced") is not None else ""),
        }
        for r in s.get("startup") or []
    ]
    if not rows:
        return []
    r0, fit = s["startup"][0], s.get("fit") or {}
    return [
        f"## Fixed cost and run size ({r0['model']}, {r0['seq_len']} tokens per sequence)\n",
        f"CPU class: {cpu_class(res.get('machine_start', {}))}. Each row is one `run_lens` "
        "call as `analyze` makes it (default screen, batch 8) in a fresh process "
        "(`bench/speed.py`), after one untimed run that warmed the caches a first use fills "
        "(the probe's, inductor's); the model's load is timed apart and not counted. "
        "*Fixed* = everything in the call that is not a batch (tokenization, the screen "
        "choice, preparing U) plus what the first batch took beyond the later ones' median "
        "(compiling, first calls); *lens share* = 1 - forward-only time / total. Rows marked "
        "*forced* ran the smaller sizes again with the counting kernels compiled or eager, "
        "whichever the engine's rule (`COMPILE_AFTER`) did not pick: where compiling pays.\n",
        md_table(rows),
        f"\nA line through the totals: fixed cost {_f(fit.get('fixed_s'))} s, "
        f"{_f(fit.get('per_sequence_s'))} s per sequence.\n",
    ]


def _probe(s: dict[str, Any]) -> list[str]:
    pr = s.get("probe")
    if not pr:
        return []
    rows = []
    for name, t in pr["timings_ms"].items():
        rows.append(
            {
                "screen": name,
                "chunk step ms": t.get("matmul"),
                "prepare a chunk ms": t.get("prepare"),
                "note": t.get("skipped", ""),
            }
        )
    picks = "; ".join(
        f"{p['num_seqs']} sequences: {' then '.join(p['screens'])}" for p in pr.get("picks", [])
    )
    return [
        "\n### The screen the probe chose, and why\n",
        f"`lens/probe.py` measured afresh in {pr['seconds']:.3f} s (its budget for full-size "
        f"timings: {pr['budget_s']} s), on {256} rows x 4,096 columns x d = {pr['hidden']}: "
        "quantize the rows and multiply (median of 3 after a warm-up), and prepare one chunk. "
        "The choice minimizes chunks x prepare + (the pruned lens's 25% of the dense work) x "
        "step for the run's size, float32 unless another screen is 10% cheaper.\n",
        md_table(rows),
        f"\nPicked for Gemma-3-sized runs of 128 tokens: {picks}.\n",
    ]


def _kernels(s: dict[str, Any]) -> list[str]:
    k = s.get("kernels")
    if not k:
        return []
    sat = k.get("saturation") or {}
    sat_words = "; ".join(
        f"{name}: 7-bit rows off by {v['7_bit']:.3g}, 8-bit rows off by {v['8_bit']:.3g}"
        for name, v in sat.items()
        if v
    )
    prep = ", ".join(f"{n} {ms:.3g}" for n, ms in k.get("prepare_ms", {}).items())
    return [
        "\n### The screens' kernels on the chunk shape\n",
        f"G(FL)OP/s of each screen's chunk step (quantize the rows, multiply by a prepared "
        f"chunk of {k['vocab_chunk']:,} x {k['hidden']}), interleaved, median of {k['reps']} "
        "(int8-intmm only at 256 rows: without VNNI it is a reference loop):\n",
        md_table(k["gflops"]),
        f"\nPreparing one chunk (ms): {prep}. Exactness of the quantized-linear kernels "
        f"against the integer products, rows at their extremes against +-127 weights: "
        f"{sat_words or '-'} (8-bit rows saturate vpmaddubsw's int16 pair sums on CPUs "
        "without VNNI: the reason the int8 screen sends 7-bit rows to these kernels).\n",
    ]
