"""A table of bad inputs through `causalshift.cli.main([...])`, for every subcommand.

Each case asserts what a user is promised (issue 11): exit code 2; exactly one error line
on stderr, `causalshift CMD: error: ...` (progress bars may come before it), that names the
cause (a regex per case); no traceback; and nothing left behind: the case's folder, the
shared tiny inputs and the cache hold exactly the files they held before (no results, no
empty run directory, no temporary file).

Arguments name their inputs with placeholders, filled in per case:
{hf} a tiny HF GPT-2 folder, {text} a text file, {data} a prepared data dir, {run} a
finished tiny training run, {tasks} the test task folder, {tmp} the case's own folder (where
its `setup` writes broken inputs) and {out} {tmp}/out (the output that must not appear).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from causalshift.cli import main

from .conftest import TINY_RUN_STEPS, TINY_TRAIN_ARGS

TASKS = Path(__file__).parent / "data" / "tasks"
Setup = Callable[[Path, dict[str, Path]], None]


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    message: str  # regex searched in the error line
    setup: Setup | None = None


# ---------------------------------------------------------------------------------------------
# Broken inputs, written into the case's folder by `Case.setup`


def write(name: str, content: str | bytes) -> Setup:
    """Write `content` to {tmp}/NAME (parent folders created)."""

    def setup(tmp: Path, shared: dict[str, Path]) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8") if isinstance(content, str) else content
        path.write_bytes(data)

    return setup


def write_json(name: str, obj: object) -> Setup:
    return write(name, json.dumps(obj))


def both(*setups: Setup) -> Setup:
    def setup(tmp: Path, shared: dict[str, Path]) -> None:
        for s in setups:
            s(tmp, shared)

    return setup


def truncate(path: Path) -> None:
    """Keep the first half of the file (a copy cut short by a full disk or a kill)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_middle(path: Path) -> None:
    """Invert 64 bytes in the middle of the file: the size and the header stay intact."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))


def copy_of(key: str, damage: Callable[[Path], None] | None = None, file: str = "") -> Setup:
    """{tmp}/KEY: a copy of the shared input KEY, with `damage` done to its FILE."""

    def setup(tmp: Path, shared: dict[str, Path]) -> None:
        shutil.copytree(shared[key], tmp / key)
        if damage is not None:
            damage(tmp / key / file)

    return setup


def gguf_truncated(tmp: Path, shared: dict[str, Path]) -> None:
    """{tmp}/t.gguf: a GGUF v3 header that ends inside its key/value table."""
    header = b"GGUF" + (3).to_bytes(4, "little") + (1).to_bytes(8, "little")
    kv = (5).to_bytes(8, "little") + (20).to_bytes(8, "little") + b"general.arch"
    (tmp / "t.gguf").write_bytes(header + kv)


def remove_tokenizer(folder: Path) -> None:
    """Delete an HF folder's tokenizer files (the model saved without its tokenizer)."""
    for f in folder.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            f.unlink()


def bert_folder(tmp: Path, shared: dict[str, Path]) -> None:
    """{tmp}/bert: an HF folder of an architecture the lens does not know (with a tokenizer)."""
    folder = tmp / "bert"
    folder.mkdir()
    for f in shared["hf"].iterdir():
        if f.is_file() and f.suffix in (".json", ".txt") and f.name != "config.json":
            shutil.copy(f, folder / f.name)
    config = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 50257}
    (folder / "config.json").write_text(json.dumps(config))


def ids_above_vocab(tmp: Path, shared: dict[str, Path]) -> None:
    """{tmp}/bigids: a data dir whose shards hold token ids >= the GPT-2 vocabulary."""
    from causalshift.train.prepare import write_token_dir

    tokens = np.arange(4_000) % 60_000 + 50_000  # uint16, mostly >= 50257
    write_token_dir(tmp / "bigids", tokens[:3_500], tokens[3_500:])


def narrow_lens(tmp: Path, shared: dict[str, Path]) -> None:
    """{tmp}/lens: a tuned lens of 2 layers of width 16 (the tiny HF model's width is 32)."""
    from causalshift.lens.tuned import TunedLens

    TunedLens(2, 16).save(tmp / "lens")


def lens_without_bias(tmp: Path, shared: dict[str, Path]) -> None:
    """{tmp}/lens: a lens for the tiny model whose params.pt lacks the translators' biases."""
    import torch

    write_json("lens/config.json", {"d_model": 32, "num_hidden_layers": 2})(tmp, shared)
    torch.save({f"{i}.weight": torch.zeros(32, 32) for i in range(2)}, tmp / "lens/params.pt")


