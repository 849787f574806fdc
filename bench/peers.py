"""The logit lens through its peers, side by side with causalshift on the same model and text.

- tuned-lens 0.2.0: its stock `LogitLens` (the model's final norm and unembedding, copied by
  `tuned_lens.nn.Unembed`) on the hidden states of a Hugging Face forward
  (`output_hidden_states=True`; the last layer is the model's own logits, as tuned-lens
  does), full float32 logits per layer, top-k by hand (`torch.topk`).
  tuned-lens 0.2.0 finds the final norm of GPT-2/NeoX/OPT/Bloom/Llama models only, so for
  other families (Gemma 3) its `Unembed` is given the model's own norm and lm_head; its
  check for TransformerLens models is turned off (TransformerLens 4 removed the class it
  looks for, so the check raises).
- TransformerLens 4.3.0: `TransformerBridge.boot_transformers(name, hf_model=...)` around a
  copy of the model causalshift loaded (booting rewires the HF model it is given),
  `run_with_cache`, `cache.accumulated_resid(apply_ln=True)` and `bridge.unembed` per layer,
  top-k by hand.
- causalshift: `run_lens` with its default screen (`--dtype auto`), and the model's forward
  alone (the ceiling).

Same tokens (`wiki`), batch size and threads for all; interleaved repetitions. The per-layer
top-1/top-5 rates of the input (t_i) and output (t_{i+1}) tokens must agree. The peers are an
optional extra (`pip install -e ".[bench]"`, which `make bench` runs): a missing one is
skipped with a note.

    python -m bench.peers [--model gemma-3-270m] [--num-seqs 8] [--seq-len 128] [--reps 3]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from bench.common import alternate, emit, machine, median, quiet_openmp

# distribution -> module, and the version the comparison was written for
PEERS = {"tuned-lens": ("tuned_lens", "0.2.0"), "transformer-lens": ("transformer_lens", "4.3.0")}
# causalshift's embedded models under the names TransformerLens knows them by
TL_NAMES = {"gemma-3-270m": "google/gemma-3-270m", "smollm2-135m": "HuggingFaceTB/SmolLM2-135M"}


def peer_versions() -> dict[str, str | None]:
    """The installed version of each peer (None: not installed)."""
    out: dict[str, str | None] = {}
    for dist, (module, _) in PEERS.items():
        try:
            out[dist] = version(dist) if importlib.util.find_spec(module) else None
        except PackageNotFoundError:
            out[dist] = None
    return out


# ---------------------------------------------------------------------------------------------
# Top-k rates by hand (the peers give logits; we count)


class TopK:
    """Per-layer top-k hit counts of the input and output tokens at positions s..T-2."""

    def __init__(self, layers: int, topk: tuple[int, ...], first: int) -> None:
        import torch

        self.topk, self.first = topk, first
        self.hits = torch.zeros(layers, 2 * len(topk), dtype=torch.float64)
        self.positions = 0

    def add(self, layer: int, logits: Any, batch: Any) -> None:
        """logits (B, T, V) of one layer for token windows batch (B, T)."""
        s, T = self.first, batch.shape[1]
        top = logits[:, s : T - 1].float().topk(max(self.topk), dim=-1).indices  # (B, P, K)
        inp = batch[:, s : T - 1, None].to(top.device)
        out = batch[:, s + 1 :, None].to(top.device)
        for i, k in enumerate(self.topk):
            self.hits[layer, 2 * i] += float((top[..., :k] == inp).any(-1).sum())
            self.hits[layer, 2 * i + 1] += float((top[..., :k] == out).any(-1).sum())
        if layer == 0:
            self.positions += inp.numel()

    def columns(self) -> list[str]:
        return [f"top{k}_{t}" for k in self.topk for t in ("input", "output")]

    def rates(self) -> Any:
        return self.hits / max(1, self.positions)


def _batches(tokens: Any, batch_size: int) -> list[Any]:
    return [tokens[i : i + batch_size] for i in range(0, len(tokens), batch_size)]


# ---------------------------------------------------------------------------------------------
# Contenders


def tuned_lens_fn(lm: Any, tokens: Any, topk: tuple[int, ...], batch_size: int) -> Callable:
    """tuned-lens's stock LogitLens over every hidden state, top-k by hand."""
    import torch
    from tuned_lens import model_surgery
    from tuned_lens.nn import LogitLens
    from tuned_lens.nn.unembed import Unembed

    from causalshift.lens.metrics import first_position

    # tuned-lens 0.2.0 checks isinstance(model, transformer_lens.HookedTransformer) when
    # TransformerLens is importable; TransformerLens 4 removed that class (the check raises
    # ImportError), so the check is turned off: our models are Hugging Face models anyway.
    model_surgery._transformer_lens_available = False
    try:
        lens = LogitLens.from_model(lm.model)
    except (NotImplementedError, ValueError):  # families tuned-lens 0.2.0 does not know
        unembed = Unembed.__new__(Unembed)
        torch.nn.Module.__init__(unembed)
        unembed.final_norm = copy.deepcopy(lm.norm)
        unembed.unembedding = copy.deepcopy(lm.model.get_output_embeddings())
        lens = LogitLens(unembed)
    s = first_position(tokens, lm.bos_token_id)

    def run() -> TopK:
        acc = TopK(lm.num_layers + 1, topk, s)
        with torch.inference_mode():
            for batch in _batches(tokens, batch_size):
                out = lm.model(input_ids=batch, output_hidden_states=True, use_cache=False)
                # as tuned-lens's own code: the lens on hidden_states[:-1], and the model's
                # logits for the last layer (transformers may hand back that state normed)
                for layer, h in enumerate(out.hidden_states[:-1]):
                    acc.add(layer, lens(h, layer), batch)
                acc.add(len(out.hidden_states) - 1, out.logits, batch)
        return acc

    return run


