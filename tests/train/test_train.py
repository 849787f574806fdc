"""Training: loss goes down, config/presets, data order, non-finite stop, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from causalshift.cli import main
from causalshift.errors import UserError
from causalshift.train.config import TrainConfig, preset
from causalshift.train.data import TokenSplit, TrainSampler, eval_windows, rank_slice
from causalshift.train.loop import lr_factor
from causalshift.train.prepare import write_token_dir

# Small and quick: tiny preset, short sequences, float32, eager.
FAST = ["--preset", "tiny", "--batch-size", "4", "--block-size", "32", "--eval-iters", "1",
        "--no-compile", "--threads", "1", "--dtype", "float32", "--no-progress"]  # fmt: skip


def markov_tokens(n: int, seed: int = 0) -> np.ndarray:
    """A learnable stream: next token = (7 * prev + 3 + small noise) mod 512."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 4, n)
    x = np.empty(n, dtype=np.int64)
    x[0] = 1
    for i in range(1, n):
        x[i] = (7 * x[i - 1] + 3 + noise[i]) % 512
    return x


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = markov_tokens(60_000)
    return write_token_dir(tmp_path_factory.mktemp("data"), x[:54_000], x[54_000:])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_run_loss_goes_down(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["train", *FAST, "--data", str(data_dir), "--out", str(out), "--max-steps", "25",
                 "--eval-interval", "25", "--log-interval", "5"])  # fmt: skip
    assert code == 0
    recs = metrics(out)
    vals = [r["val_loss"] for r in recs if r["val_loss"] is not None]
    assert [r["step"] for r in recs if r["val_loss"] is not None] == [0, 25]
    assert vals[0] > math.log(50257) - 0.5  # uniform-ish at init
    assert vals[-1] < vals[0] - 2.0, vals
    trains = [r["train_loss"] for r in recs if r["train_loss"] is not None]
    assert trains[-1] < trains[0] - 1.0
    assert recs[-1]["tokens"] == 25 * 4 * 32
    for name in ("config.json", "model.safetensors", "train_state.pt", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "figures" / "loss.png").stat().st_size > 1000
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["n_layer"] == 2 and cfg["model"]["block_size"] == 32
    assert cfg["environment"]["world_size"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["final_val_loss"] == pytest.approx(vals[-1], abs=1e-5)

    from causalshift.gpt.io import load_model

    model = load_model(out)  # the run dir is a model SPEC for eval/analyze
    assert model.config.block_size == 32


def test_gate_run_logs_p_and_figure(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gate"
    code = main(["train", *FAST, "--data", str(data_dir), "--out", str(out), "--max-steps", "4",
                 "--residual", "gate", "--eval-interval", "4"])  # fmt: skip
    assert code == 0
    recs = metrics(out)
    assert all(len(r["gate_p"]) == 2 and sum(r["gate_p"]) == pytest.approx(1, abs=1e-4)
               for r in recs)  # fmt: skip
    assert recs[0]["gate_p"] == pytest.approx([0.5, 0.5])
    assert recs[-1]["gate_p"] != recs[0]["gate_p"]  # the gate learns
    assert all(len(r["alpha"]) == 2 for r in recs)
    assert (out / "figures" / "gate_p.png").is_file()


def test_nonfinite_loss_stops_and_keeps_checkpoint(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from causalshift.gpt.model import GPT

    forward = GPT.forward
    calls = {"train": 0}

    def poisoned(self, idx, targets=None, **kwargs):
        logits, loss = forward(self, idx, targets, **kwargs)
        if self.training:
            calls["train"] += 1
            if calls["train"] > 5:  # from step 6 on (one micro-batch per step)
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    out = tmp_path / "nan"
    code = main(["train", *FAST, "--data", str(data_dir), "--out", str(out), "--max-steps", "20",
                 "--checkpoint-interval", "4"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "non-finite" in ln]
    assert len(lines) == 1 and "step 6" in lines[0] and "step 4" in lines[0], err
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert max(r["step"] for r in metrics(out)) == 5
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cut-layer", "3"], "out of range"),
        (["--residual", "fixed", "--cut-layer", "0"], "out of range"),
        (["--residual", "fixed", "--cut-layer", "1", "--alpha", "-1"], "alpha"),
        (["--residual", "fixed"], "cut layer"),
        (["--residual", "bogus"], "residual mode"),
        (["--batch-tokens", "1000"], "not divisible"),
        (["--max-steps", "0"], "max_steps"),
    ],
)
def test_bad_arguments_exit_2(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list, message: str
) -> None:
    code = main(["train", *FAST, "--data", str(data_dir), "--out", str(tmp_path / "r"), *extra])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_missing_data_and_resume_errors(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = ["--out", str(tmp_path / "a")]
    assert main(["train", *FAST, "--data", str(tmp_path / "nope"), *out]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", *FAST, "--data", str(tmp_path / "empty"), *out]) == 2
    assert "not a prepared data dir" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(tmp_path / "c")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_presets_and_batch_geometry() -> None:
    big = preset("gpt2-124m")
    m = big.model
    assert (m.n_layer, m.n_embd, m.n_head, m.block_size) == (12, 768, 12, 1024)
    assert (big.lr, big.warmup_steps, big.beta2, big.weight_decay) == (6e-4, 715, 0.95, 0.1)
    assert big.batch_tokens == 524_288
    assert big.grad_accum_for(8) == 4 and big.grad_accum_for(1) == 32
    assert big.max_steps * big.batch_tokens == pytest.approx(10e9, rel=1e-3)
    with pytest.raises(UserError, match="not divisible"):
        big.grad_accum_for(3)
    small = preset("cpu-small")
    assert small.data == "books" and small.model.residual.mode == "none"
    assert TrainConfig().peak_gate_lr == pytest.approx(10 * TrainConfig().lr)
    with pytest.raises(UserError):
        preset("huge")


def test_resolve_config_precedence(tmp_path: Path) -> None:
    from causalshift.cli import build_parser
    from causalshift.train.command import resolve_config

    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"lr": 0.01, "max_steps": 7}))
    args = build_parser("train").parse_args(
        [
            "train",
            "--preset",
            "tiny",
            "--config",
            str(cfg_file),
            "--max-steps",
            "9",
            "--cut-layer",
            "2",
            "--grad-accum",
            "3",
        ]  # fmt: skip
    )
    cfg = resolve_config(args)
    assert (cfg.preset, cfg.lr, cfg.max_steps) == ("tiny", 0.01, 9)
    r = cfg.model.residual
    assert (r.mode, r.cut_layer, cfg.grad_accum, cfg.batch_tokens) == ("fixed", 2, 3, None)
    default = resolve_config(build_parser("train").parse_args(["train"]))
    assert default == preset("cpu-small")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(UserError, match="unknown training config keys"):
        resolve_config(build_parser("train").parse_args(["train", "--config", str(bad)]))


def test_lr_schedule() -> None:
    cfg = TrainConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.55)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    steps = [lr_factor(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(steps, steps[1:], strict=False))


def test_data_order_is_seeded_and_rank_split(tmp_path: Path) -> None:
    x = np.arange(10_000) % 50_000
    d = write_token_dir(tmp_path / "d", x[:9_000], x[9_000:])
    tokens = TokenSplit(d, "train")
    a, b, c = (TrainSampler(tokens, 16, s) for s in (1, 1, 2))
    assert np.array_equal(a.batch(0, 64), b.batch(0, 64))
    assert not np.array_equal(a.batch(0, 64), c.batch(0, 64))
    w = a.batch(0, a.num_windows)  # one epoch: distinct, contiguous windows
    assert np.all(np.diff(w, axis=1) == 1)
    assert len({int(r[0]) for r in w}) == a.num_windows
    assert not np.array_equal(a.batch(a.num_windows, 8), a.batch(0, 8))  # next epoch reshuffles
    # world 2 x accum 1 reads the same global batch as world 1 x accum 2
    one = sorted(rank_slice(100, m, 0, 1, 4) for m in range(2))
    two = sorted(rank_slice(100, 0, r, 2, 4) for r in range(2))
    assert one == two == [100, 104]
    starts = eval_windows(TokenSplit(d, "val"), 16, 10)
    assert len(set(starts.tolist())) == 10 and starts.max() + 17 <= 1_000


def test_token_split_reads_across_shards(tmp_path: Path) -> None:
    from causalshift.train.prepare import ShardWriter

    d = tmp_path / "d"
    x = np.arange(1_000, dtype=np.int64)
    write_token_dir(d, x, x[:100])
    writer = ShardWriter(d, "train", 300)  # rewrite train as 4 shards
    writer.write(x)
    writer.close()
    meta = json.loads((d / "meta.json").read_text())
    meta["splits"]["train"] = writer.summary()
    (d / "meta.json").write_text(json.dumps(meta))
    split = TokenSplit(d, "train")
    assert len(split.shards) == 4 and len(split) == 1_000
    assert np.array_equal(split.read(250, 400), x[250:650])
    (d / "train_000001.bin").write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match="truncated"):
        TokenSplit(d, "train")


@pytest.mark.slow
def test_compiled_bf16_gate_hard_run(data_dir: Path, tmp_path: Path) -> None:
    """torch.compile + bf16 autocast (the CPU defaults) with the stochastic gate."""
    out = tmp_path / "compiled"
    args = [a for a in FAST if a not in ("--no-compile", "--dtype", "float32")]
    code = main(["train", *args, "--compile", "--dtype", "bfloat16", "--residual", "gate-hard",
                 "--data", str(data_dir), "--out", str(out), "--max-steps", "3",
                 "--eval-interval", "3"])  # fmt: skip
    assert code == 0
    recs = metrics(out)
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    assert all(math.isfinite(r["train_loss"]) for r in recs[1:])
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]
    assert len(recs[-1]["gate_p"]) == 2
    assert json.loads((out / "config.json").read_text())["environment"]["autocast_dtype"] == (
        "bfloat16"
    )