BAD_YAML = "task: bad\ndataset_path: json\n  output_type: [unclosed\n"
MISSING_DATA_YAML = """task: nodata
dataset_path: json
dataset_kwargs:
  data_files:
    test: /nonexistent/causalshift/missing.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_target: 0
doc_to_choice: ["a", "b"]
metric_list:
  - metric: acc
"""

NOT_UTF8 = b"The first line is fine.\nthe second is not: \xff\xfe caf\xe9\n"
FILE = write("file.txt", "a plain file where a folder is needed\n")
NO_DATA_DIR = write("nodata/README.md", "no .txt, .jsonl or .parquet here\n")
NOT_A_MODEL = write("notamodel/README.md", "no config.json here\n")
NON_EMPTY = write("full/keep.txt", "the user's file\n")
RUN_COPY = copy_of("run")

# ---------------------------------------------------------------------------------------------
# The table


def case(
    argv: list[str],
    message: str,
    setup: Setup | None = None,
    xfail: str = "",
    id: str = "",
    slow: bool = False,
) -> object:
    """One row: `argv` for main(), the regex its error line must match, the broken inputs.

    xfail: the part of issue 11 still being fixed (a strict xfail: it must fail until then).
    slow: the row needs lm-eval's index of its ~15k built-in tasks (tens of seconds).
    The test id is the command and what the row adds to its base arguments (then `id`)."""
    marks = [pytest.mark.xfail(strict=True, reason=f"issue 11: {xfail}")] if xfail else []
    marks += [pytest.mark.slow] if slow else []
    return pytest.param(Case(tuple(argv), message, setup), marks=marks, id=_row_id(argv, id))


def _row_id(argv: list[str], extra: str) -> str:
    rest = argv[1:]
    for base in BASES:
        if argv[: len(base)] == base:
            rest = argv[len(base) :]
            break
    words = [w.replace("{tmp}/", "").replace("{", "").replace("}", "") for w in rest]
    return " ".join([argv[0], *words, extra]).strip()


A = ["analyze", "--data", "{text}", "--num-seqs", "2", "--seq-len", "8", "--out", "{out}",
     "--no-plots", "--device", "cpu"]  # fmt: skip
AM = [*A, "--model", "{hf}"]
P = ["prepare", "--data", "{text}", "--out", "{out}", "--threads", "1", "--val-tokens", "64"]
T = ["train", *TINY_TRAIN_ARGS, "--max-steps", "2", "--data", "{data}", "--out", "{out}"]
R = ["train", "--resume", "--out", "{tmp}/run", "--no-progress"]  # on a copy of {run}
S = ["sweep", "--preset", "tiny", "--out", "{out}", "--data", "{data}", "--max-steps", "1",
     "--layers", "1", "--seeds", "1", "--no-baseline", "--devices", "cpu", "--train-args",
     "--no-compile --no-progress --threads 1 --dtype float32 --n-embd 32 --n-head 2"]  # fmt: skip
EO = ["--tasks", "cs_mc", "--include-path", "{tasks}", "--limit", "2", "--device", "cpu",
      "--out", "{out}"]  # fmt: skip
E = ["eval", "{run}", *EO]
V = ["view", "--model", "{hf}", "--device", "cpu", "--out", "{out}"]
IV = ["intervene", "--model", "{hf}", "--data", "{text}", "--num-seqs", "2", "--seq-len", "8",
      "--device", "cpu", "--out", "{out}"]  # fmt: skip
FL = ["fit-lens", "--model", "{hf}", "--data", "{text}", "--seq-len", "8", "--batch-size", "2",
      "--eval-seqs", "2", "--skip-tokens", "0", "--device", "cpu", "--out", "{out}"]  # fmt: skip
BASES = [AM, A, V, IV, FL, P, T, R, S, E]  # longest first where one extends another