def transformer_lens_fn(lm: Any, tokens: Any, topk: tuple[int, ...], batch_size: int) -> Callable:
    """TransformerLens: accumulated_resid(apply_ln=True) then unembed, top-k by hand."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    from causalshift.lens.metrics import first_position

    bridge = TransformerBridge.boot_transformers(
        TL_NAMES.get(lm.name, lm.name),
        hf_model=copy.deepcopy(lm.model),  # booting rewires the model it is given
        tokenizer=lm.tokenizer,
        device="cpu",
    )
    s = first_position(tokens, lm.bos_token_id)

    def run() -> TopK:
        acc = TopK(lm.num_layers + 1, topk, s)
        with torch.inference_mode():
            for batch in _batches(tokens, batch_size):
                _, cache = bridge.run_with_cache(batch)
                stack = cache.accumulated_resid(apply_ln=True)  # (L+1, B, T, d)
                for layer in range(stack.shape[0]):
                    acc.add(layer, bridge.unembed(stack[layer]), batch)
        return acc

    return run


def causalshift_rates(run: Any, columns: list[str]) -> Any:
    """Pooled per-layer rates of a LensRun's columns (L+1, len(columns))."""
    acc = run.accumulator
    means = acc.sums.sum(0) / acc.counts.sum(0)
    return means[:, [acc.names.index(c) for c in columns]]


# ---------------------------------------------------------------------------------------------
# The comparison


def contenders(
    lm: Any, tokens: Any, topk: tuple[int, ...], batch_size: int
) -> tuple[dict[str, Callable], dict[str, str]]:
    """(name -> callable, peer -> why it was skipped) for one loaded model."""
    import torch

    from causalshift.lens.engine import residual_stream, run_lens

    fns: dict[str, Callable] = {
        "causalshift": lambda: run_lens(
            lm, tokens, topk=topk, batch_size=batch_size, progress=False
        ),
    }
    skipped: dict[str, str] = {}
    installed = peer_versions()
    for name, build in (("tuned-lens", tuned_lens_fn), ("transformer-lens", transformer_lens_fn)):
        if installed[name] is None:
            skipped[name] = "not installed (pip install -e '.[bench]', as `make bench` does)"
            continue
        try:
            fns[name] = build(lm, tokens, topk, batch_size)
        except Exception as e:  # noqa: BLE001 - a peer that cannot run this model is a note
            skipped[name] = f"could not run {lm.name}: {type(e).__name__}: {str(e)[:160]}"

    def forward_only() -> None:
        with torch.inference_mode():
            for batch in _batches(tokens, batch_size):
                residual_stream(lm, batch)

    fns["forward_only"] = forward_only
    return fns, skipped


