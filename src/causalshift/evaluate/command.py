"""`causalshift eval`: zero-shot benchmarks through lm-evaluation-harness -> eval.json.

    causalshift eval runs/gate --tasks hellaswag,arc_easy --batch-size 32
    causalshift eval runs/gate --include-path tests/data/tasks --tasks cs_mc,cs_ppl

Each number in eval.json is labelled by task, metric and filter (lm-eval's scorer), with
its standard error. Under `torchrun` the documents split across ranks; rank 0 writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causalshift.config import (
    add_config_arguments,
    check_fields,
    config_overrides,
    option,
    str_list,
)
from causalshift.errors import UserError
from causalshift.results import RUN_CONFIG_NAME, EvalResult, EvalRow, run_info
from causalshift.runtime import environment

PAPER_TASKS = (
    "hellaswag",
    "arc_easy",
    "arc_challenge",
    "piqa",
    "winogrande",
    "lambada_openai",
    "sciq",
    "openbookqa",
)
TEMPLATE_SUFFIX = ".yaml.in"
TEMPLATE_DIR_TOKEN = "@TASKS_DIR@"
# eval.json's "environment" keys, in their order
ENVIRONMENT_FIELDS = tuple(
    "causalshift python platform device torch transformers lm_eval datasets".split()
)


def _limit(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"--limit must be a finite number > 0, got {text}")
    return int(value) if value >= 1 else value


@dataclass(frozen=True)
class EvalConfig:
    """What `causalshift eval` runs."""

    tasks: tuple[str, ...] = option(
        PAPER_TASKS, "Comma-separated lm-eval tasks (the paper's eight).", parse=str_list
    )
    include_path: str | None = option(
        None,
        "Folder of extra lm-eval task YAMLs (lm-eval's --include_path; *.yaml.in "
        "templates get @TASKS_DIR@ replaced by the folder's absolute path).",
    )
    limit: float | None = option(
        None,
        "Documents per task (an integer), or a fraction below 1 (quick checks).",
        parse=_limit,
        gt=0,
    )
    num_fewshot: int = option(0, "Few-shot examples (the paper: zero-shot).", ge=0)
    batch_size: int = option(16, "Sequences per forward pass.", ge=1)
    device: str = option("auto", "auto | cpu | cuda | cuda:N.")
    dtype: str = option("float32", "float32 | bfloat16 (autocast).")
    backend: str = option("auto", "auto | gpt (our GPT) | hf (transformers AutoModel).")
    seed: int = option(
        1234, "Seed for lm-eval's document shuffling and few-shot sampling.", ge=0, le=2**32 - 1
    )
    out: str | None = option(None, "Output folder for eval.json (default: the model folder).")

    def __post_init__(self) -> None:
        if not self.tasks:
            raise UserError("--tasks is empty")
        check_fields(self, as_options=True)
        if self.dtype not in ("float32", "bfloat16"):
            raise UserError(f"--dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.backend not in ("auto", "gpt", "hf"):
            raise UserError(f"--backend must be auto, gpt or hf, got {self.backend!r}")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise UserError(f"--device must be auto, cpu or cuda[:N], got {self.device!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="RUN_DIR|MODEL",
        help="a causalshift run directory, an export, or a local HF folder",
    )
    add_config_arguments(parser, EvalConfig)


def render_task_templates(folder: Path, dest: Path) -> Path:
    """Copy `folder`'s task YAMLs to `dest`, filling `@TASKS_DIR@` in `*.yaml.in` templates.

    lm-eval resolves `data_files` against the working directory, so a task folder that
    ships its data needs absolute paths: templates let it travel with the repository.
    """
    src = folder.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir():
            continue
        if path.name.endswith(TEMPLATE_SUFFIX):
            text = path.read_text(encoding="utf-8").replace(TEMPLATE_DIR_TOKEN, str(path.parent))
            target = dest / rel.parent / (path.name[: -len(TEMPLATE_SUFFIX)] + ".yaml")
        elif path.suffix in (".yaml", ".yml", ".py"):
            text = path.read_text(encoding="utf-8")
            target = dest / rel
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return dest


def _include_path(cfg: EvalConfig, scratch: str) -> str | None:
    """The folder to hand lm-eval; templates are rendered into `scratch` first."""
    if cfg.include_path is None:
        return None
    folder = Path(cfg.include_path)
    if not folder.is_dir():
        raise UserError(f"--include-path {folder} is not a folder")
    if not any(folder.rglob("*" + TEMPLATE_SUFFIX)):
        return str(folder.resolve())
    return str(render_task_templates(folder, Path(scratch) / "tasks"))


def malformed_task_files(folder: str | Path) -> list[str]:
    """'FILE: what is wrong' for each task YAML under `folder` that is not a YAML mapping
    (lm-eval skips such a file with a debug log, and its task is then 'unknown')."""
    import yaml

    class Loader(yaml.SafeLoader):
        """Safe YAML that accepts lm-eval's tags (`!function utils.f`) as plain values."""

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    bad = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.name.endswith((".yaml", ".yml", TEMPLATE_SUFFIX)) or not path.is_file():
            continue
        try:
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506
        except UnicodeDecodeError:
            bad.append(f"{path}: not UTF-8 text")
            continue
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            bad.append(f"{path}: {getattr(e, 'problem', None) or e}{where}")
            continue
        if not isinstance(doc, dict):
            bad.append(f"{path}: not a mapping of task fields")
    return bad