# fmt: off
ANALYZE = [
    case([*AM, "--topk", "0"], r"--topk.*\b0\b"),
    case([*AM, "--topk", "1,50258"], r"--topk.*(vocab|50257)"),
    case([*AM, "--topk", "1,x"], r"--topk.*comma-separated integers"),
    case([*AM, "--num-seqs", "0"], r"--num-seqs.*\b0\b"),
    case([*AM, "--num-seqs", "-1"], r"--num-seqs.*-1"),
    case([*AM, "--num-seqs", "abc"], r"--num-seqs.*abc"),
    case([*AM, "--num-seqs", "500"], r"only \d+ tokens.*need 500 x"),
    case([*AM, "--seq-len", "65"], r"--seq-len 65 exceeds .*context of 64"),
    case([*AM, "--seq-len", "2"], r"--seq-len.*\b2\b"),
    case([*AM, "--seq-len", "inf"], r"--seq-len.*inf"),
    case([*AM, "--batch-size", "0"], r"--batch-size.*\b0\b"),
    case([*AM, "--vocab-chunk", "0"], r"--vocab-chunk.*\b0\b"),
    case([*AM, "--seed", "-1"], r"--seed.*-1"),
    case([*AM, "--device", "tpu"], r"device.*tpu"),
    case([*AM, "--dtype", "float8"], r"--dtype.*float8"),
    case([*AM, "--dtype", "int8-vnni"], r"--dtype.*int8-vnni"),
    case([*A, "--model", "{hf}", "--model", "{hf}"], r"--model.*once"),
    case([*AM, "--lens", "tuned:{tmp}/missing"], r"--lens tuned:.*missing not found"),
    case([*AM, "--lens", "bogus"], r"--lens: unknown lens 'bogus'"),
    case([*AM, "--lens", "logit,logit"], r"--lens: each lens may be given once"),
    case([*AM, "--lens", "tuned:{tmp}/lens"], r"lens is for 2 layers of width 16, but .* width 32", narrow_lens, id="wrong width"),  # noqa: E501
    case([*AM, "--lens", "tuned:{tmp}/lens"], r"params\.pt: expected the keys", lens_without_bias, id="no biases"),  # noqa: E501
    case([*AM, "--sublayers", "--lens", "logit,tuned:{tmp}/lens"], r"--sublayers works with --lens logit only", narrow_lens),  # noqa: E501
    case([*A, "--model", "{tmp}/missing"], r"missing.*not found"),
    case([*A, "--model", "{text}"], r"corpus\.txt.*not (found|a model)"),
    case([*A, "--model", "{tmp}/notamodel"], r"notamodel.*no config\.json", NOT_A_MODEL),
    case([*A, "--model", "{tmp}/bert"], r"unsupported architecture 'bert'", bert_folder),
    case([*A, "--sublayers", "--model", "{tmp}/bert"], r"unsupported architecture 'bert'", bert_folder),  # noqa: E501
    case([*A, "--model", "{tmp}/hf"], r"hf.*no tokenizer", copy_of("hf", remove_tokenizer), id="no tokenizer"),  # noqa: E501
    case([*A, "--model", "{tmp}/t.gguf"], r"t\.gguf", gguf_truncated),
    case([*A, "--model", "{tmp}/hf"], r"model\.safetensors.*(truncated|corrupt)", copy_of("hf", truncate, "model.safetensors"), id="truncated"),  # noqa: E501
    case([*A, "--model", "{tmp}/run"], r"model\.safetensors.*(truncated|corrupt)", copy_of("run", truncate, "model.safetensors"), id="truncated"),  # noqa: E501
    case([*A, "--model", "{tmp}/run"], r"model\.safetensors.*(checksum|sha256|corrupt)", copy_of("run", flip_middle, "model.safetensors"), id="flipped bytes"),  # noqa: E501
    case([*A, "--model", "no-such-org/no-such-model"], r"no-such-model.*no network"),
    case([*AM, "--data", "{tmp}/missing.txt"], r"missing\.txt.*no such file"),
    case([*AM, "--data", "{tmp}/empty.txt"], r"empty\.txt.*empty", write("empty.txt", "")),
    case([*AM, "--data", "{tmp}/bad.txt"], r"bad\.txt.*not UTF-8.*byte offset 43", write("bad.txt", NOT_UTF8)),  # noqa: E501
    case([*AM, "--data", "{tmp}/data.csv"], r"data\.csv.*unknown file type '\.csv'", write("data.csv", "text\nhello\n")),  # noqa: E501
    case([*AM, "--data", "{tmp}/bad.jsonl"], r"bad\.jsonl.*line 2 .*JSON", write("bad.jsonl", '{"text": "a"}\n{"text": \n')),  # noqa: E501
    case([*AM, "--data", "{tmp}/nodata"], r"nodata.*no \.txt, \.jsonl", NO_DATA_DIR),
    case([*AM, "--out", "{tmp}/file.txt"], r"--out .*file\.txt.*not a folder", FILE),
    case([*AM, "--out", "{tmp}/file.txt/sub"], r"file\.txt", FILE),
]

