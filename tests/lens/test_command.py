"""`causalshift analyze` through `causalshift.cli.main`: outputs, schema, and one clear line
with exit code 2 on every kind of bad input."""

import csv
import json

import pytest
import torch

from causalshift.cli import main
from causalshift.corpus import gpt2_tokenizer_dir
from causalshift.testing import tiny_gpt2_folder

TEXT = " ".join(
    f"The river number {i} flows past the old mill and into the quiet valley." for i in range(120)
)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A random GPT-2 (context 64) with the real GPT-2 tokenizer, saved as an HF folder."""
    return tiny_gpt2_folder(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def assert_one_error_line(err: str) -> None:
    """One error line, last, no traceback (progress bars of model loading may precede it)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]]
    assert lines[-1].startswith("causalshift analyze: error: ")


def run_analyze(*args):
    return main(["analyze", "--no-plots", *map(str, args)])


def test_analyze_writes_schema(tiny_gpt2, text_file, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            "analyze",
            "--model",
            str(tiny_gpt2),
            "--data",
            str(text_file),
            "--num-seqs",
            "3",
            "--seq-len",
            "16",
            "--topk",
            "1,3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1
    assert results["data"] == {"spec": str(text_file), "num_sequences": 3, "seq_len": 16}
    (model,) = results["models"]
    assert model["architecture"] == "gpt2" and model["num_layers"] == 2
    assert model["tied_embeddings"] is True
    assert model["num_positions"] == 3 * 15  # no BOS in GPT-2: positions 0..T-2
    assert len(model["layers"]) == 3
    row = model["layers"][0]
    expected = {
        "top1_input",
        "top1_output",
        "top3_input",
        "top3_output",
        "cos_input",
        "cos_output",
        "cos_random",
        "projection",
    }
    assert expected <= set(row) and set(row["ci95"]) == expected
    for name in expected:
        lo, hi = row["ci95"][name]
        assert lo <= row[name] <= hi
    assert set(model["shift_layer"]) == {"input_until", "output_from", "crossover"}
    assert model["tokens_per_second"] > 0
    assert set(results["environment"]) >= {"causalshift", "torch", "transformers", "device"}
    with open(out / "layers.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(expected)
    assert (out / "topk_match.png").stat().st_size > 0
    assert (out / "similarity.png").stat().st_size > 0


def test_analyze_on_a_training_run_directory(text_file, tmp_path):
    """`--model RUN_DIR` measures our own GPT: layers, final norm and tied unembedding."""
    from causalshift.gpt.config import GPTConfig, ResidualConfig
    from causalshift.gpt.io import save_model
    from causalshift.gpt.model import GPT

    torch.manual_seed(0)
    cfg = GPTConfig(
        n_layer=3,
        n_head=2,
        n_embd=32,
        block_size=64,
        residual=ResidualConfig(mode="fixed", cut_layer=2, alpha=0.0),
    )
    run = tmp_path / "run"
    run.mkdir()
    save_model(GPT(cfg), run)
    (run / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    out = tmp_path / "out"
    assert (
        run_analyze(
            "--model", run, "--data", text_file, "--num-seqs", "2", "--seq-len", "16", "--out", out
        )
        == 0
    )
    (model,) = json.loads((out / "results.json").read_text())["models"]
    assert model["architecture"] == "causalshift_gpt" and model["num_layers"] == 3
    # at layer L the lens equals the model's own logits: top-1 output = its accuracy
    from transformers import AutoTokenizer

    from causalshift.corpus import token_sequences
    from causalshift.gpt.io import load_model

    tokens = token_sequences(
        AutoTokenizer.from_pretrained(gpt2_tokenizer_dir()), str(text_file), 2, 16
    )
    with torch.no_grad():
        logits, _ = load_model(run)(tokens)
    accuracy = (logits[:, :-1].argmax(-1) == tokens[:, 1:]).float().mean().item()
    assert model["layers"][-1]["top1_output"] == pytest.approx(accuracy)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/folder"], "not found"),
        (["--model", "no-such-org/no-such-model"], "no network"),
        (["--topk", "0"], "--topk"),
        (["--topk", "1,50257"], "--topk 50257 is not below tiny-gpt2"),  # GPT-2's 50,257
        (["--seed", "-1"], "--seed must be an integer in [0, "),
        (["--seq-len", "65"], "exceeds"),
        (["--num-seqs", "500"], "only"),
    ],
)
def test_bad_input_exit_2_one_line(tiny_gpt2, text_file, tmp_path, capsys, args, message):
    base = {
        "--model": str(tiny_gpt2),
        "--data": str(text_file),
        "--num-seqs": "2",
        "--seq-len": "16",
        "--out": str(tmp_path / "o"),
    }
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    code = run_analyze(*[x for kv in base.items() for x in kv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert_one_error_line(err)


def test_bad_text_files_exit_2(tiny_gpt2, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 ".encode("latin-1") * 50)
    for path, message in ((empty, "empty"), (binary, "UTF-8")):
        code = run_analyze(
            "--model",
            tiny_gpt2,
            "--data",
            path,
            "--num-seqs",
            "1",
            "--seq-len",
            "8",
            "--out",
            tmp_path / "o",
        )
        err = capsys.readouterr().err
        assert code == 2, err
        assert message in err
        assert_one_error_line(err)


def test_unknown_architecture_exit_2(tmp_path, text_file, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "gpt_neox",
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "neox")
    code = run_analyze("--model", tmp_path / "neox", "--data", text_file, "--out", tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 2 and "gpt_neox" in err


@pytest.mark.slow
def test_end_to_end_on_embedded_gemma(tmp_path):
    """The real embedded model: the input token rules layer 0, and at the last layer the lens's
    top-1 output match equals the model's own next-token accuracy on the same positions."""
    from causalshift.corpus import token_sequences
    from causalshift.lens.models import load

    out = tmp_path / "gemma"
    assert main(["analyze", "--num-seqs", "2", "--seq-len", "48", "--out", str(out)]) == 0
    (model,) = json.loads((out / "results.json").read_text())["models"]
    assert model["name"] == "gemma-3-270m" and model["num_layers"] == 18
    assert model["num_positions"] == 2 * 46  # BOS skipped
    assert model["layers"][0]["top1_input"] > 0.9
    lm = load("gemma-3-270m")
    tokens = token_sequences(lm.tokenizer, "wiki", 2, 48)
    with torch.no_grad():
        logits = lm.model(input_ids=tokens).logits[:, 1:-1]
    accuracy = (logits.argmax(-1) == tokens[:, 2:]).float().mean().item()
    assert model["layers"][-1]["top1_output"] == pytest.approx(accuracy, abs=1.5 / 92)


def test_torchrun_two_processes_equal_one(tiny_gpt2, text_file, tmp_path):
    """Sequences split over 2 gloo ranks and summed give the single-process results."""
    import os
    import subprocess
    import sys

    common = [
        "analyze",
        "--model",
        str(tiny_gpt2),
        "--data",
        str(text_file),
        "--num-seqs",
        "5",
        "--seq-len",
        "16",
        "--no-plots",
    ]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "causalshift",
        *common,
        "--out",
        str(tmp_path / "two"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())["models"][0]
    two = json.loads((tmp_path / "two" / "results.json").read_text())["models"][0]
    assert two["num_positions"] == one["num_positions"]
    for a, b in zip(one["layers"], two["layers"]):
        for name, value in a.items():
            if name not in ("layer", "ci95"):
                assert b[name] == pytest.approx(value, abs=1e-6), (a["layer"], name)