def task_manager(tasks: tuple[str, ...], include_path: str | None, source: str | None = None):
    """An lm-eval TaskManager that knows `tasks`; UserError naming any unknown task (and a
    malformed YAML in `source`, the user's --include-path, when that is why).

    Indexing lm-eval's ~15k built-in task configs takes 10-20 s: when every task is in
    `include_path`, the built-ins are left out.
    """
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in set(local.all_tasks) for t in tasks):
            return local
    manager = TaskManager(include_path=include_path)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    bad = malformed_task_files(source or include_path) if unknown and include_path else []
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(
            f"unknown lm-eval task(s): {', '.join(unknown)}; a task YAML in --include-path "
            f"is malformed: {bad[0]}{more}"
        )
    if unknown:
        raise UserError(
            f"unknown lm-eval task(s): {', '.join(unknown)} (local tasks need --include-path DIR)"
        )
    return manager


def check_tokenizer(path: Path) -> None:
    """A folder without a tokenizer of its own is read with the GPT-2 BPE (causalshift runs
    and exports): refuse one whose vocabulary is not GPT-2's, which would index out of it."""
    from causalshift.corpus.tokenizer import N_VOCAB, TOKENIZER_FILES, has_tokenizer_files

    if has_tokenizer_files(path) or not (path / RUN_CONFIG_NAME).is_file():
        return
    try:
        cfg = json.loads((path / RUN_CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the model loader names the broken config.json
    if not isinstance(cfg, dict):
        return
    model = cfg["model"] if isinstance(cfg.get("model"), dict) else {}
    vocab = cfg.get("vocab_size", model.get("vocab_size"))
    if vocab != N_VOCAB:
        raise UserError(
            f"{path} has no tokenizer ({', '.join(TOKENIZER_FILES)}) and its vocabulary "
            f"({vocab}) is not the GPT-2 one used in its place ({N_VOCAB}): save the model's "
            "tokenizer into the folder"
        )


def model_info(path: Path) -> dict[str, Any]:
    """What the model folder says about itself (pure JSON reads, no weights)."""
    info: dict[str, Any] = {"path": str(path.resolve()), "name": path.resolve().name}
    cfg_path = path / RUN_CONFIG_NAME
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = {}
        info.update(run_info(cfg))
    return info


def flatten_results(raw: dict[str, Any]) -> list[EvalRow]:
    """lm-eval's {"results": {task: {"acc,none": v, "acc_stderr,none": se}}} -> labelled rows."""
    rows = []
    groups = set(raw.get("groups", {}))
    for task, metrics in raw.get("results", {}).items():
        hib = raw.get("higher_is_better", {}).get(task, {})
        n = raw.get("n-samples", {}).get(task, {})
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, _, filt = key.partition(",")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                EvalRow(
                    task=task,
                    metric=metric,
                    filter=filt,
                    value=float(value),
                    stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
                    higher_is_better=hib.get(metric),
                    num_samples=n.get("effective"),
                    is_group=task in groups,
                    alias=metrics.get("alias", task),
                )
            )
    return rows


def run(args: argparse.Namespace) -> int:
    cfg = dataclasses.replace(EvalConfig(), **config_overrides(EvalConfig, args))
    path = Path(args.model)
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {cfg.device}: CUDA is not available here")
    if not path.is_dir():
        raise UserError(f"model not found: {path} (expected a run directory or a local HF folder)")
    check_tokenizer(path)
    out = Path(cfg.out) if cfg.out else path
    with tempfile.TemporaryDirectory(prefix="causalshift-tasks-") as scratch:
        return _evaluate(cfg, path, out, _include_path(cfg, scratch))


def _evaluate(cfg: EvalConfig, path: Path, out: Path, include_path: str | None) -> int:

    manager = task_manager(cfg.tasks, include_path, cfg.include_path)

    import lm_eval

    from causalshift.evaluate.lm_eval_adapter import CausalShiftLM

    lm = CausalShiftLM(
        path=str(path),
        device=cfg.device,
        dtype=cfg.dtype,
        batch_size=cfg.batch_size,
        backend=cfg.backend,
    )
    start = time.perf_counter()
    try:
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(cfg.tasks),
            num_fewshot=cfg.num_fewshot,
            limit=cfg.limit,
            task_manager=manager,
            random_seed=cfg.seed,
            numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
            log_samples=False,
        )
    except (ConnectionError, OSError) as e:
        raise UserError(f"lm-eval could not load a task's data (offline?): {e}") from e
    seconds = time.perf_counter() - start
    if raw is None:  # not rank 0
        return 0
    result = EvalResult(
        model={**model_info(path), "backend": lm.backend_name, "max_length": lm.max_length},
        results=flatten_results(raw),
        config={
            **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"},
            "tasks": list(cfg.tasks),
            "world_size": lm.world_size,
            "task_versions": raw.get("versions", {}),
            "n_shot": raw.get("n-shot", {}),
        },
        environment=environment(ENVIRONMENT_FIELDS, device=str(lm.device)),
        seconds=round(seconds, 3),
    )
    target = result.write(out)
    _print_table(result.results)
    print(f"wrote {target}")
    return 0


def _print_table(rows: list[EvalRow]) -> None:
    for r in rows:
        se = f" ± {r.stderr:.4f}" if r.stderr is not None else ""
        print(f"{r.task:<20} {r.metric:<16} {r.filter:<8} {r.value:.4f}{se}")