VIEW = [
    case(V, r"--prompt.*--prompt-file"),
    case([*V, "--prompt", "Hello", "--prompt-file", "{text}"], r"--prompt.*--prompt-file"),
    case([*V, "--prompt-file", "{tmp}/missing.txt"], r"missing\.txt.*not found"),
    case([*V, "--prompt-file", "{tmp}/bad.txt"], r"bad\.txt.*(UTF-8|utf-8)", write("bad.txt", NOT_UTF8)),  # noqa: E501
    case([*V, "--prompt", ""], r"prompt is empty"),
    case([*V, "--prompt", "Hello", "--topk", "0"], r"--topk.*\b0\b"),
    case([*V, "--prompt", "Hello", "--topk", "50258"], r"topk.*(vocab|50257)"),  # noqa: E501
    case([*V, "--prompt", "word " * 80], r"(context|positions).*64|64.*(context|positions)"),
    case([*V, "--prompt", "Hello", "--model", "{tmp}/missing"], r"missing.*not found"),
    case([*V, "--prompt", "Hello", "--device", "tpu"], r"device.*tpu"),
    case([*V, "--prompt", "Hello", "--dtype", "float8"], r"--dtype.*float8"),
    case([*V, "--prompt", "Hello", "--out", "{tmp}/file.txt"], r"--out .*file\.txt.*not a folder", FILE),  # noqa: E501
    case([*V, "--prompt", "Hello", "--out", "{tmp}/file.txt/sub"], r"file\.txt", FILE),  # noqa: E501
]

PREPARE = [
    case([*P, "--val-tokens", "0"], r"val.tokens.*\b0\b"),
    case([*P, "--val-tokens", "-5"], r"val.tokens.*-5"),
    case([*P, "--val-tokens", "inf"], r"val.tokens.*inf"),
    case([*P, "--val-fraction", "0"], r"val.fraction.*\(0, 1\)"),
    case([*P, "--val-fraction", "nan"], r"val.fraction.*nan"),
    case([*P, "--val-fraction", "inf"], r"val.fraction.*inf"),
    case([*P, "--shard-tokens", "0"], r"shard.tokens.*\b0\b"),
    case([*P, "--threads", "-1"], r"threads.*-1"),
    case([*P, "--data", "{tmp}/missing.txt"], r"missing\.txt.*no such file"),
    case([*P, "--data", "{tmp}/empty.txt"], r"empty\.txt.*empty", write("empty.txt", "")),
    case([*P, "--data", "{tmp}/blank.txt"], r"blank\.txt.*no text", write("blank.txt", "\n \n\t\n")),  # noqa: E501
    case([*P, "--data", "{tmp}/bad.txt"], r"bad\.txt.*not UTF-8", write("bad.txt", NOT_UTF8)),  # noqa: E501
    case([*P, "--data", "{tmp}/nodata"], r"nodata.*no \.txt, \.jsonl", NO_DATA_DIR),
    case([*P, "--out", "{tmp}/full"], r"full.*not empty", NON_EMPTY),
    case([*P, "--out", "{tmp}/file.txt"], r"file\.txt", FILE),
    case([*P, "--out", "{tmp}/file.txt/sub"], r"file\.txt", FILE),
]

