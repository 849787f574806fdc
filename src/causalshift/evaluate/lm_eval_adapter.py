"""lm-evaluation-harness adapter: our GPT (run dir or HF export) as lm-eval model `causalshift`.

    import causalshift.evaluate.lm_eval_adapter  # registers "causalshift"
    lm_eval.simple_evaluate(model="causalshift", model_args="path=RUN_DIR", tasks=[...])

lm-eval 0.4.13 does not read the `lm_eval.models` entry point that pyproject declares (its
registry is filled only from its own `MODEL_MAPPING` and from `@register_model` at import
time; see lm-evaluation-harness issue #3282). Hence the CLI route is our wrapper, which
imports this module and then runs lm-eval's own CLI unchanged:

    python -m causalshift.evaluate.lm_eval_cli --model causalshift --model_args path=RUN_DIR ...

Scoring follows lm-eval's `hf` model exactly (`TemplateLM` moves the context's trailing
spaces into the continuation, encodes context+continuation as one string, and uses EOT as
the empty context); inputs longer than the context window keep their last `max_length`
tokens; `loglikelihood_rolling` scores disjoint windows of `max_length` tokens, each after
its one-token prefix (EOT for the first). Data parallel under `torchrun` or
`accelerate launch` (one process per device; lm-eval splits the documents by `rank`).
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (fill the built-in registry before we add to it)
import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from causalshift import runtime
from causalshift.errors import UserError

DEFAULT_BATCH_SIZE = 16


def _load_tokenizer(path: Path | None):
    """The folder's own tokenizer when it ships one, else the offline GPT-2 BPE."""
    from transformers import AutoTokenizer

    if path is not None and any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    ):
        return AutoTokenizer.from_pretrained(path)
    from causalshift.corpus import gpt2_tokenizer_dir

    return AutoTokenizer.from_pretrained(gpt2_tokenizer_dir())


