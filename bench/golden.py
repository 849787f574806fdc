"""Golden outputs: run every command on tiny inputs and compare two such folders.

    python -m bench.golden write OUT_DIR      # analyze, prepare, train, sweep, export, eval, report
    python -m bench.golden compare OLD NEW    # identical bytes, or equal numbers (timing aside)

A refactor that must not change behaviour is checked by running `write` before and after it
and `compare` on the two folders. Timing fields (seconds, tokens/s, elapsed), paths that
contain the output folder, and the report's build stamp are the only differences allowed.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

TIMING = {
    "seconds",
    "tokens_per_second",
    "elapsed",
    "train_tokens_per_second",
    "torch_threads",
    "loadavg",
}
TEXT = " ".join(
    f"The river number {i} flows past the old mill and into the quiet valley. "
    f"Paragraph {i % 7} ends here.\n\n"
    for i in range(400)
)


def write(out: Path) -> None:
    """Run each command once into `out` (tiny models, the test task folder)."""
    from causalshift.cli import main
    from causalshift.testing import tiny_gpt2_folder

    out.mkdir(parents=True, exist_ok=True)
    text = out / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    gpt2 = tiny_gpt2_folder(out / "gpt2")
    tasks = Path(__file__).resolve().parents[1] / "tests" / "data" / "tasks"
    steps = [
        ["analyze", "--model", gpt2, "--data", text, "--num-seqs", "4", "--seq-len", "16",
         "--out", out / "analyze"],
        ["prepare", "--data", text, "--out", out / "data", "--val-tokens", "2000"],
        ["train", "--preset", "tiny", "--data", out / "data", "--out", out / "gate",
         "--residual", "gate", "--max-steps", "6", "--no-progress"],
        ["train", "--preset", "tiny", "--data", out / "data", "--out", out / "fixed",
         "--cut-layer", "2", "--alpha", "0.5", "--max-steps", "4", "--no-progress"],
        ["sweep", "--preset", "tiny", "--data", out / "data", "--out", out / "sweep",
         "--layers", "1,2", "--seeds", "1,2", "--max-steps", "3"],
        ["export", out / "gate", "--out", out / "export"],
        ["eval", out / "gate", "--include-path", tasks, "--tasks", "cs_mc,cs_ppl",
         "--limit", "4", "--out", out / "eval"],
        ["analyze", "--model", out / "fixed", "--data", text, "--num-seqs", "2",
         "--seq-len", "12", "--out", out / "analyze-run"],
        ["report", out / "analyze", out / "gate", out / "fixed", out / "sweep", out / "eval",
         "--out", out / "report"],
    ]  # fmt: skip
    for argv in steps:
        code = main([str(a) for a in argv])
        print(f"{argv[0]}: exit {code}", flush=True)
        if code != 0:
            raise SystemExit(f"{argv[0]} failed")


def _same(a: Any, b: Any, path: str, root_a: str, root_b: str, diffs: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in TIMING:
                continue
            if k not in a or k not in b:
                diffs.append(f"{path}.{k}: only in {'new' if k in b else 'old'}")
                continue
            _same(a[k], b[k], f"{path}.{k}", root_a, root_b, diffs)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{path}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]", root_a, root_b, diffs)
    elif isinstance(a, str) and isinstance(b, str):
        if a.replace(root_a, "ROOT") != b.replace(root_b, "ROOT"):
            diffs.append(f"{path}: {a!r} != {b!r}")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    elif a != b:
        diffs.append(f"{path}: {a!r} != {b!r}")


def _same_line(x: str, y: str) -> bool:
    """Equal, or differing only in the build stamp or a row's last cell (the tokens/s column
    of the report's analysis table, a timing)."""
    if x == y or ("Built " in x and "Built " in y):
        return True
    last_td = re.compile(r"<td[^>]*>[^<]*</td></tr>")
    if "<tr>" in x:
        return last_td.sub("</tr>", x) == last_td.sub("</tr>", y)
    if x.startswith("|"):
        return x.rstrip(" |").rsplit("|", 1)[0] == y.rstrip(" |").rsplit("|", 1)[0]
    return False


def _same_tensors(a: Path, b: Path, rel: str, diffs: list[str]) -> None:
    """Same tensor names and shapes, values within float32 reduction-order noise."""
    import numpy as np
    from safetensors.numpy import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    if set(ta) != set(tb):
        diffs.append(f"{rel}: tensor names differ")
        return
    for k in ta:
        if ta[k].shape != tb[k].shape or not np.allclose(ta[k], tb[k], rtol=1e-4, atol=1e-6):
            diffs.append(f"{rel}: tensor {k} differs")


def _json_docs(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [json.loads(text)]


def compare(old: Path, new: Path) -> int:
    """Print every difference between two `write` folders; exit 1 if any."""
    diffs: list[str] = []
    files_a = {p.relative_to(old) for p in old.rglob("*") if p.is_file()}
    files_b = {p.relative_to(new) for p in new.rglob("*") if p.is_file()}
    for rel in sorted(files_a ^ files_b):
        diffs.append(f"{rel}: only in {'new' if rel in files_b else 'old'}")
    same_bytes = 0
    for rel in sorted(files_a & files_b):
        a, b = old / rel, new / rel
        if a.read_bytes() == b.read_bytes():
            same_bytes += 1
            continue
        if rel.suffix in (".json", ".jsonl"):
            before = len(diffs)
            _same(_json_docs(a), _json_docs(b), str(rel), str(old), str(new), diffs)
            if len(diffs) == before:
                same_bytes += 0  # equal numbers, timing aside
            continue
        if rel.suffix in (".md", ".html", ".csv", ".txt", ".log"):
            la = a.read_text().replace(str(old), "ROOT").splitlines()
            lb = b.read_text().replace(str(new), "ROOT").splitlines()
            bad = [(x, y) for x, y in zip(la, lb) if not _same_line(x, y)]
            if bad or len(la) != len(lb):
                diffs.append(f"{rel}: {len(bad)} differing lines, e.g. {bad[:1]}")
            continue
        if rel.suffix == ".safetensors":
            _same_tensors(a, b, str(rel), diffs)
            continue
        if rel.name == "train_state.pt":
            continue  # pickled optimizer state: its bytes vary run to run; weights are checked
        diffs.append(f"{rel}: bytes differ")
    for d in diffs:
        print(d)
    print(f"{len(files_a & files_b)} common files, {same_bytes} byte-identical, "
          f"{len(diffs)} differences")  # fmt: skip
    return 1 if diffs else 0


if __name__ == "__main__":
    cmd, *paths = sys.argv[1:]
    if cmd == "write":
        write(Path(paths[0]))
    else:
        sys.exit(compare(Path(paths[0]), Path(paths[1])))