TRAIN = [
    case([*T, "--alpha", "inf"], r"alpha.*inf"),
    case([*T, "--alpha", "nan"], r"alpha.*nan"),
    case([*T, "--alpha", "-0.5"], r"alpha.*-0\.5"),
    case([*T, "--lr", "inf"], r"\blr\b.*inf"),
    case([*T, "--lr", "0"], r"\blr\b.*\b0"),
    case([*T, "--lr", "nan"], r"\blr\b.*nan"),
    case([*T, "--gate-lr", "inf"], r"gate.lr.*inf"),
    case([*T, "--residual", "gate", "--tau", "inf"], r"tau.*inf"),
    case([*T, "--residual", "gate", "--tau", "0"], r"tau.*\b0"),
    case([*T, "--grad-clip", "nan"], r"grad.clip.*nan"),
    case([*T, "--grad-clip", "-1"], r"grad.clip.*-1"),
    case([*T, "--seed", "-1"], r"seed.*-1"),
    case([*T, "--beta1", "1.5"], r"beta1.*1\.5"),
    case([*T, "--beta2", "nan"], r"beta2.*nan"),
    case([*T, "--weight-decay", "-1"], r"weight.decay.*-1"),
    case([*T, "--min-lr-ratio", "2"], r"min.lr.ratio.*\b2"),
    case([*T, "--warmup-steps", "-1"], r"warmup.steps.*-1"),
    case([*T, "--max-steps", "0"], r"max.steps.*\b0\b"),
    case([*T, "--batch-size", "0"], r"batch.size.*\b0\b"),
    case([*T, "--grad-accum", "0"], r"grad.accum.*\b0\b"),
    case([*T, "--eval-interval", "0"], r"eval.interval.*\b0\b"),
    case([*T, "--threads", "-1"], r"threads.*-1"),
    case([*T, "--block-size", "0"], r"block.size.*\b0\b"),
    case([*T, "--n-layer", "0"], r"n.layer.*\b0\b"),
    case([*T, "--n-head", "3"], r"n.embd 32 .*n.head 3"),
    case([*T, "--dropout", "1"], r"dropout.*\b1"),
    case([*T, "--cut-layer", "3"], r"cut layer 3 .*1\.\.2"),
    case([*T, "--cut-layer", "0"], r"cut layer 0 .*1\.\.2"),
    case([*T, "--residual", "gate", "--cut-layer", "1"], r"--cut-layer.*'gate'"),
    case([*T, "--residual", "nope"], r"nope"),
    case([*T, "--batch-tokens", "100"], r"100 tokens.*not divisible.*world size 1"),
    case([*T, "--dtype", "float8"], r"dtype.*float8"),
    case([*T, "--device", "tpu"], r"device.*tpu"),
    case([*T, "--tracker", "mlflow"], r"unknown tracker 'mlflow' in --tracker; choose none, tensorboard, wandb"),  # noqa: E501
    case([*T, "--tracker", "none", "--tracker", "wandb"], r"none cannot be combined"),
    case([*T, "--block-size", "1024"], r"(too short|tokens).*(1024|1025)|(1024|1025).*tokens"),  # noqa: E501
    case([*T, "--data", "{tmp}/missing"], r"missing not found"),
    case([*T, "--data", "{tmp}/nodata"], r"nodata.*meta\.json", NO_DATA_DIR),
    case([*T, "--data", "{tmp}/empty.txt"], r"empty\.txt.*empty", write("empty.txt", "")),
    case([*T, "--data", "{tmp}/bad.txt"], r"bad\.txt.*not UTF-8", write("bad.txt", NOT_UTF8)),
    case([*T, "--data", "{tmp}/bigids"], r"token id|vocabulary", ids_above_vocab),  # noqa: E501
    case([*T, "--config", "{tmp}/missing.json"], r"missing\.json not found"),
    case([*T, "--config", "{tmp}/bad.json"], r"bad\.json.*not valid JSON", write("bad.json", "{")),
    case([*T, "--config", "{tmp}/keys.json"], r"unknown .*keys: nope", write_json("keys.json", {"nope": 1})),  # noqa: E501
    case([*T, "--config", "{tmp}/type.json"], r"n.layer.*'two'", write_json("type.json", {"n_layer": "two"})),  # noqa: E501
    case([*T, "--out", "{run}"], r"already holds a run with a checkpoint"),
    case([*T, "--out", "{tmp}/file.txt"], r"file\.txt", FILE),
    case([*T, "--out", "{tmp}/file.txt/sub"], r"file\.txt", FILE),
    case(["train", "--resume"], r"--resume needs --out"),
    case(["train", "--resume", "--out", "{tmp}/missing"], r"nothing to resume"),
    case(["train", "--resume", "--out", "{tmp}/nodata"], r"nothing to resume", NO_DATA_DIR),
    case([*R, "--max-steps", "1"], rf"max.steps 1 .*{TINY_RUN_STEPS}", RUN_COPY),  # noqa: E501
    case([*R, "--n-layer", "3"], r"n.layer", RUN_COPY),
    case([*R, "--residual", "gate"], r"residual", RUN_COPY),
    case(["train", "--resume", "--preset", "tiny", "--out", "{tmp}/run", "--n-layer", "3"], r"n.layer", RUN_COPY),  # noqa: E501
    case(R, r"train_state\.pt", copy_of("run", truncate, "train_state.pt"), id="truncated train_state.pt"),  # noqa: E501
    case(R, r"train_state\.pt.*(checksum|sha256|corrupt)", copy_of("run", flip_middle, "train_state.pt"), id="flipped train_state.pt"),  # noqa: E501
    case(R, r"model\.safetensors.*(checksum|sha256|corrupt)", copy_of("run", flip_middle, "model.safetensors"), id="flipped model.safetensors"),  # noqa: E501
]

