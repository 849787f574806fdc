"""The per-token lens (`causalshift view`, `causalshift.view`): the last layer is the model's
own greedy prediction, ranks and probabilities agree with the full logits, and the command
writes both files or fails in one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import causalshift as cs
from causalshift.cli import main
from causalshift.lens.models import lens_model, load
from causalshift.lens.view import token_view
from causalshift.testing import TINY_VOCAB, tiny_hf_model

PROMPT = "The capital of France is Paris. The capital of Italy is"


class CharTokenizer:
    """One token per character (id = code point mod the tiny vocabulary), a BOS first."""

    bos_token_id = 1

    def __call__(self, text: str):
        class Encoded:
            input_ids = [self.bos_token_id] + [2 + ord(c) % (TINY_VOCAB - 2) for c in text]

        return Encoded()

    def decode(self, ids: list[int]) -> str:
        return "".join("<s>" if i == 1 else chr(ord(" ") + i) for i in ids)


def greedy(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids[None]).logits[0].argmax(-1)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text", "qwen2"])
def test_last_layer_is_greedy_and_ranks_agree(family: str) -> None:
    model = tiny_hf_model(family)  # gemma2: a soft-capped lens (LensModel.decode)
    lm = lens_model(model, CharTokenizer(), family, "memory")
    view = token_view(lm, "abcab cab", topk=3)
    ids = view.input_ids
    assert ids[0] == 1 and len(ids) == 10  # BOS included, as the tokenizer encodes it
    assert view.top_ids.shape == (lm.num_layers + 1, len(ids))
    assert torch.equal(view.top_ids[-1], greedy(model, ids))
    g = view.grid
    assert view.top_tokens == [[CharTokenizer().decode([i]) for i in row] for row in g.top_ids]
    assert g.tokens[0] == "<s>"
    for layer in range(lm.num_layers + 1):
        # the top-1 has rank 0; the top-k are sorted and start with the top-1
        for i in range(len(ids)):
            probs = g.topk_probs[layer][i]
            assert probs == sorted(probs, reverse=True) and len(probs) == 3
            assert g.topk_tokens[layer][i][0] == g.top_tokens[layer][i]
            if g.top_ids[layer][i] == ids[i]:
                assert g.rank_input[layer][i] == 0
            if i + 1 < len(ids):
                assert (g.rank_output[layer][i] == 0) == (g.top_ids[layer][i] == ids[i + 1])
                assert 0 < g.target_prob[layer][i] <= 1
        assert g.target_prob[layer][-1] is None and g.rank_output[layer][-1] is None
        assert math.isnan(view.target_probs[layer, -1])


def test_probability_of_the_next_token_is_the_models(tiny_hf_dir: Path) -> None:
    """At the last layer p(t_{i+1}) is the model's softmax probability of the next token."""
    lm = load(str(tiny_hf_dir))
    view = token_view(lm, PROMPT)
    ids = view.input_ids
    with torch.no_grad():
        logits = lm.model(input_ids=ids[None]).logits[0]
    p = torch.softmax(logits, -1)[torch.arange(len(ids) - 1), ids[1:]]
    torch.testing.assert_close(view.target_probs[-1, :-1], p, rtol=1e-4, atol=1e-6)
    assert torch.equal(view.top_ids[-1], logits.argmax(-1))


def test_view_command_writes_both_files(tiny_hf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "v"
    assert main(["view", "--model", str(tiny_hf_dir), "--prompt", PROMPT, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["view.html", "view.png"]
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(PROMPT + "\n", encoding="utf-8")
    out2 = tmp_path / "v2"
    argv = ["view", "--model", str(tiny_hf_dir), "--prompt-file", str(prompt_file)]
    assert main([*argv, "--topk", "3", "--out", str(out2)]) == 0
    # the file's final newline is dropped: the same picture
    assert (out2 / "view.html").read_text().count("<td tabindex=0") == (
        out / "view.html"
    ).read_text().count("<td tabindex=0")


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one of --prompt and --prompt-file"),
        (["--prompt", "a", "--prompt-file", "x"], "give exactly one of --prompt and --prompt-file"),
        (["--prompt-file", "/no/such/file.txt"], "not found"),
        (["--prompt", ""], "the prompt is empty"),
        (["--prompt", "a", "--topk", "0"], "--topk"),
    ],
)
def test_view_errors_are_one_line(tiny_hf_dir: Path, tmp_path: Path, capsys, args, message):
    code = main(["view", "--model", str(tiny_hf_dir), *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("causalshift view: error: ") and message in last


def test_api_view_of_a_model_in_memory(tiny_hf_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = cs.load_model(str(tiny_hf_dir), device="cpu")
    view = cs.view(model, tokenizer, PROMPT, topk=2)
    assert view.top_tokens[-1] == [tokenizer.decode([i]) for i in greedy(model, view.input_ids)]
    paths = view.save(tmp_path / "out")
    assert [p.name for p in paths] == ["view.png", "view.html"]
    assert "<table>" in view._repr_html_()
    with pytest.raises(cs.UserError, match="tokenizer"):
        cs.view(model, None, PROMPT)


@pytest.mark.slow
def test_gemma_view_of_the_issue_prompt(tmp_path: Path) -> None:
    """Gemma 3 270M: BOS first, the last row is the model's greedy prediction, and the
    picture shows the input regime at layer 0 and the answer at the last layer."""
    model, tokenizer = cs.load_model("gemma-3-270m", device="cpu")
    view = cs.view(model, tokenizer, PROMPT)
    assert view.tokens[0] == "<bos>" and len(view.tokens) == 13
    assert torch.equal(view.top_ids[-1], greedy(model, view.input_ids))
    assert view.top_tokens[0] == view.tokens  # layer 0 decodes the input token
    assert view.top_tokens[-1][-1].strip() == "Rome"
    view.save(tmp_path)
