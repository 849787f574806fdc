"""The Python API (causalshift.load_model / measure / view): the same numbers as `causalshift
analyze`, models in memory, one-line errors, silence, a light `import causalshift`, and every
example of docs/python.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import causalshift as cs
from causalshift.cli import main
from causalshift.corpus import gpt2_tokenizer_dir
from causalshift.testing import tiny_gpt, tiny_hf_model

DOCS = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def numbers(results: dict) -> list:
    """What must agree between two analyses of the same inputs (not times or paths)."""
    keep = ("num_layers", "num_positions", "projection_excluded_positions", "layers")
    return [{**{k: m[k] for k in keep}, "shift_layer": m["shift_layer"]} for m in results["models"]]


def test_import_is_light_and_names_are_public() -> None:
    code = (
        "import sys, causalshift as cs\n"
        "assert issubclass(cs.UserError, Exception)\n"
        "assert callable(cs.measure) and callable(cs.view) and callable(cs.load_model)\n"
        "bad = [m for m in ('torch', 'transformers', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert {"load_model", "measure", "view", "UserError"} <= set(dir(cs))
    with pytest.raises(AttributeError):
        cs.no_such_name  # noqa: B018


def test_measure_equals_analyze(tiny_hf_dir: Path, tiny_text_file: Path, tmp_path: Path) -> None:
    """A model the user loaded with transformers gives analyze's numbers, and save() writes
    analyze's files."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = ["--data", str(tiny_text_file), "--num-seqs", "3", "--seq-len", "16", "--topk", "1,3"]
    assert main(["analyze", "--model", str(tiny_hf_dir), *args, "--out", str(tmp_path / "a")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    result = cs.measure(
        model, tokenizer, data=str(tiny_text_file), num_seqs=3, seq_len=16, topk=(1, 3)
    )
    assert result.save(tmp_path / "b") == tmp_path / "b"
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert numbers(a) == numbers(b)
    assert a["models"][0]["name"] == b["models"][0]["name"] == tiny_hf_dir.name
    assert a["data"] == b["data"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        p.name for p in (tmp_path / "b").iterdir()
    )
    # the DataFrame: one row per layer, every metric and its interval
    layers = result.layers
    assert list(layers["layer"]) == [0, 1, 2]
    row = a["models"][0]["layers"][1]
    for metric, (lo, hi) in row["ci95"].items():
        assert layers.loc[1, metric] == row[metric]
        assert (layers.loc[1, f"{metric}_lo"], layers.loc[1, f"{metric}_hi"]) == (lo, hi)
    assert result.shift_layer == a["models"][0]["shift_layer"]


def test_measure_a_spec_string_and_load_model(tiny_hf_dir: Path, tiny_text_file: Path) -> None:
    by_spec = cs.measure(str(tiny_hf_dir), data=str(tiny_text_file), num_seqs=2, seq_len=12)
    model, tokenizer = cs.load_model(str(tiny_hf_dir), device="cpu")
    assert not model.training and tokenizer.eos_token_id == 50256
    loaded = cs.measure(model, tokenizer, data=str(tiny_text_file), num_seqs=2, seq_len=12)
    assert by_spec.result.models[0].layers == loaded.result.models[0].layers
    assert loaded.result.models[0].source == str(tiny_hf_dir)


def test_texts_and_tokens(tiny_hf_dir: Path, tiny_text_file: Path) -> None:
    """texts= windows like a data file of the same text; tokens= are used as they are."""
    model, tokenizer = cs.load_model(str(tiny_hf_dir), device="cpu")
    docs = tiny_text_file.read_text().split("\n\n\n")
    from_file = cs.measure(model, tokenizer, data=str(tiny_text_file), num_seqs=2, seq_len=12)
    from_texts = cs.measure(model, tokenizer, texts=docs, num_seqs=2, seq_len=12)
    assert from_texts.result.models[0].layers == from_file.result.models[0].layers
    assert from_texts.result.data.spec == "<texts>"
    every = cs.measure(model, tokenizer, texts=docs[:3], seq_len=12)
    assert every.result.data.num_sequences >= 3  # every full window of the text
    ids = tokenizer(docs[0]).input_ids[:12]
    from_tokens = cs.measure(model, tokenizer, tokens=torch.tensor([ids, ids]))
    assert from_tokens.result.data.num_sequences == 2
    assert from_tokens.result.models[0].num_positions == 2 * 11


@pytest.mark.parametrize("kind", ["llama", "gemma3_text", "causalshift_gpt"])
def test_models_in_memory(kind: str) -> None:
    """A transformers model built by the user, and our GPT, with token ids (no tokenizer)."""
    model = tiny_gpt() if kind == "causalshift_gpt" else tiny_hf_model(kind)
    vocab = model.lm_head.weight.shape[0]
    tokens = torch.randint(0, vocab, (3, 10), generator=torch.Generator().manual_seed(0))
    result = cs.measure(model, tokens=tokens, topk=(1,), name="mine")
    assert result.model.name == "mine" and result.model.architecture == kind
    assert len(result.layers) == 4  # 3 blocks + the embedding layer
    assert result.layers["top1_output"].between(0, 1).all()


def test_plot_returns_figures_and_writes_nothing(
    tiny_hf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)
    result = cs.measure(str(tiny_hf_dir), tokens=torch.randint(0, 50257, (2, 8)))
    figures = result.plot()
    assert len(figures) == 2 and all(isinstance(f, Figure) for f in figures)
    assert not list(tmp_path.iterdir())


def test_unsupported_model_same_line_as_cli(tmp_path: Path, capsys) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "opt", vocab_size=97, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
        num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=32,
    )  # fmt: skip
    folder = tmp_path / "opt-tiny"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for f in gpt2_tokenizer_dir().iterdir():  # a folder the CLI can load up to the model
        shutil.copy(f, folder / f.name)
    assert main(["analyze", "--model", str(folder), "--num-seqs", "1"]) == 2
    cli_line = capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(cs.UserError) as err:
        cs.measure(AutoModelForCausalLM.from_pretrained(folder), tokens=torch.zeros(1, 4).long())
    assert cli_line == f"causalshift analyze: error: {err.value}"
    assert "unsupported architecture 'opt'" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(topk=(0,)), "--topk"),
        (dict(seq_len=2), "--seq-len"),
        (dict(bogus=1), "unknown option(s) bogus"),
        (dict(texts="one string"), "texts= must be a list of strings"),
        (dict(tokens=torch.zeros(4)), "tokens= must be an (S, T) integer tensor"),
        (dict(tokens=torch.full((1, 4), 10**6)), "outside the vocabulary"),
        (dict(data="wiki", texts=["a"]), "give one of data=, texts= and tokens="),
    ],
)
def test_bad_input_is_a_user_error(tiny_hf_dir: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(cs.UserError, match=re.escape(message)):
        cs.measure(str(tiny_hf_dir), **kwargs)


def test_silent_unless_progress(tiny_hf_dir: Path, tiny_text_file: Path, capfd) -> None:
    capfd.readouterr()
    cs.measure(str(tiny_hf_dir), data=str(tiny_text_file), num_seqs=2, seq_len=12)
    assert capfd.readouterr() == ("", "")
    cs.measure(str(tiny_hf_dir), data=str(tiny_text_file), num_seqs=2, seq_len=12, progress=True)
    assert "lens" in capfd.readouterr().err


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_docs_have_examples() -> None:
    blocks = python_blocks(DOCS.read_text(encoding="utf-8"))
    assert len(blocks) >= 4
    assert any("# slow" in b for b in blocks)


@pytest.mark.parametrize(
    "slow",
    [False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["examples", "slow-examples"],
)
def test_docs_python_examples(slow: bool, tmp_path: Path, monkeypatch) -> None:
    """Every ```python block of docs/python.md runs, in order, in one namespace (a block whose
    first line is `# slow` only in the slow run: the issue's example with its defaults)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python_blocks(DOCS.read_text(encoding="utf-8")):
        if block.startswith("# slow") and not slow:
            continue
        exec(compile(block, str(DOCS), "exec"), namespace)
    assert os.listdir(tmp_path)  # the examples save something


def test_positions_records(tiny_hf_dir: Path, tmp_path: Path) -> None:
    tokens = torch.randint(0, 50257, (2, 8), generator=torch.Generator().manual_seed(1))
    plain = cs.measure(str(tiny_hf_dir), tokens=tokens)
    assert plain.positions is None
    result = cs.measure(str(tiny_hf_dir), tokens=tokens, positions=True)
    frame = result.positions
    assert {"layer", "rank_output"} <= set(frame.columns) and len(frame) > 0
    result.save(tmp_path)
    assert (tmp_path / "positions.parquet").is_file()


def test_intervene_api_equals_the_command(tiny_hf_dir, tiny_text_file, tmp_path) -> None:
    """cs.intervene on a model loaded in Python gives the numbers `causalshift intervene`
    writes for the same folder and text."""
    import causalshift as cs
    from causalshift.cli import main

    args = ["--data", str(tiny_text_file), "--num-seqs", "2", "--seq-len", "8"]
    out = tmp_path / "out"
    argv = ["intervene", "--model", str(tiny_hf_dir), *args, "--layers", "1,2", "--alpha", "0,1"]
    assert main([*argv, "--out", str(out)]) == 0
    cli = json.loads((out / "intervene.json").read_text())
    model, tokenizer = cs.load_model(str(tiny_hf_dir))
    api = cs.intervene(
        model, tokenizer, data=str(tiny_text_file), num_seqs=2, seq_len=8,
        layers=[1, 2], alpha=[0, 1],
    )  # fmt: skip
    assert api["baseline"] == cli["baseline"]
    assert api["runs"] == cli["runs"]
    assert [r["loss_increase"] for r in api["runs"] if r["alpha"] == 1.0] == [0.0, 0.0]