SWEEP = [
    case([*S, "--alpha", "inf"], r"alpha.*inf"),
    case([*S, "--alpha", "nan"], r"alpha.*nan"),
    case([*S, "--alpha", "-1"], r"alpha.*-1"),
    case([*S, "--alpha", "0,0.5,-0.25"], r"--alpha must be >= 0, got -0\.25"),
    case([*S, "--alpha", "0,nan"], r"--alpha must be a finite number.*nan"),
    case([*S, "--alpha", "0,x"], r"--alpha must be comma-separated numbers"),
    case([*S, "--seeds", "1,2,1"], r"--seeds lists 1 twice"),
    case([*S, "--modes", "gate,bogus"], r"--modes 'bogus': unknown mode"),
    case([*S, "--tracker", "mlflow"], r"unknown tracker 'mlflow'"),
    case([*S, "--seeds", "-1"], r"seed.*-1"),
    case([*S, "--seeds", ""], r"no seeds given"),
    case([*S, "--seeds", "1,x"], r"seeds.*comma-separated integers"),
    case([*S, "--layers", "5"], r"cut layer 5 .*1\.\.2"),
    case([*S, "--layers", "0"], r"cut layer 0 .*1\.\.2"),
    case([*S, "--layers", "2,x"], r"comma-separated integers"),
    case([*S, "--layers", ""], r"no cut layers given"),
    case([*S, "--max-steps", "0"], r"max.steps.*\b0\b"),
    case([*S, "--devices", "tpu"], r"--devices.*tpu"),
    case([*S, "--devices", "cpu,cuda:0"], r"do not mix"),
    case([*S, "--train-args", '--lr "2e-3'], r"--train-args.*quot"),  # noqa: E501
    case([*S, "--train-args", "--lr inf"], r"\blr\b.*inf"),
    case([*S, "--train-args", "--bogus-option"], r"--bogus-option"),  # noqa: E501
    case([*S, "--config", "{tmp}/missing.json"], r"missing\.json not found"),
    case([*S, "--data", "{tmp}/missing"], r"missing not found"),
    case([*S, "--out", "{tmp}/file.txt"], r"file\.txt", FILE),
    case([*S, "--out", "{tmp}/file.txt/sub"], r"file\.txt", FILE),
]

EVAL = [
    case(["eval", "{tmp}/missing", *EO], r"not found.*missing|missing.*not found"),
    case(["eval", "{text}", *EO], r"(not found|not a (folder|directory)).*corpus\.txt|corpus\.txt.*(not found|not a (folder|directory))"),  # noqa: E501
    case(["eval", "{tmp}/notamodel", *EO], r"notamodel.*config\.json", NOT_A_MODEL),
    case(["eval", "{tmp}/bert", *EO], r"bert", bert_folder),
    case(["eval", "{tmp}/run", *EO], r"model\.safetensors.*(truncated|corrupt)", copy_of("run", truncate, "model.safetensors"), id="truncated"),  # noqa: E501
    case([*E, "--batch-size", "0"], r"--batch-size.*\b0\b"),
    case([*E, "--num-fewshot", "-1"], r"--num-fewshot.*-1"),
    case([*E, "--limit", "0"], r"--limit.*\b0\b"),
    case([*E, "--limit", "inf"], r"--limit.*inf"),
    case([*E, "--limit", "nan"], r"--limit.*nan"),
    case([*E, "--seed", "-1"], r"--seed.*-1"),
    case([*E, "--dtype", "float8"], r"--dtype.*float8"),
    case([*E, "--backend", "nope"], r"--backend.*nope"),
    case([*E, "--device", "tpu"], r"--device.*tpu"),
    case([*E, "--tasks", ","], r"--tasks is empty"),
    case([*E, "--include-path", "{tmp}/missing"], r"--include-path .*missing"),
    case([*E, "--tasks", "cs_mc,no_such_task"], r"unknown lm-eval task\(s\): no_such_task", slow=True),  # noqa: E501
    case([*E, "--include-path", "{tmp}/tasks", "--tasks", "bad"], r"bad\.yaml", write("tasks/bad.yaml", BAD_YAML), slow=True),  # noqa: E501
    case([*E, "--include-path", "{tmp}/tasks", "--tasks", "nodata"], r"missing\.jsonl", write("tasks/nodata.yaml", MISSING_DATA_YAML)),  # noqa: E501
    case([*E, "--out", "{tmp}/file.txt/sub"], r"file\.txt", FILE),
]

EXPORT = [
    case(["export", "{tmp}/missing", "--out", "{out}"], r"missing.*(not found|not a directory)"),
    case(["export", "{text}", "--out", "{out}"], r"corpus\.txt.*not a (directory|folder)"),
    case(["export", "{tmp}/notamodel", "--out", "{out}"], r"notamodel.*config\.json", NOT_A_MODEL),  # noqa: E501
    case(["export", "{tmp}/bert", "--out", "{out}"], r"bert.*not a causalshift", bert_folder),
    case(["export", "{tmp}/run", "--out", "{out}"], r"model\.safetensors.*(truncated|corrupt)", copy_of("run", truncate, "model.safetensors"), id="truncated"),  # noqa: E501
    case(["export", "{tmp}/run", "--out", "{out}"], r"model\.safetensors.*(checksum|sha256|corrupt)", copy_of("run", flip_middle, "model.safetensors"), id="flipped bytes"),  # noqa: E501
    case(["export", "{run}", "--out", "{tmp}/file.txt"], r"file\.txt.*not a (directory|folder)", FILE),  # noqa: E501
    case(["export", "{run}", "--out", "{tmp}/full"], r"full.*non-empty", NON_EMPTY),
    case(["export", "{run}", "--out", "{tmp}/file.txt/sub"], r"file\.txt", FILE),
]

