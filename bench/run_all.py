"""Run every benchmark at CPU sizes (`make bench`, about 20-25 minutes on 2 cores) and write
docs/benchmarks.md from the measurements (raw numbers in bench/results.json). The peers
(tuned-lens, TransformerLens) are the `bench` extra, which `make bench` installs.

    python -m bench.run_all                  # everything, CPU sizes
    python -m bench.run_all --quick          # toy sizes: checks the pipeline in ~2 minutes
    python -m bench.run_all --only lens,train --device cuda --gemma2-2b-shape
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, machine, quiet_openmp

SECTIONS = (
    "peak",
    "lens",
    "scaling",
    "retire",
    "memory",
    "weights_memory",
    "train",
    "train_logits",
    "prepare",
    "speed",
    "peers",
)


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(
            lens=dict(num_seqs=2, seq_len=24, reps=1),
            layout=dict(vocab=32768, rows=256, reps=1),
            scaling=dict(
                seqs=(1, 2),
                seq_lens=(16, 32),
                base_len=16,
                layers=(2, 4),
                vocabs=(8192, 32768),
                random_tokens_shape=(1, 16),
            ),
            memory=[
                dict(num_seqs=2, seq_len=16, layers=2, vocab=8192),
                dict(num_seqs=8, seq_len=16, layers=2, vocab=8192),
            ],
            train=dict(preset="tiny", batch_size=4, steps=1, reps=1),
            modes=dict(preset="tiny", batch_size=4, steps=1, reps=1),
            growth=dict(rows=(("tiny", 4), ("tiny", 8)), steps=1),
            prepare=dict(data="wiki", max_docs=20, reps=1),
            wmem=dict(vocab=32768),
            retire=(1, 16),
            logits=dict(preset="tiny", batch_size=4, steps=1, reps=1),
            speed=dict(
                model="smollm2-135m",
                seqs=(1, 2),
                seq_len=16,
                kernels=dict(hidden=576, vocab_chunk=512, rows=(16,), reps=1),
            ),
            peers=dict(models=("smollm2-135m",), num_seqs=1, seq_len=16, reps=1, batch_size=8),
        )
    return dict(
        lens=dict(num_seqs=8, seq_len=64, reps=3),
        layout=dict(vocab=65536, rows=512, reps=2),
        scaling=dict(
            seqs=(1, 2, 4),
            seq_lens=(32, 64, 128),
            base_len=32,
            layers=(6, 12, 24),
            vocabs=(32768, 131072, 262144),
            random_tokens_shape=(2, 64),
        ),
        memory=[
            dict(num_seqs=4, seq_len=64, batch_size=4),
            dict(num_seqs=16, seq_len=64, batch_size=4),
            dict(num_seqs=4, seq_len=256, batch_size=4),
            dict(num_seqs=16, seq_len=64, batch_size=16),
            dict(num_seqs=4, seq_len=64, batch_size=4, layers=24),
            dict(num_seqs=4, seq_len=64, batch_size=4, vocab=262144),
            dict(num_seqs=64, seq_len=64, batch_size=4),
            dict(model="gemma-3-270m", num_seqs=8, seq_len=64, batch_size=8),
            dict(model="gemma-3-270m", num_seqs=32, seq_len=64, batch_size=8),
        ],
        train=dict(preset="cpu-small", batch_size=4, steps=3, reps=3),
        modes=dict(preset="cpu-small", batch_size=2, steps=2, reps=9),
        growth=dict(rows=(("tiny", 8), ("tiny", 32), ("cpu-small", 2), ("cpu-small", 8)), steps=2),
        prepare=dict(data="books", max_docs=300, reps=9),
        wmem=dict(vocab=262144),
        retire=(2, 64),
        logits=dict(preset="cpu-small", batch_size=4, steps=2, reps=4),
        speed=dict(
            model="gemma-3-270m",
            seqs=(1, 4, 32),
            seq_len=128,
            kernels=dict(hidden=640, vocab_chunk=4096, rows=(256, 2048), reps=3),
        ),
        peers=dict(
            models=("gemma-3-270m", "smollm2-135m"), num_seqs=8, seq_len=128, reps=3, batch_size=8
        ),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench import common, lens, prepare, train

    sizes = _sizes(args.quick)
    dev = args.device
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    res: dict[str, Any] = {"machine_start": machine(dev), "sizes": sizes, "timing": {}}
    if args.only and Path(args.json).is_file():  # update those sections of the last run
        res = {**json.loads(Path(args.json).read_text(encoding="utf-8")), "sizes": sizes}
        res.setdefault("timing", {})
        res.setdefault("updated_sections", []).append(
            {"sections": sorted(only), "machine": machine(dev), "date": time.ctime()}
        )

    def section(name: str, fn) -> None:
        if name not in only:
            return
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        res[name] = fn()
        res["timing"][name] = round(time.perf_counter() - t0, 1)
        print(f"[bench] {name} done in {res['timing'][name]} s", flush=True)
        _dump(res, args.json)

    big = (8192,) * 3 if dev.startswith("cuda") else (512 if args.quick else 2048,) * 3
    section("peak", lambda: common.matmul_peak(size=big, device=dev))
    peak = res.get("peak") or common.matmul_peak(size=(512,) * 3, device=dev)
    _lens_sections(section, sizes, dev, peak, args.gemma2_2b_shape)
    section("memory", lambda: lens.memory(sizes["memory"]) if dev == "cpu" else [])
    section(
        "weights_memory",
        lambda: (
            [
                common.in_subprocess("bench.lens:weights_memory_probe", sizes["wmem"])
                for _ in range(2)
            ]
            if dev == "cpu"
            else []
        ),
    )
    section("train", lambda: _train_section(sizes, dev, peak))
    section(
        "train_logits",
        lambda: {
            **train.logits_output_cost(device=dev, **sizes["logits"]),
            "loop_overhead": train.loop_overhead(sizes["logits"]["preset"]),
        },
    )
    section("prepare", lambda: prepare.compare(**sizes["prepare"]))
    section("speed", lambda: _speed_section(sizes["speed"]) if dev == "cpu" else {})
    section("peers", lambda: _peers_section(sizes["peers"]) if dev == "cpu" else {})
    res["machine_end"] = machine(dev)
    return res


def _lens_sections(
    section: Callable[[str, Callable[[], Any]], None],
    sizes: dict[str, Any],
    dev: str,
    peak: dict[str, float],
    gemma2_2b_shape: bool,
) -> None:
    """The lens, scaling and retire sections, sharing one loaded Gemma when they can."""
    from bench import lens

    holder: dict[str, Any] = {}

    def lens_section() -> dict[str, Any]:
        if gemma2_2b_shape:
            out = {"gemma2_2b_shape": lens.gemma2_2b_shape(dev, **sizes["lens"])}
            return out
        lm, tokens = lens.gemma_inputs(sizes["lens"]["num_seqs"], sizes["lens"]["seq_len"], dev)
        holder["lm"] = lm
        out = {"gemma": lens.compare(lm, tokens, reps=sizes["lens"]["reps"], device=dev, peak=peak)}
        if not dev.startswith("cuda"):
            out["layout"] = lens.chunk_layout(**sizes["layout"])
        return out

    def inputs(n: int, T: int) -> tuple[Any, Any]:
        lm = holder.get("lm")
        if lm is None:
            return lens.gemma_inputs(n, T, dev)
        from causalshift.corpus import token_sequences

        return lm, token_sequences(lm.tokenizer, "wiki", n, T)

    def scaling_section() -> dict[str, Any]:
        s = sizes["scaling"]
        lm, tokens = inputs(max(s["seqs"]), max(s["seq_lens"]))
        return lens.scaling(lm, tokens, device=dev, **s)

    def retire_section() -> list[dict[str, Any]]:
        lm, tokens = inputs(*sizes["retire"])
        return lens.retirement_by_layer(lm, tokens)

    section("lens", lens_section)
    section("scaling", scaling_section)
    section("retire", retire_section)
    holder.clear()


def _train_section(sizes: dict[str, Any], dev: str, peak: dict[str, float]) -> dict[str, Any]:
    """Trainer vs plain step (compiled and eager), residual modes, growth."""
    from bench import train

    t = sizes["train"]
    out = {
        "compile": train.compare(
            t["preset"],
            batch_size=t["batch_size"],
            steps=t["steps"],
            reps=t["reps"],
            device=dev,
            compile=True,
            peak=peak,
        ),
        "eager": train.compare(
            t["preset"],
            batch_size=t["batch_size"],
            steps=t["steps"],
            reps=max(1, t["reps"] - 1),
            device=dev,
            compile=False,
            peak=peak,
        ),
    }
    m = sizes["modes"]
    out["modes"] = train.residual_modes(
        m["preset"], batch_size=m["batch_size"], steps=m["steps"], reps=m["reps"], device=dev
    )
    out["growth"] = train.growth(device=dev, peak=peak, **sizes["growth"])
    return out


def _speed_section(s: dict[str, Any]) -> dict[str, Any]:
    """Fixed cost and tokens/s by run size (fresh processes), the probe, the int8 kernels."""
    from bench import speed

    rows = speed.startup(s["model"], s["seqs"], s["seq_len"])
    return {
        "startup": rows,
        "fit": speed.fit_fixed_cost(rows),
        "kernels": speed.kernels(**s["kernels"]),
        "probe": speed.probe_record(hidden=s["kernels"]["hidden"]),
    }


def _peers_section(s: dict[str, Any]) -> dict[str, Any]:
    """causalshift against tuned-lens and TransformerLens (a missing peer is a note)."""
    from bench import peers

    return peers.compare(
        s["models"], s["num_seqs"], s["seq_len"], s["reps"], s["batch_size"], threads=2
    )


def _dump(res: dict[str, Any], path: str) -> None:
    Path(path).write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    quiet_openmp()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--quick", action="store_true", help="toy sizes (a check of the pipeline)")
    p.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument(
        "--gemma2-2b-shape",
        action="store_true",
        help="lens section on random weights of Gemma-2-2B's shape (meant for --device cuda)",
    )
    p.add_argument("--json", default=str(REPO / "bench" / "results.json"))
    p.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--no-doc", action="store_true", help="only write the JSON")
    p.add_argument("--render-only", action="store_true", help="rewrite the doc from --json")
    args = p.parse_args(argv)
    if args.render_only:
        from bench.report import render

        res = json.loads(Path(args.json).read_text(encoding="utf-8"))
        Path(args.doc).write_text(render(res), encoding="utf-8")
        return 0
    t0 = time.perf_counter()
    res = run(args)
    cmd = "python -m bench.run_all" + "".join(
        f" {a}" for a in (argv if argv is not None else os.sys.argv[1:])
    )
    if res.get("updated_sections") and args.only:
        res["updated_sections"][-1].update(command=cmd, seconds=round(time.perf_counter() - t0, 1))
    else:
        res["total_seconds"] = round(time.perf_counter() - t0, 1)
        res["command"] = cmd
    _dump(res, args.json)
    if not args.no_doc:
        from bench.report import render

        Path(args.doc).write_text(render(res), encoding="utf-8")
        print(f"[bench] wrote {args.doc} and {args.json} in {res['total_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
