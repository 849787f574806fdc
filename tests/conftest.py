"""Test-wide settings (nothing may reach the Hugging Face hub: there is no network here) and
tiny shared inputs, built once per session: an HF GPT-2 folder, a text file, a prepared
data dir and a finished training run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Training options of the session's tiny run: a 2-block, width-32 GPT on 8-token windows.
TINY_TRAIN_ARGS = [
    "--preset", "tiny", "--n-embd", "32", "--n-head", "2", "--block-size", "8",
    "--batch-size", "2", "--eval-iters", "1", "--eval-interval", "2", "--log-interval", "1",
    "--checkpoint-interval", "2", "--no-compile", "--threads", "1", "--dtype", "float32",
    "--device", "cpu", "--no-progress", "--no-tensorboard",
]  # fmt: skip
TINY_RUN_STEPS = 2


def tiny_corpus(n_docs: int = 150) -> str:
    """`n_docs` short documents, separated by two blank lines (one document each)."""
    return "\n\n\n".join(
        f"Document {i}: the river number {i} flows past the old mill into the quiet valley."
        for i in range(n_docs)
    )


@pytest.fixture(scope="session")
def tiny_text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UTF-8 .txt of 150 documents (about 3,000 GPT-2 tokens)."""
    path = tmp_path_factory.mktemp("tiny-text") / "corpus.txt"
    path.write_text(tiny_corpus(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random HF GPT-2 (2 blocks, width 32, context 64) with the real GPT-2 tokenizer."""
    from causalshift.testing import tiny_gpt2_folder

    return tiny_gpt2_folder(tmp_path_factory.mktemp("tiny-hf") / "gpt2")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_text_file: Path) -> Path:
    """`causalshift prepare` of `tiny_text_file` (256 validation tokens)."""
    from causalshift.cli import main

    out = tmp_path_factory.mktemp("tiny-data") / "data"
    argv = ["prepare", "--data", str(tiny_text_file), "--out", str(out), "--val-tokens", "256",
            "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> Path:
    """A finished `causalshift train` run of TINY_RUN_STEPS steps (checkpoint at the end)."""
    from causalshift.cli import main

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    argv = ["train", *TINY_TRAIN_ARGS, "--max-steps", str(TINY_RUN_STEPS),
            "--data", str(tiny_data_dir), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out