REPORT = [
    case(["report", "{tmp}/missing", "--out", "{out}"], r"missing not found"),
    case(["report", "{tmp}/nodata", "--out", "{out}"], r"no result files found", NO_DATA_DIR),
    case(["report", "{tmp}/res", "--out", "{out}"], r"results\.json.*JSON", write("res/results.json", "{"), id="results.json not JSON"),  # noqa: E501
    case(["report", "{tmp}/res", "--out", "{out}"], r"results\.json", write("res/results.json", b"\xff\xfe{}"), id="results.json not UTF-8"),  # noqa: E501
    case(["report", "{tmp}/res", "--out", "{out}"], r"results\.json", write_json("res/results.json", {"models": 3}), id="results.json models not a list"),  # noqa: E501
    case(["report", "{tmp}/res", "--out", "{out}"], r"results\.json", write_json("res/results.json", {"models": [{"name": "x"}]}), id="results.json model without fields"),  # noqa: E501
    case(["report", "{tmp}/res", "--out", "{out}"], r"sweep\.json.*JSON", write("res/sweep.json", "[1,"), id="sweep.json not JSON"),  # noqa: E501
    case(["report", "{tmp}/res", "--out", "{out}"], r"sweep\.json", write_json("res/sweep.json", {"runs": 5}), id="sweep.json runs not a list"),  # noqa: E501
    case(["report", "{tmp}/res", "--out", "{out}"], r"eval\.json", write_json("res/eval.json", {"results": {}}), id="eval.json results not a list"),  # noqa: E501
    case(["report", "{tmp}/res", "--out", "{out}"], r"config\.json.*JSON", both(write("res/config.json", "{"), write("res/metrics.jsonl", '{"step": 0}\n')), id="run config.json not JSON"),  # noqa: E501
    case(["report", "{run}", "--out", "{tmp}/file.txt"], r"--out .*file\.txt.*not a folder", FILE),  # noqa: E501
    case(["report", "{run}", "--out", "{tmp}/file.txt/sub"], r"file\.txt", FILE),
]
INTERVENE = [
    case([*IV, "--layers", "3"], r"--layers: 3 is not a block.*1\.\.2"),
    case([*IV, "--layers", "0"], r"--layers: 0 is not a block"),
    case([*IV, "--layers", "1,x"], r"--layers.*comma-separated layers"),
    case([*IV, "--alpha", "-0.5"], r"--alpha.*>= 0.*-0\.5"),
    case([*IV, "--alpha", "0,nan"], r"--alpha.*finite.*nan"),
    case([*IV, "--alpha", "inf"], r"--alpha.*finite.*inf"),
    case([*IV, "--alpha", "x"], r"--alpha.*comma-separated numbers"),
    case([*IV, "--seq-len", "65"], r"--seq-len 65 exceeds .*context of 64"),
    case([*IV, "--device", "tpu"], r"device.*tpu"),
    case([*IV, "--out", "{tmp}/file.txt"], r"--out .*file\.txt.*not a folder", FILE),
    case([*IV, "--learn-gate", "--alpha", "0,0.5"], r"--learn-gate takes one --alpha.*got 2"),
    case([*IV, "--learn-gate", "--alpha", "-1"], r"--alpha.*>= 0.*-1"),
    case([*IV, "--learn-gate", "--alpha", "nan"], r"--alpha.*finite.*nan"),
    case([*IV, "--learn-gate", "--tau", "0"], r"--tau must be > 0"),
    case([*IV, "--learn-gate", "--tau", "inf"], r"--tau.*finite"),
    case([*IV, "--learn-gate", "--steps", "0"], r"--steps must be a positive integer"),
    case([*IV, "--learn-gate", "--lr", "-0.1"], r"--lr must be > 0"),
    case([*IV, "--learn-gate", "--eval-seqs", "0"], r"--eval-seqs must be a positive integer"),
    case([*IV, "--learn-gate", "--layers", "1"], r"--layers does not apply to --learn-gate"),
    case([*IV, "--learn-gate", "--seq-len", "65"], r"--seq-len 65 exceeds .*context of 64"),
]
FIT_LENS = [
    case([*FL, "--tokens", "0"], r"--tokens.*\b0\b"),
    case([*FL, "--tokens", "-5"], r"--tokens.*-5"),
    case([*FL, "--tokens", "inf"], r"--tokens.*inf"),
    case([*FL, "--steps", "0"], r"--steps.*\b0\b"),
    case([*FL, "--tokens", "16", "--steps", "1"], r"--tokens or --steps, not both"),
    case([*FL, "--lr", "0"], r"--lr.*\b0"),
    case([*FL, "--lr", "nan"], r"--lr.*nan"),
    case([*FL, "--weight-decay", "-1"], r"--weight-decay.*-1"),
    case([*FL, "--optimizer", "lbfgs"], r"--optimizer.*lbfgs"),
    case([*FL, "--eval-seqs", "0"], r"--eval-seqs.*\b0\b"),
    case([*FL, "--device", "tpu"], r"device.*tpu"),
    case([*FL, "--seq-len", "65"], r"--seq-len 65 exceeds .*context of 64"),
    case([*FL, "--tokens", "100000000"], r"too little text.*lower --tokens"),
    case([*FL, "--model", "{tmp}/missing"], r"missing.*not found"),
    case([*FL, "--out", "{tmp}/lens"], r"already holds a tuned lens", narrow_lens),
    case([*FL, "--out", "{tmp}/file.txt"], r"file\.txt", FILE),
    case(["fit-lens", "--data", "{text}"], r"give --model"),
    case(["fit-lens", "--resume"], r"--resume needs --out"),
    case(["fit-lens", "--resume", "--out", "{tmp}/missing"], r"missing has no checkpoint: nothing to resume"),  # noqa: E501
    case(["fit-lens", "--resume", "--out", "{tmp}/lens"], r"finished lens: nothing to resume", narrow_lens),  # noqa: E501
]
# fmt: on

