"""The tuned lens (Belrose et al. 2023): one affine translator per layer before the final norm.

Row l of the lens (0 = the embedding output, l = the stream after block l, L = the last
stream) is decoded as U . N(h + A_l h + b_l) instead of U . N(h). A_l and b_l start at zero,
so an untrained lens is the logit lens. Row L needs no translator: it is what the model
itself decodes.

Files, as the `tuned-lens` package (0.2.0, `tuned_lens.nn.lenses.TunedLens`) writes them, so
that a lens trained by either loads in the other:

- `config.json`: {"base_model_name_or_path", "d_model", "num_hidden_layers", "bias",
  "base_model_revision", "unembed_hash", "lens_type": "linear_tuned_lens"};
- `params.pt`: `torch.save` of the state dict of a ModuleList of L `nn.Linear(d, d)`, keys
  "0.weight", "0.bias", ..., "{L-1}.bias". Linear l computes h @ W_l^T + c_l, so A_l = W_l
  and b_l = c_l, and it applies to the package's `hidden_states[l]` for l < L, which is our
  row l (HF's hidden_states[0] is the embedding output; the package drops the last entry,
  the normed output, as we have no translator for row L).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from causalshift.errors import UserError
from causalshift.io import atomic_write, read_json_object, verify_checksum, write_json

if TYPE_CHECKING:
    from causalshift.lens.models import LensModel

CONFIG_NAME = "config.json"
PARAMS_NAME = "params.pt"
LENS_TYPE = "linear_tuned_lens"

# A translator for lens row `layer` applied to states (..., d): the engine's hook.
Translate = Callable[[int, Tensor], Tensor]


def apply_translator(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """h + A h + b for states h (..., d), A = weight (d, d) (an nn.Linear's), computed in
    the translator's dtype and returned in h's (zero A and b give h back exactly)."""
    x = h.to(weight.dtype)
    out = x + x @ weight.T
    if bias is not None:
        out = out + bias
    return out.to(h.dtype)


def unembed_hash(unembed: Tensor) -> str:
    """The tuned-lens package's fingerprint of an unembedding (`tuned_lens.utils.tensor_hash`:
    sha256 of numpy's one-decimal summary of the matrix); a mismatch only warns."""
    import numpy as np

    array = unembed.detach().float().cpu().numpy()
    return hashlib.sha256(str.encode(np.array_str(array, precision=1))).hexdigest()


class TunedLens(nn.Module):
    """L affine translators (one per lens row 0..L-1), zero at init (the logit lens)."""

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        *,
        bias: bool = True,
        base_model: str = "",
        unembed_hash: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        self.num_layers, self.d_model, self.bias = int(num_layers), int(d_model), bool(bias)
        self.base_model, self.unembed_hash, self.revision = base_model, unembed_hash, revision
        self.source: str = ""  # the folder it was loaded from, for messages
        translators = []
        for _ in range(self.num_layers):
            linear = nn.Linear(self.d_model, self.d_model, bias=self.bias)
            nn.init.zeros_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
            translators.append(linear)
        # the package's attribute name: its state dict is params.pt
        self.layer_translators = nn.ModuleList(translators)

    @classmethod
    def for_model(cls, lm: LensModel, bias: bool = True) -> TunedLens:
        """A zero (logit-lens) tuned lens of lm's depth and width."""
        return cls(
            lm.num_layers,
            int(lm.unembed.shape[1]),
            bias=bias,
            base_model=lm.source or lm.name,
            unembed_hash=unembed_hash(lm.unembed),
        )

    def translate(self, layer: int, h: Tensor) -> Tensor:
        """Lens row `layer` (0..L) of states h (..., d): translated, or h itself for row L."""
        if layer == self.num_layers:
            return h
        linear = self.layer_translators[layer]
        return apply_translator(h, linear.weight, linear.bias)

    def frozen(self) -> Translate:
        """`translate` without autograd, the translators copied once per device: what
        `run_lens(..., translate=...)` takes."""
        params = [(t.weight.detach(), None if t.bias is None else t.bias.detach())
                  for t in self.layer_translators]  # fmt: skip
        copies: dict[torch.device, list[tuple[Tensor, Tensor | None]]] = {}

        def translate(layer: int, h: Tensor) -> Tensor:
            if layer == self.num_layers:
                return h
            if h.device not in copies:
                copies[h.device] = [
                    (w.to(h.device), None if b is None else b.to(h.device)) for w, b in params
                ]
            w, b = copies[h.device][layer]
            return apply_translator(h, w, b)

        return translate

    def config(self) -> dict[str, Any]:
        """config.json, with the package's keys in its order."""
        return {
            "base_model_name_or_path": self.base_model,
            "d_model": self.d_model,
            "num_hidden_layers": self.num_layers,
            "bias": self.bias,
            "base_model_revision": self.revision,
            "unembed_hash": self.unembed_hash,
            "lens_type": LENS_TYPE,
        }

    def save(self, folder: str | Path) -> Path:
        """config.json and params.pt in `folder`, each written atomically (params.pt with
        its sha256 in checksums.json); returns the folder."""
        folder = Path(folder)
        state = {
            k: v.detach().cpu().clone() for k, v in self.layer_translators.state_dict().items()
        }
        atomic_write(folder / PARAMS_NAME, lambda tmp: torch.save(state, tmp), checksum=True)
        write_json(folder / CONFIG_NAME, self.config())
        return folder

    @classmethod
    def load(cls, folder: str | Path, lm: LensModel | None = None) -> TunedLens:
        """The lens saved in `folder` (by causalshift or the tuned-lens package), float32 on
        the CPU; with `lm`, checked against it (`check`)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"tuned lens {folder} not found (a folder with {CONFIG_NAME})")
        cfg = read_json_object(folder / CONFIG_NAME, "tuned lens config")
        layers, width = cfg.get("num_hidden_layers"), cfg.get("d_model")
        if not all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in (layers, width)
        ):
            raise UserError(
                f"tuned lens {folder / CONFIG_NAME}: needs positive integers num_hidden_layers "
                "and d_model"
            )
        if cfg.get("lens_type", LENS_TYPE) != LENS_TYPE:
            raise UserError(
                f"tuned lens {folder}: lens_type {cfg['lens_type']!r} is not {LENS_TYPE!r}"
            )
        lens = cls(
            layers,
            width,
            bias=bool(cfg.get("bias", True)),
            base_model=str(cfg.get("base_model_name_or_path") or ""),
            unembed_hash=cfg.get("unembed_hash"),
            revision=cfg.get("base_model_revision"),
        )
        lens.source = str(folder)
        lens._load_params(folder / PARAMS_NAME)
        if lm is not None:
            lens.check(lm)
        return lens

    def _load_params(self, path: Path) -> None:
        """params.pt into the translators; a missing, damaged or mis-shaped file is one line."""
        if not path.is_file():
            raise UserError(f"tuned lens {path} not found")
        verify_checksum(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for a damaged file
            raise UserError(f"tuned lens {path} cannot be read: {str(e).splitlines()[0]}") from None
        expected = self.layer_translators.state_dict()
        if not isinstance(state, dict) or set(state) != set(expected):
            got = sorted(state)[:4] if isinstance(state, dict) else type(state).__name__
            raise UserError(
                f"tuned lens {path}: expected the keys 0.weight .. {self.num_layers - 1}."
                f"{'bias' if self.bias else 'weight'} of {self.num_layers} translators, got {got}"
            )
        for key, value in state.items():
            if not isinstance(value, Tensor) or value.shape != expected[key].shape:
                shape = getattr(value, "shape", None)
                raise UserError(f"tuned lens {path}: {key} has shape {shape}, expected "
                                f"{tuple(expected[key].shape)}")  # fmt: skip
        self.layer_translators.load_state_dict({k: v.float() for k, v in state.items()})

    def check(self, lm: LensModel) -> None:
        """The lens must have lm's depth and width (UserError); a different unembedding
        (the package's hash) only warns: the file may come from another numpy."""
        width = int(lm.unembed.shape[1])
        if (self.num_layers, self.d_model) != (lm.num_layers, width):
            raise UserError(
                f"tuned lens {self.source or '(in memory)'} is for {self.num_layers} layers of "
                f"width {self.d_model}, but {lm.name} has {lm.num_layers} layers of width {width}"
            )
        if self.unembed_hash and self.unembed_hash != unembed_hash(lm.unembed):
            warnings.warn(
                f"tuned lens {self.source}: its unembedding hash differs from {lm.name}'s "
                "(trained for another model of the same shape?)",
                stacklevel=2,
            )


def lens_dir(spec: str) -> Path | None:
    """The folder of a `--lens` item ("tuned:DIR"), None for "logit"."""
    return None if spec == "logit" else Path(spec.split(":", 1)[1])


def check_lens_specs(
    specs: str | tuple[str, ...], sublayers: bool = False, save_positions: bool = False
) -> tuple[str, ...]:
    """`analyze --lens` items (a tuple, or one string "logit,tuned:DIR"), checked: each
    logit or tuned:DIR (a folder with config.json), each once; a tuned lens has no
    translators for --sublayers' l.attn rows, and positions.parquet holds one lens."""
    if isinstance(specs, str):
        specs = tuple(x.strip() for x in specs.split(",") if x.strip())
    specs = tuple(specs) if isinstance(specs, (list, tuple)) else specs
    if not isinstance(specs, tuple) or not all(isinstance(x, str) for x in specs):
        raise UserError("--lens must be strings: logit and/or tuned:LENS_DIR")
    if not specs:
        raise UserError("--lens needs at least one of logit, tuned:LENS_DIR")
    for spec in specs:
        if spec != "logit" and not spec.startswith("tuned:"):
            raise UserError(f"--lens: unknown lens {spec!r} (logit or tuned:LENS_DIR)")
        folder = lens_dir(spec)
        if folder is not None and not str(folder).strip():
            raise UserError("--lens tuned: needs a folder, tuned:LENS_DIR")
        if folder is not None and not (folder / CONFIG_NAME).is_file():
            what = "not found" if not folder.exists() else f"has no {CONFIG_NAME}"
            raise UserError(f"--lens {spec}: {folder} {what} (a folder written by fit-lens)")
    if len(set(specs)) != len(specs):
        raise UserError("--lens: each lens may be given once")
    tuned = any(s != "logit" for s in specs)
    if tuned and sublayers:
        raise UserError("--sublayers works with --lens logit only (a tuned lens has no "
                        "translators for the l.attn rows)")  # fmt: skip
    if save_positions and len(specs) > 1:
        raise UserError("--save-positions takes one --lens at a time")
    return tuple(specs)


def lens_translator(spec: str, lm: LensModel) -> Translate | None:
    """The engine's translator for a `--lens` item on lm: None for the logit lens, else the
    tuned lens in its folder, checked against lm."""
    folder = lens_dir(spec)
    return None if folder is None else TunedLens.load(folder, lm).frozen()
