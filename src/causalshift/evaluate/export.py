"""`causalshift export RUN_DIR --out HF_DIR`: a trained run as a Hugging Face model folder.

- residual mode `none`: a plain `GPT2LMHeadModel` (keys copied; the Conv1D weights c_attn,
  c_proj, c_fc transposed), loadable by any transformers install.
- other modes: `CausalShiftGPTForCausalLM` (model_type `causalshift_gpt`), loadable with
  `AutoModelForCausalLM.from_pretrained(HF_DIR)` after `import causalshift` (no remote code).

Both get the GPT-2 tokenizer files, and the export is checked before it is written: its
logits on a probe batch must equal the run's. The folder is built beside HF_DIR (in
`.NAME.causalshift-tmp-PID-N/`, with `checksums.json` for the weights) and renamed into
place; HF_DIR is locked and its parent created and checked before the run is loaded
(`locks.output_folder`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from causalshift.errors import UserError
from causalshift.gpt.io import is_export_dir, is_run_dir, load_model, state_to_hf_gpt2
from causalshift.gpt.model import GPT
from causalshift.io import disk_error, plain_modes, record_checksums, temp_path
from causalshift.locks import output_folder

PROBE_ATOL = 1e-4  # float32 on CPU: observed differences are ~1e-6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="causalshift run directory")
    parser.add_argument("--out", required=True, metavar="HF_DIR", help="output folder")
    parser.add_argument(
        "--no-tokenizer",
        dest="tokenizer",
        action="store_false",
        help="do not copy the GPT-2 tokenizer files into the folder",
    )


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory")
    if not (is_run_dir(run_dir) or is_export_dir(run_dir)):
        raise UserError(f"{run_dir} is not a causalshift run directory (no config.json 'model')")
    with output_folder(args.out, whole=True):  # locked, creatable, writable: before loading
        check_target(Path(args.out))
        model = load_model(run_dir)
        out = export_model(model, args.out, tokenizer=args.tokenizer)
    kind = (
        "GPT2LMHeadModel" if model.config.residual.mode == "none" else "CausalShiftGPTForCausalLM"
    )
    print(f"exported {run_dir} ({model.config.residual.mode}) as {kind} to {out}")
    return 0


def to_hf(model: GPT):
    """The transformers model with `model`'s weights (GPT2LMHeadModel for mode `none`)."""
    cfg = model.config
    if cfg.residual.mode == "none":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf_cfg = GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.block_size,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            activation_function="gelu_new",
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            layer_norm_epsilon=1e-5,
            tie_word_embeddings=True,
            bos_token_id=50256,
            eos_token_id=50256,
        )
        hf = GPT2LMHeadModel(hf_cfg)
        state = state_to_hf_gpt2(model.state_dict())
    else:
        from causalshift.evaluate.hf_config import CausalShiftGPTConfig
        from causalshift.evaluate.hf_model import CausalShiftGPTForCausalLM

        hf = CausalShiftGPTForCausalLM(CausalShiftGPTConfig.from_gpt_config(cfg))
        state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state = {k: v.detach().to("cpu", torch.float32) for k, v in state.items()}
    own = hf.state_dict()
    for k in own:  # bias=False runs: GPT-2 has biases, zeros are the same function
        if k not in state and k.endswith(".bias") and not cfg.bias:
            state[k] = torch.zeros_like(own[k])
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"export key mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def check_same_logits(model: GPT, hf, atol: float = PROBE_ATOL) -> float:
    """Max |logit difference| on a fixed probe batch; raise if above `atol`."""
    gen = torch.Generator().manual_seed(0)
    T = min(32, model.config.block_size)
    idx = torch.randint(0, model.config.vocab_size, (2, T), generator=gen)
    model = model.eval()
    with torch.no_grad():
        want, _ = model(idx)
        got = hf(input_ids=idx).logits
    diff = (want.float() - got.float()).abs().max().item()
    if not diff <= atol:
        raise RuntimeError(f"exported model's logits differ from the run's by {diff:g}")
    return diff


def copy_tokenizer(out: Path) -> None:
    """The GPT-2 tokenizer files (vocab.json, merges.txt, tokenizer_config.json, ...)."""
    from causalshift.corpus import gpt2_tokenizer_dir

    src = gpt2_tokenizer_dir()
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            shutil.copyfile(f, out / f.name)


def check_target(out: Path) -> None:
    """UserError unless `out` is missing, empty or an earlier export (which is replaced)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not is_export_dir(out):
        raise UserError(f"--out {out} is a non-empty folder that is not a causalshift export")


def export_model(model: GPT, out: str | Path, tokenizer: bool = True) -> Path:
    """Write `model` as a Hugging Face folder at `out` (replaced atomically); returns `out`."""
    out = Path(out)
    check_target(out)
    model = model.to("cpu").float().eval()
    hf = to_hf(model)
    check_same_logits(model, hf)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    try:
        tmp.mkdir()
        hf.save_pretrained(tmp)
        if tokenizer:
            copy_tokenizer(tmp)
        record_checksums(tmp, [f.name for f in tmp.glob("*.safetensors")])
        plain_modes(tmp)  # safetensors writes 0600 files
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException as e:
        reason = disk_error(e, out.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if reason:
            raise UserError(f"cannot write {out}: {reason}") from None
        raise
    return out