CASES = ANALYZE + VIEW + INTERVENE + FIT_LENS + PREPARE + TRAIN + SWEEP + EVAL + EXPORT + REPORT


# ---------------------------------------------------------------------------------------------
# Running a case


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """A cache folder of this module's own, so that nothing left in it goes unseen."""
    from causalshift.cache import cache_dir
    from causalshift.corpus import gpt2_tokenizer_dir

    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAUSALSHIFT_CACHE", str(root))
        gpt2_tokenizer_dir()  # what a run directory's lens reads (written on first use)
        for sub in ("data", "models", "gguf"):
            cache_dir(sub)
        yield root


@pytest.fixture(scope="module")
def shared(
    private_cache: Path,
    tiny_hf_dir: Path,
    tiny_text_file: Path,
    tiny_data_dir: Path,
    tiny_run_dir: Path,
) -> dict[str, Path]:
    return {
        "hf": tiny_hf_dir,
        "text": tiny_text_file,
        "data": tiny_data_dir,
        "run": tiny_run_dir,
        "tasks": TASKS,
        "cache": private_cache,
    }


def listing(root: Path) -> dict[str, tuple[int, int] | str]:
    """Every file (size, mtime) and folder under `root`."""
    if root.is_file():
        st = root.stat()
        return {root.name: (st.st_size, st.st_mtime_ns)}
    found: dict[str, tuple[int, int] | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root)] = "folder"
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return found


def call_main(argv: list[str]) -> int | str | None:
    """main()'s exit code; argparse's own errors leave through SystemExit(2)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def check_error_line(err: str, command: str, message: str) -> None:
    """One error line, last, `causalshift COMMAND: error: ...`, matching `message`."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in err, err
    last = lines[-1]
    assert last.startswith(f"causalshift {command}: error: "), err[-2000:]
    others = [line for line in lines[:-1] if re.search(r"\berror\b", line, re.IGNORECASE)]
    assert not others, f"more than one error line: {others}"
    assert re.search(message, last), f"{message!r} not in {last!r}"


@pytest.mark.parametrize("row", CASES)
def test_bad_input_is_one_line_and_leaves_nothing(
    row: Case,
    shared: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative default output would land here, and be seen
    if row.setup is not None:
        row.setup(tmp_path, shared)
    places = {k: str(v) for k, v in shared.items()}
    places.update(tmp=str(tmp_path), out=str(tmp_path / "out"))
    argv = [a.format(**places) for a in row.argv]
    watched = [tmp_path, *(shared[k] for k in ("hf", "text", "data", "run", "cache"))]
    before = [listing(p) for p in watched]
    capsys.readouterr()

    code = call_main(argv)

    out, err = capsys.readouterr()
    assert code == 2, f"exit code {code!r}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    assert "Traceback" not in out
    check_error_line(err, argv[0], row.message)
    for root, was in zip(watched, before):
        now = listing(root)
        added = sorted(set(now) - set(was))
        changed = sorted(k for k in set(now) & set(was) if now[k] != was[k])
        removed = sorted(set(was) - set(now))
        assert not (added or changed or removed), (
            f"{root}: added {added}, changed {changed}, removed {removed}"
        )


def test_the_table_covers_every_subcommand() -> None:
    from causalshift.cli import COMMANDS

    commands = {p.values[0].argv[0] for p in CASES}
    assert commands == set(COMMANDS)
    assert len(CASES) >= 60