def _context_length(model: torch.nn.Module) -> int | None:
    """The model's context window (nanoGPT `block_size` or an HF config's name for it)."""
    config = getattr(model, "config", None)
    for name in ("block_size", "n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(config, dict):
            value = config.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_eval_model(path: str, backend: str = "auto") -> tuple[torch.nn.Module, str]:
    """Load `path` for evaluation; returns (model, backend) with backend "gpt" or "hf".

    "gpt": our GPT through `causalshift.gpt.io.load_model` (run directories and
    `causalshift export` folders). "hf": any other local HF causal LM folder through
    `AutoModelForCausalLM` (its forward returns an object with `.logits`); also the
    fallback for a GPT-2 folder our GPT cannot hold (another activation or eps).
    """
    from causalshift.gpt.io import is_export_dir, is_run_dir, load_model

    p = Path(path)
    if not p.is_dir():
        raise UserError(f"model not found: {path} (expected a run directory or an HF folder)")
    if backend not in ("auto", "gpt", "hf"):
        raise UserError(f"backend must be auto, gpt or hf, got {backend!r}")
    if is_run_dir(p) or backend == "gpt":
        return load_model(p), "gpt"
    if backend == "auto" and is_export_dir(p):
        try:
            return load_model(p), "gpt"
        except UserError:
            pass  # e.g. a GPT-2 variant our GPT does not implement: stock transformers
    if not (p / "config.json").is_file():
        raise UserError(f"{path} holds no config.json: not a run directory or an HF model folder")
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(p), "hf"
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load {path} as a causal LM: {e}") from e


def _dist_setup(device: str | None) -> runtime.DistInfo:
    """This process's rank, world size and device (`runtime.setup`: torchrun / accelerate
    launch env vars, NCCL on CUDA, gloo on CPU).

    Like lm-eval's `hf` model: a CUDA device without CUDA falls back to the CPU with a
    warning (lm-eval's CLI defaults to cuda:0), and under N processes each rank takes
    cuda:LOCAL_RANK whatever index was asked for.
    """
    name = device or "auto"
    if name.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(
            f"device {device} requested but CUDA is not available: using the CPU", stacklevel=2
        )
        name = "cpu"
    return runtime.setup(name)


def parse_batch_size(value: int | str | None) -> int:
    """lm-eval's batch_size: a positive integer, or auto / auto:N (lm-eval's search for the
    largest batch that fits, which this adapter does not do: DEFAULT_BATCH_SIZE)."""
    text = "" if value is None else str(value).strip()
    if text in ("", "auto") or text.startswith("auto:"):
        return DEFAULT_BATCH_SIZE
    try:
        size = int(text)
    except ValueError:
        raise UserError(f"batch_size must be an integer, auto or auto:N, got {value!r}") from None
    if size < 1:
        raise UserError(f"batch_size must be >= 1, got {value}")
    return size


@register_model("causalshift")
class CausalShiftLM(TemplateLM):
    """Our GPT (or a local HF causal LM folder) for lm-evaluation-harness.

    model_args: path (run dir or HF folder, required), device (auto|cpu|cuda|cuda:N),
    dtype (float32|bfloat16: bf16 autocast), batch_size (int, or "auto" / "auto:N" = 16),
    max_length (default: the model's context window), backend (auto|gpt|hf),
    max_gen_toks (generate_until, default 256), add_bos_token (default False).
    """

    def __init__(
        self,
        path: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        max_length: int | None = None,
        backend: str = "auto",
        max_gen_toks: int = 256,
        add_bos_token: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        path = path or pretrained
        if not path:
            raise UserError("model_args needs path=RUN_DIR_OR_HF_FOLDER")
        if dtype not in ("float32", "bfloat16", "bf16", "auto"):
            raise UserError(f"dtype must be float32 or bfloat16, got {dtype!r}")
        self.path = str(path)
        info = _dist_setup(device)
        self._rank, self._world_size, self._device = info.rank, info.world_size, info.device
        model, self.backend_name = load_eval_model(self.path, backend)
        self.model = model.to(self._device).eval()
        self.tokenizer = _load_tokenizer(Path(self.path))
        self.autocast_dtype = torch.bfloat16 if dtype in ("bfloat16", "bf16") else None
        if dtype == "auto" and self._device.type == "cuda" and torch.cuda.is_bf16_supported():
            self.autocast_dtype = torch.bfloat16
        self.dtype_name = "bfloat16" if self.autocast_dtype else "float32"
        self.batch_size = parse_batch_size(batch_size)
        context = _context_length(self.model)
        self._max_length = int(max_length or context or 1024)
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = bool(add_bos_token)
        self.vocab_size = len(self.tokenizer)

    # --- TemplateLM interface ---

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        add = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.tokenizer.encode(string, add_special_tokens=add)

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        return self.tokenizer.decode(tokens)

    def get_model_info(self) -> dict[str, Any]:
        return {
            "model_path": self.path,
            "model_backend": self.backend_name,
            "model_dtype": self.dtype_name,
            "max_length": self.max_length,
        }

    # --- forward ---

    @torch.inference_mode()
    def _model_call(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) in float32 for token ids (B, T)."""
        ctx = (
            torch.autocast(self._device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with ctx:
            out = self.model(idx)
        logits = out[0] if isinstance(out, tuple) else out.logits  # (B, T, V)
        return logits.float()

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[Any, list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """(sum of log p(continuation), is_greedy) per (key, context_ids, continuation_ids)."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(
            total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood"
        )
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            inps, conts = [], []
            for i in chunk:
                _, ctx, cont = requests[i]
                if not ctx or not cont or len(cont) > self.max_length:
                    raise ValueError("empty context/continuation or continuation too long")
                inps.append((ctx + cont)[-(self.max_length + 1) :][:-1])  # last token predicted
                conts.append(cont)
            width = max(len(x) for x in inps)
            idx = torch.zeros((len(inps), width), dtype=torch.long)  # right padding is causal-safe
            for row, x in enumerate(inps):
                idx[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            logits = self._model_call(idx.to(self._device))  # (B, W, V)
            for row, (i, inp, cont) in enumerate(zip(chunk, inps, conts, strict=True)):
                n = len(cont)
                logp = F.log_softmax(logits[row, len(inp) - n : len(inp)], dim=-1)  # (n, V)
                target = torch.tensor(cont, dtype=torch.long, device=logp.device)
                score = logp.gather(-1, target[:, None]).sum().item()
                greedy = bool((logp.argmax(-1) == target).all().item())
                results[i] = (score, greedy)
                key = requests[i][0]
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, (score, greedy))
            pbar.update(len(chunk))
        pbar.close()
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each string over disjoint windows of max_length tokens."""
        windows, owner = [], []
        for n, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, ctx, cont))
                owner.append(n)
        # Under data parallelism lm-eval pads request lists to equal length per rank already.
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for n, (score, _) in zip(owner, scores, strict=True):
            totals[n] += score
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    @torch.inference_mode()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding, one request at a time (no KV cache: simple, for small tasks)."""
        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="generate"):
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context)[-max(1, self.max_length - 1) :] or [self.eot_token_id]
            new: list[int] = []
            text = ""
            for _ in range(max_new):
                window = (ids + new)[-self.max_length :]
                idx = torch.tensor([window], dtype=torch.long, device=self._device)
                token = int(self._model_call(idx)[0, -1].argmax())
                if token == self.eot_token_id:
                    break
                new.append(token)
                text = self.tok_decode(new)
                if any(s in text for s in until):
                    break
            for s in until:
                text = text.split(s)[0]
            self.cache_hook.add_partial("generate_until", req.args, text)
            out.append(text)
        return out

    # --- data parallel (torchrun / accelerate launch) ---

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        flat = tensor.reshape(-1).to(self._device)
        parts = [torch.empty_like(flat) for _ in range(self.world_size)]
        dist.all_gather(parts, flat)
        return torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self.world_size == 1:
            return [obj]
        parts = runtime.gather_objects(obj)
        return parts if self.rank == dst else None

    def barrier(self) -> None:
        if self.world_size > 1:
            runtime.barrier()
