"""The lm-eval adapter and `causalshift eval`, on tiny random GPTs and local task files.

The key check: our adapter on a run directory (our GPT code) gives the same
log-likelihoods as lm-eval's own `hf` model on the same weights exported as a stock
`GPT2LMHeadModel` folder, on multiple-choice and rolling-perplexity tasks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
lm_eval = pytest.importorskip("lm_eval")

from causalshift.cli import main  # noqa: E402
from causalshift.evaluate.command import flatten_results, render_task_templates  # noqa: E402

TASKS = Path(__file__).parents[1] / "data" / "tasks"
BLOCK = 32  # shorter than the longest cs_ppl document: rolling windows get exercised


def _make_models(root: Path) -> tuple[Path, Path]:
    """A tiny random baseline GPT as a run dir, and its `causalshift export` (GPT2LMHeadModel)."""
    from causalshift.gpt.config import GPTConfig
    from causalshift.gpt.io import save_model
    from causalshift.gpt.model import GPT

    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK)
    model = GPT(cfg)
    with torch.no_grad():  # random biases and LayerNorm affines: nothing left at its init
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"seed": 7, "model": cfg.to_dict()}))
    save_model(model, run)
    hf = root / "hf"
    assert main(["export", str(run), "--out", str(hf)]) == 0
    hf_cfg = json.loads((hf / "config.json").read_text())
    assert hf_cfg["model_type"] == "gpt2" and (hf / "vocab.json").is_file()
    return run, hf


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return _make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return render_task_templates(TASKS, tmp_path_factory.mktemp("tasks"))


def _scores(
    model: str, model_args: str, task_dir: Path, tasks: list[str] | None = None
) -> dict[str, list[float]]:
    from lm_eval.tasks import TaskManager

    import causalshift.evaluate.lm_eval_adapter  # noqa: F401  (registers "causalshift")

    out = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks or ["cs_mc", "cs_qa", "cs_ppl"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
        batch_size=4,
        device="cpu",
    )
    scores = {}
    for task, samples in out["samples"].items():
        flat = []
        for s in sorted(samples, key=lambda s: s["doc_id"]):
            for resp in s["resps"]:
                r = resp[0]
                flat.append(float(r[0]) if isinstance(r, (list, tuple)) else float(r))
        scores[task] = flat
    return scores


def test_adapter_loglikelihoods_equal_lm_eval_hf(models, task_dir) -> None:
    run, hf = models
    ref = _scores("hf", f"pretrained={hf}", task_dir)
    ours_run = _scores("causalshift", f"path={run}", task_dir)
    ours_export = _scores("causalshift", f"path={hf}", task_dir)
    assert set(ref) == {"cs_mc", "cs_qa", "cs_ppl"}
    assert len(ref["cs_mc"]) == 12 * 4 and len(ref["cs_ppl"]) == 4
    for task in ref:
        for ours in (ours_run, ours_export):
            assert len(ours[task]) == len(ref[task])
            diff = max(abs(a - b) for a, b in zip(ours[task], ref[task], strict=True))
            assert diff < 1e-4, (task, diff)
    # the scores are real log-likelihoods, not a degenerate constant
    assert len({round(x, 3) for x in ref["cs_mc"]}) > 10 and max(ref["cs_ppl"]) < 0


def test_adapter_batching_and_bf16(models) -> None:
    """Batch size does not change scores; bf16 autocast stays close; greedy generation runs."""
    from lm_eval.api.instance import Instance

    from causalshift.evaluate.lm_eval_adapter import CausalShiftLM

    run, _ = models
    reqs = [
        Instance("loglikelihood", {}, (ctx, cont), i)
        for i, (ctx, cont) in enumerate(
            [
                ("The sun rises in the", " east"),
                ("Two plus two", " equals four"),
                ("", "Hello world"),
                ("A long context " * 20, " end"),
            ]
        )
    ]
    a = CausalShiftLM(path=str(run), batch_size=1).loglikelihood(reqs, disable_tqdm=True)
    b = CausalShiftLM(path=str(run), batch_size=3).loglikelihood(reqs, disable_tqdm=True)
    c = CausalShiftLM(path=str(run), batch_size=4, dtype="bfloat16").loglikelihood(
        reqs, disable_tqdm=True
    )
    for (x, gx), (y, gy), (z, _) in zip(a, b, c, strict=True):
        assert x == pytest.approx(y, abs=1e-4) and gx == gy
        assert z == pytest.approx(x, abs=0.5)
    lm = CausalShiftLM(path=str(run))
    gen = Instance("generate_until", {}, ("Once upon a", {"until": ["\n"], "max_gen_toks": 5}), 0)
    (text,) = lm.generate_until([gen], disable_tqdm=True)
    assert isinstance(text, str) and len(lm.tok_encode(text)) <= 6


def test_eval_command_writes_labelled_eval_json(models, tmp_path, capsys) -> None:
    run, _ = models
    rc = main(
        [
            "eval",
            str(run),
            "--include-path",
            str(TASKS),
            "--tasks",
            "cs_mc,cs_ppl",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "eval.json").read_text())
    rows = {(r["task"], r["metric"], r["filter"]): r for r in data["results"]}
    acc = rows[("cs_mc", "acc", "none")]
    assert 0 <= acc["value"] <= 1 and acc["stderr"] > 0 and acc["num_samples"] == 12
    assert ("cs_mc", "acc_norm", "none") in rows
    ppl = rows[("cs_ppl", "word_perplexity", "none")]
    assert ppl["value"] > 1 and ppl["stderr"] is None and ppl["higher_is_better"] is False
    assert data["model"]["mode"] == "none" and data["model"]["seed"] == 7
    assert data["model"]["backend"] == "gpt" and data["model"]["max_length"] == BLOCK
    assert data["config"]["tasks"] == ["cs_mc", "cs_ppl"] and data["config"]["num_fewshot"] == 0
    assert data["environment"]["lm_eval"] and data["environment"]["torch"]
    assert "cs_mc" in capsys.readouterr().out


def test_eval_bad_input_is_user_error(models, tmp_path, capsys) -> None:
    run, _ = models
    assert main(["eval", str(tmp_path / "missing"), "--tasks", "cs_mc"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", str(run), "--tasks", "cs_mc", "--dtype", "float8"]) == 2
    assert main(["eval", str(run), "--tasks", "cs_mc", "--batch-size", "0"]) == 2
    assert main(["eval", str(run), "--include-path", str(tmp_path / "nope")]) == 2
    assert not (tmp_path / "eval.json").exists()


@pytest.mark.slow
def test_eval_unknown_task_is_user_error(models, tmp_path, capsys) -> None:
    """Slow only because naming a task as unknown needs lm-eval's full task index (~15 s)."""
    run, _ = models
    rc = main(
        [
            "eval",
            str(run),
            "--include-path",
            str(TASKS),
            "--tasks",
            "cs_mc,no_such_task",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 2 and "no_such_task" in capsys.readouterr().err
    assert not (tmp_path / "eval.json").exists()


def _bad_task_dir(root: Path) -> Path:
    """TASKS plus a task YAML that does not parse (its task, cs_bad, is then unknown)."""
    folder = render_task_templates(TASKS, root / "tasks")
    (folder / "cs_bad.yaml").write_text("task: cs_bad\ndataset_path: json\n  doc_to_text: [x\n")
    return folder


def test_malformed_task_yaml_is_found(tmp_path) -> None:
    from causalshift.evaluate.command import malformed_task_files

    folder = _bad_task_dir(tmp_path)
    (folder / "fn.yaml").write_text("task: cs_fn\nprocess_docs: !function utils.process\n")
    (folder / "list.yaml").write_text("- just\n- a list\n")
    assert malformed_task_files(folder) == [
        f"{folder / 'cs_bad.yaml'}: mapping values are not allowed here (line 3)",
        f"{folder / 'list.yaml'}: not a mapping of task fields",
    ]  # lm-eval's !function tag is fine
    assert malformed_task_files(TASKS) == []


@pytest.mark.slow
def test_eval_malformed_task_yaml_is_named(models, tmp_path, capsys) -> None:
    """Slow: lm-eval's full task index is built first (the task may be a built-in one)."""
    run, _ = models
    folder = _bad_task_dir(tmp_path)
    argv = ["eval", str(run), "--include-path", str(folder), "--tasks", "cs_bad"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err  # before: "unknown task ... need --include-path DIR"
    assert f"a task YAML in --include-path is malformed: {folder / 'cs_bad.yaml'}" in err


def test_eval_folder_without_its_tokenizer(tmp_path, capsys) -> None:
    from causalshift.testing import tiny_hf_model

    tiny_hf_model("qwen2").save_pretrained(tmp_path / "qwen")  # vocabulary 97, no tokenizer
    assert main(["eval", str(tmp_path / "qwen"), "--tasks", "cs_mc"]) == 2
    err = capsys.readouterr().err  # before: the GPT-2 BPE in its place, ids past 97
    assert f"{tmp_path / 'qwen'} has no tokenizer" in err and "(97)" in err


def test_flatten_results_labels_every_number() -> None:
    raw = {
        "results": {
            "arc_easy": {
                "alias": "arc_easy",
                "acc,none": 0.5,
                "acc_stderr,none": 0.05,
                "acc_norm,none": 0.6,
                "acc_norm_stderr,none": "N/A",
                "sample_len": 10,
            }
        },
        "higher_is_better": {"arc_easy": {"acc": True, "acc_norm": True}},
        "n-samples": {"arc_easy": {"original": 10, "effective": 10}},
    }
    rows = flatten_results(raw)
    assert [(r.task, r.metric, r.filter, r.value, r.stderr) for r in rows] == [
        ("arc_easy", "acc", "none", 0.5, 0.05),
        ("arc_easy", "acc_norm", "none", 0.6, None),
    ]


@pytest.mark.slow
def test_lm_eval_cli_route(models, task_dir, tmp_path) -> None:
    """`python -m causalshift.evaluate.lm_eval_cli --model causalshift ...` (lm-eval's CLI)."""
    run, _ = models
    cmd = [
        sys.executable,
        "-m",
        "causalshift.evaluate.lm_eval_cli",
        "--model",
        "causalshift",
        "--model_args",
        f"path={run}",
        "--tasks",
        "cs_mc",
        "--include_path",
        str(task_dir),
        "--limit",
        "4",
        "--output_path",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = list((tmp_path / "out").rglob("results_*.json"))
    assert results and "cs_mc" in json.loads(results[0].read_text())["results"]


@pytest.mark.slow
def test_eval_data_parallel_matches_single_process(models, tmp_path) -> None:
    """torchrun, 2 CPU processes (gloo): documents split by rank, same numbers, rank 0 writes."""
    run, _ = models
    args = ["eval", str(run), "--include-path", str(TASKS), "--tasks", "cs_mc,cs_ppl"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "causalshift",
        *args,
        "--out",
        str(tmp_path / "two"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert two["config"]["world_size"] == 2
    for a, b in zip(one["results"], two["results"], strict=True):
        assert (a["task"], a["metric"]) == (b["task"], b["metric"])
        assert a["value"] == pytest.approx(b["value"], rel=1e-6)
        assert a["num_samples"] == b["num_samples"]


def test_gate_run_scores_equal_its_export_under_lm_eval_hf(task_dir, tmp_path) -> None:
    """A non-baseline mode: our adapter on a gate run == lm-eval's `hf` on its export."""
    from causalshift.gpt.config import GPTConfig, ResidualConfig
    from causalshift.gpt.io import save_model
    from causalshift.gpt.model import GPT

    torch.manual_seed(1)
    cfg = GPTConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, residual=ResidualConfig(mode="gate")
    )
    model = GPT(cfg)
    with torch.no_grad():
        model.residual.theta.copy_(torch.tensor([2.0, -1.0]))  # p far from uniform
    run = tmp_path / "gate"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    save_model(model, run)
    assert main(["export", str(run), "--out", str(tmp_path / "gate_hf")]) == 0
    ref = _scores("hf", f"pretrained={tmp_path / 'gate_hf'}", task_dir, tasks=["cs_mc"])
    ours = _scores("causalshift", f"path={run}", task_dir, tasks=["cs_mc"])
    diff = max(abs(a - b) for a, b in zip(ours["cs_mc"], ref["cs_mc"], strict=True))
    assert len(ref["cs_mc"]) == 48 and diff < 1e-4