def compare_model(
    model: str,
    num_seqs: int = 8,
    seq_len: int = 128,
    reps: int = 3,
    batch_size: int = 8,
    threads: int = 2,
    topk: tuple[int, ...] = (1, 5),
) -> dict[str, Any]:
    """causalshift vs tuned-lens vs TransformerLens vs the forward alone on one embedded
    model and `num_seqs` x `seq_len` tokens of `wiki`: tokens/s (median of interleaved
    repetitions), ratios, and the largest difference of the per-layer top-k rates between
    causalshift and each peer."""
    import torch

    from causalshift.corpus import token_sequences
    from causalshift.lens.models import load

    torch.set_num_threads(threads)
    lm = load(model)
    tokens = token_sequences(lm.tokenizer, "wiki", num_seqs, seq_len, progress=False)
    return compare_loaded(lm, tokens, reps, batch_size, topk)


def compare_loaded(
    lm: Any, tokens: Any, reps: int = 3, batch_size: int = 8, topk: tuple[int, ...] = (1, 5)
) -> dict[str, Any]:
    """`compare_model` on a loaded LensModel and its token windows (S, T)."""
    import torch

    num_seqs, seq_len = tokens.shape
    fns, skipped = contenders(lm, tokens, topk, batch_size)
    alternate({k: f for k, f in fns.items() if k == "causalshift"}, 1)  # warm-up
    times, last = alternate(fns, reps)
    n_tok = tokens.numel()
    med = {k: median(v) for k, v in times.items()}
    run = last["causalshift"]
    out: dict[str, Any] = {
        "model": lm.name,
        "num_seqs": num_seqs,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "reps": reps,
        "screens": list(run.screens),
        "screen_choice": run.screen_choice.to_dict() if run.screen_choice else None,
        "compiled_kernels": run.compiled,
        "seconds": times,
        "tokens_per_second": {k: n_tok / m for k, m in med.items()},
        "skipped": skipped,
    }
    peers = [k for k in ("tuned-lens", "transformer-lens") if k in med]
    out["speedup_vs"] = {k: med[k] / med["causalshift"] for k in peers}
    out["speedup_vs_per_rep"] = {
        k: [p / c for p, c in zip(times[k], times["causalshift"], strict=True)] for k in peers
    }
    out["lens_share_of_time"] = 1 - med["forward_only"] / med["causalshift"]
    out["causalshift_vs_forward"] = med["causalshift"] / med["forward_only"]
    columns = TopK(1, topk, 0).columns()
    ours = causalshift_rates(run, columns)
    out["rates"] = {"columns": columns, "causalshift": ours.tolist()}
    out["max_rate_diff"] = {}
    for k in peers:
        theirs = last[k].rates()
        out["rates"][k] = theirs.tolist()
        out["max_rate_diff"][k] = float((theirs - ours).abs().max())
    return out


def compare(
    models: tuple[str, ...] = ("gemma-3-270m", "smollm2-135m"),
    num_seqs: int = 8,
    seq_len: int = 128,
    reps: int = 3,
    batch_size: int = 8,
    threads: int = 2,
) -> dict[str, Any]:
    """`compare_model` for each model (`bench.run_all`'s "peers" section), with the peers'
    versions and the ISA torch dispatches to."""
    from causalshift import runtime

    return {
        "versions": peer_versions(),
        "versions_expected": {k: v for k, (_, v) in PEERS.items()},
        "cpu_capability": runtime.cpu_capability(),
        "models": [compare_model(m, num_seqs, seq_len, reps, batch_size, threads) for m in models],
    }


def main(argv: list[str] | None = None) -> int:
    quiet_openmp()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", action="append", help="repeatable (default: Gemma 3 and SmolLM2)")
    p.add_argument("--num-seqs", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)
    models = tuple(a.model or ("gemma-3-270m", "smollm2-135m"))
    res = compare(models, a.num_seqs, a.seq_len, a.reps, a.batch_size, a.threads)
    emit({"machine": machine(), **res}, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
