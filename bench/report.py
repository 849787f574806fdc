"""docs/benchmarks.md from the results dict of `bench.run_all` (no measuring here)."""

from __future__ import annotations

import time
from typing import Any

from bench.common import md_table, peak_key


def _f(x: Any, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _machine(res: dict[str, Any]) -> str:
    m0, m1 = res.get("machine_start", {}), res.get("machine_end", {})
    rows = [
        (
            "CPU",
            f"{m0.get('cpu')} ({m0.get('cpu_count')} cores; flags: "
            f"{', '.join(m0.get('cpu_flags', [])) or '-'})",
        ),
        ("torch threads", m0.get("torch_threads")),
        (
            "torch / transformers / python",
            f"{m0.get('torch')} / {m0.get('transformers', '-')} / {m0.get('python')}",
        ),
        ("device", str(m0.get("device", "-")) + (f" ({m0['gpu']})" if m0.get("gpu") else "")),
        (
            "code",
            f"git {m0.get('git_commit', '?')}; uncommitted src files: "
            f"{', '.join(m0.get('uncommitted_src', [])) or 'none'}; lens engine.py sha256 "
            f"{m0.get('engine_sha256', '?')}",
        ),
        ("load average (1, 5, 15 min) at start", m0.get("loadavg")),
        ("load average at end", m1.get("loadavg")),
        ("total benchmark time", f"{res.get('total_seconds', '-')} s"),
    ]
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def _peak_key(contender: str, g: dict[str, Any]) -> str:
    if contender == "ours_fast":
        return peak_key((g.get("fast_screens") or ["bfloat16"])[-1])
    return "bfloat16" if contender == "ours_bf16" else "float32"


def _screens(g: dict[str, Any]) -> str:
    """The fast path's screens in words, e.g. 'int8 screen (bf16 for the first columns)'."""
    sc = [s.replace("bfloat16", "bf16") for s in g.get("fast_screens") or ["bfloat16"]]
    if len(sc) == 1:
        return f"{sc[0]} screen"
    return f"{sc[-1]} screen ({sc[0]} for the first 16,384 columns)"


def _lens(res: dict[str, Any]) -> str:
    L = res.get("lens") or {}
    g = L.get("gemma")
    if not g:
        return ""
    return "\n".join(_lens_speed(g) + _lens_agreement(g) + _lens_peak(g, L.get("layout")))


def _lens_speed(g: dict[str, Any]) -> list[str]:
    """The lens section's timing table and speedups."""
    tps, med = g["tokens_per_second"], g["median_seconds"]
    eff = g["effective_gflops"]
    peak = g.get("matmul_peak_gflops", {})
    names = {
        "plain": "plain (HF hidden states, fp32 logits, torch.topk)",
        "ours_float32": "ours, float32 (`compute_dtype=torch.float32`)",
        "ours_bf16": "ours, bf16 screen (`compute_dtype=torch.bfloat16`)",
        "ours_fast": f"ours, fast path (default `--dtype auto`: {_screens(g)})",
        "forward_only": "model forward only (hooks, no lens)",
    }
    rows = []
    for k, label in names.items():
        if k not in med:
            continue
        rows.append(
            {
                "implementation": label,
                "median s": med[k],
                "runs (s)": ", ".join(f"{t:.1f}" for t in g["seconds"][k]),
                "tokens/s": tps[k],
                "x plain": med["plain"] / med[k] if "plain" in med else None,
                "effective GFLOP/s": eff.get(k),
                "of its screen's matmul peak": _pct(
                    eff[k] / peak[_peak_key(k, g)] if k in eff and _peak_key(k, g) in peak else None
                ),
            }
        )
    out = [
        "## Logit lens on Gemma 3 270M (embedded, float32 weights)\n",
        f"Command: `python -m bench.lens --num-seqs {g['num_seqs']} --seq-len {g['seq_len']} "
        f"--reps {g['reps']}` (the same function runs inside `make bench`). "
        f"{g['num_seqs']} sequences x {g['seq_len']} tokens of `wiki`, batch {g['batch_size']}, "
        f"{g['positions']} decoded positions x {g['layers'] + 1} layers, vocabulary "
        f"{g['vocab']:,}, d = {g['d_model']}. The contenders ran in alternating order "
        f"{g['reps']} times each in one process; times are wall seconds of the whole call "
        "(forward + lens + preparing the unembedding); tokens/s = tokens / median.\n",
        md_table(rows),
        "\nEffective GFLOP/s count the whole (L+1) x 2 x d x V per position; the pruned "
        "paths skip most of it, so they can exceed the matmul peak.\n",
        f"\n**Speedup of the fast path over the plain implementation: "
        f"{_f(g.get('speedup_fast_vs_plain'))}x** (per repetition, each pair run back to back: "
        f"{', '.join(f'{x:.2f}' for x in g.get('speedup_fast_vs_plain_per_rep', []))}); "
        f"fast path vs our bf16 screen: {_f(g.get('speedup_fast_vs_bf16'))}x; "
        f"fast path vs our float32 path: {_f(g.get('speedup_fast_vs_float32'))}x; "
        f"our float32 vs plain: {_f(g.get('speedup_float32_vs_plain'))}x.\n",
    ]
    return out


def _lens_agreement(g: dict[str, Any]) -> list[str]:
    """How far the fast path's metrics are from the float32 and plain ones."""
    out = [
        "\n### Agreement of the metrics\n",
        f"Largest absolute difference over all layers and metrics: fast path vs float32 "
        f"reference **{_f(g.get('max_abs_diff_fast_vs_float32'), '.2e')}** (goal < 0.01; "
        "the ranks are the float32 ranks, see `causalshift.lens.screen`); bf16 screen vs "
        f"float32 {_f(g.get('max_abs_diff_bf16_vs_float32'), '.2e')}; "
        f"plain vs our float32 {_f(g.get('max_abs_diff_plain_vs_float32'), '.2e')}; "
        f"fast path vs plain {_f(g.get('max_abs_diff_fast_vs_plain'), '.2e')}. The cosines and "
        "the projection are float32 in every path; only the top-k columns can differ.\n",
    ]
    flips = g.get("flipped_positions_fast_vs_float32")
    if flips:
        out.append(
            "Top-k hits that differ between the fast path and the float32 reference, at the "
            f"worst layer, out of {g['positions']} positions: "
            + ", ".join(f"{k} {v}" for k, v in flips.items())
            + ". The fast path computes float32 ranks (screen, then float32 re-scoring of "
            "every entry within the screen's error bound), so these should all be 0.\n"
        )
    by_metric = g.get("max_abs_diff_by_metric")
    if by_metric:
        out.append(
            md_table(
                [
                    {"metric": k, "max abs diff (fast vs f32)": f"{v:.2e}"}
                    for k, v in by_metric.items()
                ]
            )
        )
    return out


def _lens_peak(g: dict[str, Any], lay: dict[str, Any] | None) -> list[str]:
    """The projection's throughput against the matmul peak, and the chunk layout."""
    med, eff = g["median_seconds"], g["effective_gflops"]
    peak = g.get("matmul_peak_gflops", {})
    out: list[str] = []
    fwd_share = med["forward_only"] / med["ours_fast"] if "forward_only" in med else None
    main = _peak_key("ours_fast", g)
    by_screen = g.get("executed_fraction_by_screen") or {}
    split = ", ".join(f"{k} {_pct(v)}" for k, v in by_screen.items())
    out += [
        "\n### The projection against this machine's matmul peak\n",
        f"Effective work of the lens projection: (L+1) x 2 x d x V = "
        f"{g['lens_gflop_per_token']:.2f} GFLOP per decoded position. Measured peak "
        f"(2048^3, best of 5, same run): `torch.mm` bf16 {_f(peak.get('bfloat16'))} GFLOP/s, "
        f"float32 {_f(peak.get('float32'))} GFLOP/s; `torch._int_mm` int8 "
        f"{_f(peak.get('int8'))} GOP/s.\n\n"
        f"- Fast path: effective {_f(eff.get('ours_fast'))} GFLOP/s = "
        f"{_pct(g.get('effective_fraction_of_fast_peak'))} of the {main} peak (effective "
        "FLOPs count the whole vocabulary, as a dense implementation must).\n"
        f"- Rows x columns actually multiplied by the pruned path (counted by wrapping the "
        f"screens' matmuls, one extra untimed run): "
        f"**{_pct(g.get('executed_fraction'))} of the dense work** "
        f"({g.get('chunk_matmuls')} chunk matmuls; by screen: {split}); executed "
        f"{_f(g.get('executed_gops_fast'))} G(FL)OP/s = "
        f"{_pct(g.get('executed_fraction_of_fast_peak'))} of the {main} peak, over the whole "
        f"call including the forward pass (the forward alone is {_pct(fwd_share)} of the fast "
        "path's time).\n",
        f"- Preparing the lens' copies of the unembedding (order the vocabulary; round to bf16, "
        "or rotate and quantize to int8, a chunk at a time), "
        f"once per `run_lens` call: {_f(g.get('weights_prepare_seconds'))} s, "
        f"{_pct((g.get('weights_prepare_seconds') or 0) / med['ours_fast'])} of this fast-path "
        "run (a fixed cost that a long `analyze` amortizes).\n",
    ]
    if lay:
        gf = lay["gflops"]
        out.append(
            f"- Chunk matmul layout (micro-benchmark, {lay['rows']} rows x {lay['chunk']}-column "
            f"chunks, bf16): U^T stored (d, V) and sliced by columns: "
            f"{_f(gf['column_slice_of_UT'])} GFLOP/s; U stored (V, d) and sliced by rows "
            f"(contiguous, multiplied transposed, as the engine does): "
            f"{_f(gf['row_slice_of_U'])} GFLOP/s "
            f"({_f(lay['speedup_row_slice'])}x).\n"
        )
    return out


def _scaling(res: dict[str, Any]) -> str:
    s = res.get("scaling")
    if not s:
        return ""
    out = [
        "## How the lens cost grows\n",
        "Fast path, wall seconds of one `run_lens` call (after a warm-up), one run each. "
        "Sequences and seq-len: Gemma 3 270M on `wiki`. Layers and vocabulary: random-weight "
        "Llama models of width 640 (heads of 64, MLP 4x, tied) on random tokens; with random "
        "weights the targets are rarely near the top, so rows retire after the first chunks "
        "and the cost there is mostly the forward pass and the first chunks: these two tables "
        "show the engine's overheads, a trained model's cost per layer is closer to the "
        "Gemma rows.\n",
    ]
    for key, title in (
        ("seqs", "sequences"),
        ("seq_len", "sequence length"),
        ("layers", "layers (random Llama, d=640)"),
        ("vocab", "vocabulary (random Llama, d=640)"),
    ):
        out += [f"\nBy {title}:\n", md_table(s[key])]
    return "\n".join(out)


def _retire(res: dict[str, Any]) -> str:
    rows = res.get("retire")
    if not rows:
        return ""
    n, T = (res.get("sizes") or {}).get("retire", ("?", "?"))
    return "\n".join(
        [
            "\n### Which rows the pruning cannot retire\n",
            f"Fast path on Gemma 3 270M, {n} x {T} tokens of `wiki`: the engine's `decode_ranks` "
            "called once per layer, its screen matmuls counted "
            "(`bench.lens.retirement_by_layer`); per layer, the share of rows that scanned "
            "the whole vocabulary, the share of the dense work executed, and that layer's "
            "top-5 match rates.\n",
            md_table(rows),
        ]
    )


def _memory(res: dict[str, Any]) -> str:
    mem = res.get("memory")
    if not mem:
        return ""
    cols = [
        "model",
        "layers",
        "vocab",
        "num_seqs",
        "seq_len",
        "batch_size",
        "rss_after_load_mib",
        "peak_rss_mib",
        "working_set_mib",
        "seconds",
    ]
    return "\n".join(
        [
            "## Peak memory of the lens\n",
            "Each row is a fresh process (`python -m bench.common bench.lens:memory_probe "
            "'{...}'`): load the model, run the fast path once; resident memory after loading "
            "(VmRSS) and the peak after it (VmHWM from /proc/self/status, reset once the model "
            "is loaded by writing 5 to /proc/self/clear_refs). `random` = random "
            "Llama of width 640 (6 layers, vocabulary 32,768 unless shown). Every weight is "
            "touched before the RSS after load is read (safetensors maps them lazily). Working "
            "set = peak - RSS after load: the lens' own memory, its copies of the unembedding "
            "included.\n",
            md_table(mem, cols),
            "\nHow to read it: the engine streams batches and keeps per-sequence sums and a "
            "bounded cache of layer-0 ranks (at most 64 MiB of states), so the working set "
            "grows only slowly with the number of sequences; most of that growth is the C "
            "allocator's fragmentation over many batches of differently sized temporaries. In "
            "a manual check with glibc's MALLOC_MMAP_THRESHOLD_=131072 (no dynamic threshold; an "
            "earlier version, bf16 screen, batch 4), 4 -> 64 sequences of the random model went "
            "155 -> 200 MiB instead of 157 -> 279 MiB, and Gemma on 16 sequences needed 515 MiB "
            "instead of 693 MiB, about the 4 sequences' 500, but ran 35% slower (every large "
            "temporary is mapped afresh), so the default stays. The screens keep one output "
            "buffer each across chunks for the same reason (page faults). It grows with batch "
            "size x seq-len (the residual states of one batch and the chunk logits of its rows), "
            "hardly "
            "with layers (states of one batch), and linearly with the vocabulary (the lens' "
            "sorted copies of U: see the next table).\n",
        ]
    )


def _weights_memory(res: dict[str, Any]) -> str:
    rows = res.get("weights_memory")
    if not rows:
        return ""
    return "\n".join(
        [
            "\n### Where the lens' working set goes: preparing the unembedding\n",
            "Each row a fresh process (`python -m bench.common bench.lens:weights_memory_probe "
            "'{...}'`), random Llama with Gemma 3's vocabulary and width: extra peak memory and "
            "time of `LensWeights.prepare` (ordering the vocabulary and building the default "
            "screens' copy of U a chunk of rows at a time: bf16, or int8 after the first "
            "16,384 columns). Two runs.\n",
            md_table(rows),
        ]
    )


def _train(res: dict[str, Any]) -> str:
    t = res.get("train")
    if not t:
        return ""
    out = ["## Training\n", *_train_steps(t)]
    out += _train_logits(res.get("train_logits"))
    out += _train_modes(t.get("modes")) + _train_growth(t.get("growth"))
    return "\n".join(out)


def _train_steps(t: dict[str, Any]) -> list[str]:
    """The trainer's step against the plain nanoGPT-style step, compiled and eager."""
    out: list[str] = []
    rows = []
    for key in ("compile", "eager"):
        r = t.get(key)
        if not r:
            continue
        for who in ("ours", "plain"):
            rows.append(
                {
                    "compile": r["compile"],
                    "precision": r["precision"],
                    "step": "causalshift Trainer.train_step"
                    if who == "ours"
                    else "plain nanoGPT-style step (bench/nanogpt.py)",
                    "tokens/s": r["tokens_per_second"][who],
                    "runs (s per block)": ", ".join(f"{x:.2f}" for x in r["seconds"][who]),
                    "MFU": _pct((r.get("mfu") or {}).get(who)),
                }
            )
    c = t.get("compile") or t.get("eager")
    if c:
        out += [
            f"Command: `python -m bench.train --preset {c['preset']} --batch-size "
            f"{c['batch_size']} --steps {c['steps_per_block']} --reps {c['reps']}` (and "
            f"`--no-compile`). Shape {c['shape']}, {c['params'] / 1e6:.1f}M parameters, "
            f"{c['tokens_per_step']} tokens per step, AdamW, grad clip 1.0. Blocks of "
            f"{c['steps_per_block']} steps alternate between the two in one process; MFU = "
            f"tokens/s x {c['flops_per_token'] / 1e6:.1f} MFLOP/token (6N + 12 L d T) / "
            f"measured matmul peak of the precision used.\n",
            md_table(rows),
        ]
        for key in ("compile", "eager"):
            r = t.get(key)
            if r:
                out.append(
                    f"\n**{key}: trainer / plain = {r['ratio_ours_vs_plain']:.3f}** (goal >= "
                    f"0.95; per block pair: "
                    f"{', '.join(f'{x:.3f}' for x in r['ratio_per_rep'])}).\n"
                )
    return out


def _train_logits(lg: dict[str, Any] | None) -> list[str]:
    """What returning the logits costs the plain step."""
    out: list[str] = []
    if lg:
        rows = [
            {
                "step": k,
                "tokens/s relative to the loss-only plain step": v,
                "runs (s per block)": ", ".join(f"{x:.2f}" for x in lg["seconds"][k]),
            }
            for k, v in lg["tokens_per_second_vs_plain"].items()
        ]
        out += [
            "\n### Where the trainer's gap to the plain step comes from\n",
            f"`bench.train.logits_output_cost` ({lg['preset']}, batch {lg['batch_size']}, "
            f"compile, blocks of {lg['steps_per_block']} steps, {lg['reps']} rounds, "
            "alternating): the plain step as above, the same plain step whose compiled forward "
            "also returns the (B, T, V) logits (as `causalshift.gpt.GPT.forward` did before "
            "training switched to `return_logits=False`), and the "
            "trainer.\n",
            md_table(rows),
        ]
    return out


def _train_modes(m: dict[str, Any] | None) -> list[str]:
    """The residual modes' cost against the baseline."""
    out: list[str] = []
    if m:
        paired = m.get("overhead_vs_none_paired", {})
        rows = [
            {
                "residual": k,
                "tokens/s": v,
                "cost vs none (medians)": _pct(m["overhead_vs_none"][k]),
                "cost vs none (paired)": _pct(paired.get(k)),
            }
            for k, v in m["tokens_per_second"].items()
        ]
        out += [
            "\n### Residual modes\n",
            f"Command: `python -m bench.train --preset {m['preset']} --batch-size "
            f"{m['batch_size']} --modes`. One Trainer per mode (compile {m['compile']}), blocks "
            f"of {m['steps_per_block']} steps in alternating order, {m['reps']} rounds; cost = "
            "tokens/s(none) / tokens/s(mode) - 1 from the medians, and *paired*: the median "
            "over rounds of the block's time over `none`'s block in the same round (goal <= "
            "3%; the per-block seconds are in bench/results.json).\n",
            md_table(rows),
        ]
    return out


def _train_growth(g: list[dict[str, Any]] | None) -> list[str]:
    """Trainer throughput by model size."""
    out: list[str] = []
    if g:
        out += [
            "\n### Trainer throughput by model size and tokens per step\n",
            "One Trainer each (compile, bf16 autocast where the CPU supports it), median of "
            "blocks of steps after a warm-up.\n",
            md_table(
                [{**r, "mfu": _pct(r.get("mfu"))} for r in g],
                ["preset", "params", "tokens_per_step", "precision", "tokens_per_second", "mfu"],
            ),
        ]
    return out


def _prepare(res: dict[str, Any]) -> str:
    p = res.get("prepare")
    if not p:
        return ""
    rows = [
        {"what": k, "tokens/s": v, "runs (s)": ", ".join(f"{x:.2f}" for x in p["seconds"][k])}
        for k, v in p["tokens_per_second"].items()
    ]
    return "\n".join(
        [
            "## `causalshift prepare`\n",
            f"Command: `python -m bench.prepare --data {p['data']} --max-docs {p['documents']} "
            f"--threads {p['threads']}`. The first {p['documents']} documents of `{p['data']}` "
            f"({p['characters']:,} characters, {p['tokens']:,} GPT-2 tokens with one EOT per "
            "document) in memory; `prepare` reads them from a .jsonl file, encodes, splits "
            "train/val and writes fsynced uint16 shards; the reference is tiktoken's "
            f"`encode_ordinary_batch(docs, num_threads={p['threads']})` alone. Alternating, "
            f"{p['reps']} runs each.\n",
            md_table(rows),
            f"\n**prepare / tiktoken = {p['ratio_prepare_vs_tiktoken']:.3f}**.\n",
        ]
    )


GPU = """## GPU (not measured yet)

No GPU was available to the session that wrote this page, so **no GPU number is measured
yet**. `bench/gpu_check.sh` prints them in one go (under 8 minutes on one GPU; the test
suite runs it with `--device cpu` at tiny sizes): analyze throughput and the bf16-peak
fraction on a Gemma-2-2B-shaped random model, `gpt2-124m` training tokens/s and MFU for
`none` and `gate`, and `eval` on the local tasks, on CUDA; it also writes them as JSON.
The code paths it calls:

- `python -m bench.run_all --device cuda --only peak,lens,train --gemma2-2b-shape`
- `python -m bench.lens --device cuda --gemma2-2b-shape --num-seqs 16 --seq-len 256
  --batch-size 8`: the fast path on random weights of Gemma-2-2B's shape (hidden 2304, 26
  layers, vocabulary 256,000, 8/4 heads, MLP 9216; built with
  `AutoConfig.for_model("gemma2", ...)`, bf16 weights), its tokens/s and the projection's
  effective GFLOP/s against the bf16 `torch.mm` peak (8192^3) measured in the same run.
- `python -m bench.train --device cuda --preset gpt2-124m --batch-size 16 --steps 5`:
  GPT-2 124M training tokens/s and MFU of the trainer against the plain step.
"""


CODE_CHOICES = """## Measurements behind choices in the code

The code says why it does what it does; what was measured on the developers' machine (AMD
EPYC Zen 4, 2 cores, AVX-512 bf16 + VNNI, no AMX) when each choice was made is kept here,
so that the numbers can be re-measured and do not go stale in comments:

- `lens/engine.py` `VOCAB_CHUNK = 4096` (CPU): the fastest of 2,048-16,384 columns per
  chunk with the bf16 screen, about 10% over 16,384 while every chunk's logits were a fresh
  tensor; since the screens reuse one output buffer, 4,096-16,384 are within noise.
- `lens/engine.py` gathers the screen's rows of U with `index_select` into a reused buffer:
  2x faster than advanced indexing, which made preparing the bf16 copy 0.42 s -> 0.15 s.
- `lens/kernels.py`: eager PyTorch materialises every float copy and boolean mask of the
  counting kernels (`count_above` ~20x slower eager than compiled on CPU); one reduction
  per threshold is 3x faster than a single (n, J, Vc) comparison (2.3x, compiled, float32
  and int32, on the AVX2 EPYC below), though it compiles once per number of targets.
- `lens/screen.py`: each screen keeps one output buffer; a fresh int32 output of tens of MB
  per chunk, page-faulted in every time, halved `torch._int_mm`'s rate (3000 x 4096: 464 vs
  810 GOP/s). The int8 screen's matmul ran about 2x the bf16 one with VNNI.
- `gpt/model.py` `GPT.forward(..., return_logits=False)` for training: a compiled graph that
  need not hand back the (B, T, V) logits ran ~9% faster (`bench.train.logits_output_cost`;
  4.6% in the run above).
- `train/command.py` sets `OMP_WAIT_POLICY=PASSIVE`: with spinning OpenMP threads, training
  steps ran ~1.7x slower on the 2 shared cores while another process was busy.

Measured on an AVX2-only AMD EPYC (Zen 3 class: no AVX-512, bf16 or VNNI; 2 cores shared
with other jobs, so rates and ratios, never times, and noisy ones) when the screen choice
became a measurement (issue 15):

- `lens/screen.py`, the int8 screen's kernels: on the chunk shape (256-4,096 rows x 4,096
  x 640) float32 `torch.mm` ran 42-77 GFLOP/s, oneDNN's quantized linear
  (`torch.ops.onednn.qlinear_pointwise`, int8-onednn) 109-168 GOP/s, FBGEMM's
  (`torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32`, int8-fbgemm)
  96-134 GOP/s, `torch._int_mm` 2.4 GOP/s (a reference loop) and bf16 `torch.mm` 8.8
  GFLOP/s. Both quantized kernels multiply u8 rows by s8 weights with vpmaddubsw on this
  CPU, which adds two products into a saturating int16: with 8-bit rows (u8 up to 255)
  against weights of 127 their results were off by 1.0e7 (d = 640), with 7-bit rows (u8 at
  most 127, pair sums at most 32,258) exact, at d = 64 and d = 2,304 alike
  (`tests/lens/test_screen.py`). Hence 7-bit rows (+-63, zero point 64, scale 1: integer
  inputs quantize exactly) and 8-bit chunks; the rows' share of the band is about twice
  the 8-bit one's. The dynamic-quantization entry points (`quantized.linear_dynamic`)
  choose their own per-tensor scale and zero point (and, with `reduce_range`, 7 bits): not
  used, since a bound needs the quantization to be ours.
- `lens/probe.py`: choosing by CPU flags picked float32 here, which was right against
  bf16 and `torch._int_mm` but missed the quantized kernels at about twice float32's
  rate; the probe times the screens themselves. A screen other than float32 must be 10%
  cheaper (its band is wider: more entries re-scored); the estimate takes 25% of the dense
  work as multiplied (Gemma 3 270M on wiki, the "executed" figure above).
- `lens/engine.py` `COMPILE_AFTER = 4e9` rows x columns: importing inductor took 3.4 s of
  CPU time and compiling the counting kernels 2.4 s more (inductor's disk cache warm) on
  this loaded machine, while eager counting costs about 20-30x the compiled kernels per
  entry (18-33 against 0.7-1.6 ns): small runs count eagerly, runs of more than about 6
  sequences of 128 tokens of Gemma 3 compile (once per process).
- `lens/engine.py` `LensWeights.prepare`: a float32 screen keeps the rows it gathered from
  U (one copy, not two): the second copy was 2.1 s of 3.4 s preparing Gemma 3's float32
  chunks on this loaded machine.
"""


def _findings(res: dict[str, Any]) -> str:
    """What the numbers say about the goals, and proposals (derived from this run)."""
    out = ["## Findings and proposals (from this run's numbers)\n"]
    peak = res.get("peak") or {}
    g = (res.get("lens") or {}).get("gemma")
    if g and peak:
        out += _lens_findings(g, peak, res.get("machine_start", {}).get("cpu_flags") or [])
    out += _train_findings(res)
    return "\n".join(out) + "\n"


def _lens_findings(g: dict[str, Any], peak: dict[str, float], flags: list[str]) -> list[str]:
    """The lens' speedup against the goal, where the time goes, the int8 screen."""
    out: list[str] = []
    pb, pf = peak.get("bfloat16", float("nan")), peak.get("float32", float("nan"))
    main = _peak_key("ours_fast", g)
    pm = peak.get(main, float("nan"))
    frac = g.get("executed_fraction") or 1.0
    per_pos = g["lens_gflop_per_token"]
    med = g["median_seconds"]
    ms_pos = 1e3 * med["ours_fast"] / g["positions"]
    speedup = g.get("speedup_fast_vs_plain") or 0.0
    verdict = "meets" if speedup >= 10 else "short of"
    fwd = med.get("forward_only", 0.0) / med["ours_fast"]
    prep = (g.get("weights_prepare_seconds") or 0.0) / med["ours_fast"]
    out.append(
        f"- **Lens speedup {_f(speedup)}x over the plain implementation, {verdict} the 10x "
        f"goal in this run**, with the {_screens(g)} "
        f"({_f(g.get('speedup_fast_vs_bf16'))}x the bf16 screen alone). On this CPU "
        f"(flags: {', '.join(flags) or '-'}) the bf16 matmul peak is {pb / pf:.2f}x the "
        f"float32 peak and `torch._int_mm`'s {peak.get('int8', float('nan')) / pf:.2f}x "
        f"({_f(pb)}, {_f(peak.get('int8'))} and {_f(pf)} G(FL)OP/s); the plain path itself "
        f"runs at {_pct(g['effective_gflops'].get('plain', 0) / pf)} of the float32 peak. "
        f"The pruned path multiplies {_pct(frac)} of the dense rows x columns, so at the "
        f"{main} peak the projection alone could be about ({main}/fp32 peak) / executed "
        f"fraction = {(pm / pf) / frac:.1f}x a dense float32 projection; on top of it come "
        f"the forward pass ({_pct(fwd)} of the fast path's time) and preparing the lens' "
        f"copies of U ({_pct(prep)})."
    )
    out.append(
        "- What is left is mostly rows whose target really is in the top-k (see the "
        "table above: per layer, the share of rows scanning the whole vocabulary tracks "
        "that layer's top-5 match rates). Such a row is only decided once every other "
        "entry is known to be below its target, and the norm bound |z_v| <= |h| |U_v| "
        "never stops it early on Gemma 3, whose unembedding rows all have nearly the same "
        "norm. A low-rank split does not help either (a manual check on Gemma 3, 2 x 64 "
        "tokens): with U rotated to its principal axes, the top 128 of 640 dimensions hold "
        "56% of U's energy, but the normed states keep 0.85-0.92 of their norm outside "
        "them and U's rows 0.69, so the Cauchy-Schwarz bound on the rest is about "
        "0.6 |h| |U_v|, above a typical target's logit. What does help for those rows is "
        "a cheaper screen: the int8 one. The fast path executes its matmuls at "
        f"{_pct(g.get('executed_fraction_of_fast_peak'))} of the {main} peak over the "
        f"whole call; a dense {main} projection at the peak would need "
        f"{per_pos / pm * 1e3:.0f} ms per position, the fast path took {ms_pos:.0f} ms."
    )
    out.append(
        "- *The int8 screen.* Gemma 3's residual states have outlier channels (max |h_j| "
        "~ 9-14x the RMS) and so do its unembedding rows: per-row int8 without a "
        "rotation gives an error bound of 2-3% (h) plus 5% (U, per chunk) of |h| |U_v|, "
        "about 8x bf16's, and an earlier attempt on that basis was slower than bf16. A "
        "block-Hadamard rotation of both sides (blocks of 32 dims; x . y = 32 h . U "
        "exactly) spreads the outliers: 0.7-0.8% (h) and 1.2-1.4% (U), so the band "
        "around a top-k target holds only a few entries (a manual check: 3-5 entries on "
        "average within 1.5% of |h| |U|, 8-15 within 3%). `torch._int_mm` runs about 2x "
        "the bf16 matmul at these shapes, provided its output buffer is reused: a fresh "
        "int32 output of tens of MB per chunk is page-faulted in every time, which halved "
        "its rate (3000 x 4096 outputs: 464 vs 810 GOP/s in a micro-benchmark), so each "
        "screen keeps one buffer. The first 16,384 columns (the text's own tokens first, "
        "where most rows are decided and targets often sit close to competitors) stay on "
        "the bf16 screen: with int8 everywhere the re-scored entries grew 8x (127k vs "
        "15k on 8 x 64 tokens), with bf16 first 2.5x."
    )
    flips = g.get("flipped_positions_fast_vs_float32") or {}
    if any(flips.values()):
        out.append(
            "- *Correctness*: top-k hits differed from the float32 reference at "
            f"{', '.join(f'{k} {v}' for k, v in flips.items() if v)} position(s); the "
            "screen re-scores every entry within its error bound, so this is a bug."
        )
    else:
        out.append(
            "- The fast path's top-k hits equal the float32 reference's (every entry "
            "within the screen's error bound of a target is re-scored in float32); the "
            "metrics differ by "
            f"{_f(g.get('max_abs_diff_fast_vs_float32'), '.1e')} at most: the float "
            "rounding of the sums."
        )
    return out


def _train_findings(res: dict[str, Any]) -> list[str]:
    """The trainer against the plain step, the logits output, the residual modes."""
    out: list[str] = []
    t = res.get("train") or {}
    for key in ("compile", "eager"):
        r = t.get(key)
        if r:
            verdict = "meets" if r["ratio_ours_vs_plain"] >= 0.95 else "misses"
            out.append(
                f"- Training ({key}): the trainer's step ran at "
                f"{r['ratio_ours_vs_plain']:.3f}x the plain step's tokens/s ({verdict} the "
                "0.95 goal in this run)."
            )
    lg = res.get("train_logits")
    if lg:
        r = lg["tokens_per_second_vs_plain"]
        lo = lg.get("loop_overhead") or {}
        ms = (lo.get("sampler_ms") or 0) + (lo.get("bookkeeping_ms") or 0)
        out.append(
            "- *The logits output.* The trainer's work around the model (sampler, statistics "
            f"sync, lr update) costs {ms:.2f} ms per step timed alone: negligible. Returning the "
            "(B, T, V) logits from the compiled forward cost the plain step "
            f"{_pct(1 - r['plain_returning_logits'])} in this run, so training now calls "
            "`GPT.forward(idx, targets, return_logits=False)`: the trainer ran at "
            f"{r['trainer']:.3f}x the loss-only plain step here. Earlier runs, before that "
            "change and on a busier machine, gave the trainer 0.88-0.94x.\n"
        )
    m = t.get("modes")
    if m:
        est = m.get("overhead_vs_none_paired") or m["overhead_vs_none"]
        worst = max((v, k) for k, v in est.items() if k != "none")
        verdict = "meets" if worst[0] <= 0.03 else "misses"
        out.append(
            f"- Residual modes: the largest paired cost over `none` was {worst[1]} at "
            f"{_pct(worst[0])} ({verdict} the 3% goal in this run); the modes add one "
            "multiply per block on the residual (and a softmax over L+1 logits for the gate), "
            "so differences of a few percent of either sign are this machine's noise."
        )
    return out


def render(res: dict[str, Any]) -> str:
    peak = res.get("peak") or {}
    head = [
        "# Benchmarks\n",
        f"Written by `{res.get('command', 'python -m bench.run_all')}` (`make bench`) on "
        f"{time.strftime('%Y-%m-%d %H:%M')}; raw numbers in `bench/results.json`. Every "
        "comparison was measured side by side in one process, in alternating order, and is "
        "reported as medians and ratios. The machine may be shared with other jobs (see the "
        "load average: near or above the core count means the benchmark got a fraction of "
        "them), so absolute times are noisy and only the ratios of neighbouring runs are the "
        "claim.\n",
        _machine(res),
        "".join(
            f"\nSections {', '.join(u['sections'])} were measured again by "
            f"`{u.get('command', '')}` on {u['date']} (load average {u['machine']['loadavg']}; "
            f"git {u['machine'].get('git_commit', '?')}, uncommitted src: "
            f"{', '.join(u['machine'].get('uncommitted_src') or []) or 'none'}, lens engine.py "
            f"sha256 {u['machine'].get('engine_sha256', '?')}).\n"
            for u in res.get("updated_sections", [])
        ),
        "\n## Matmul peak\n",
        f"`torch.mm` on 2048 x 2048 x 2048 matrices, best of 5 (interleaved): bf16 "
        f"**{_f(peak.get('bfloat16'))} GFLOP/s**, float32 **{_f(peak.get('float32'))} "
        f"GFLOP/s**; `torch._int_mm` int8 **{_f(peak.get('int8'))} GOP/s**. Used as the "
        "denominator of every utilization figure below.\n",
    ]
    from bench.report_speed import peers, speed

    parts = [
        peers(res),
        speed(res),
        _lens(res) + _retire(res),
        _scaling(res),
        _memory(res) + _weights_memory(res),
        _train(res),
        _prepare(res),
        _findings(res),
    ]
    parts += [CODE_CHOICES, GPU]
    return "\n".join(head + [p for p in parts if p])
