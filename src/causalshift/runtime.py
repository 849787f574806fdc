"""Process and hardware facts shared by every command: torchrun ranks and the device, the
environment recorded with each result, the CPU's features and the dtype policy.

One code path serves 1 CPU, 1 GPU and N GPUs: torchrun's RANK / WORLD_SIZE / LOCAL_RANK
decide. With WORLD_SIZE > 1 `setup` joins a process group (NCCL on CUDA, gloo on CPU);
without torchrun everything runs as rank 0 of 1.

torch is imported inside the functions: config validation and the report read this module's
pure parts (`environment`'s table, `cpu_flags`) without paying for it.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causalshift.errors import UserError

if TYPE_CHECKING:
    import torch

CPUINFO = Path("/proc/cpuinfo")

# ---------------------------------------------------------------------------------------------
# Ranks and devices


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun) and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """`auto` -> cuda if available else cpu; under torchrun a CUDA device is cuda:LOCAL_RANK."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available")
        if distributed or device.index is None:
            device = torch.device("cuda", local_rank if distributed else 0)
        if device.index >= torch.cuda.device_count():
            raise UserError(f"device {device} does not exist ({torch.cuda.device_count()} GPUs)")
    elif device.type != "cpu":
        raise UserError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device


def setup(device_name: str) -> DistInfo:
    """Resolve the device; join the process group if launched by torchrun with more than one
    process."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, distributed=world > 1)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def teardown() -> None:
    """Leave the process group, if any."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size() > 1


def collective_device() -> torch.device:
    """Where tensors must be for a collective: the current GPU under NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """In-place maximum over ranks (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (on every rank)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        if dist.get_backend() == "nccl":  # name the device: no guessing, no warning
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


# ---------------------------------------------------------------------------------------------
# The environment recorded with every result


def _version(module: str) -> Callable[[], str]:
    """A package that every command has imported already: its `__version__`."""

    def fact() -> str:
        import importlib

        return importlib.import_module(module).__version__

    return fact


def _installed(distribution: str) -> Callable[[], str | None]:
    """An optional package, read from its metadata without importing it (None if absent)."""

    def fact() -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(distribution)
        except PackageNotFoundError:
            return None

    return fact


def _causalshift_version() -> str:
    from causalshift import __version__

    return __version__


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# Facts any process knows. Those only a caller knows (the device it resolved, the world size,
# the autocast dtype) are given to `environment` as keywords.
FACTS: dict[str, Callable[[], Any]] = {
    "causalshift": _causalshift_version,
    "python": platform.python_version,
    "platform": platform.platform,
    "torch": _version("torch"),
    "transformers": _version("transformers"),
    "numpy": _version("numpy"),
    "lm_eval": _installed("lm_eval"),
    "datasets": _installed("datasets"),
    "cpu_count": os.cpu_count,
    "torch_threads": _torch_threads,
}


def environment(fields: Sequence[str], **given: Any) -> dict[str, Any]:
    """Versions and hardware recorded with a result: `fields` in the caller's order (each
    command keeps its own schema), each from `given` or else from `FACTS`."""
    unknown = [f for f in fields if f not in given and f not in FACTS]
    if unknown:
        raise ValueError(f"no value for environment field(s) {', '.join(unknown)}")
    extra = set(given) - set(fields)
    if extra:
        raise ValueError(f"environment values given for fields not listed: {sorted(extra)}")
    return {f: given[f] if f in given else FACTS[f]() for f in fields}


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's architecture (`platform.processor()` or the machine)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def hardware_name(device: torch.device | str) -> str:
    """The GPU's name, or e.g. "cpu (x86_64, 2 threads)" with torch's thread count."""
    import torch

    if torch.device(device).type == "cuda":
        return device_name(device)
    return f"cpu ({device_name(device)}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------
# CPU features and the dtype policy


def _cpuinfo() -> str:
    """/proc/cpuinfo's text, or "" where there is none (macOS, Windows)."""
    try:
        return CPUINFO.read_text()
    except OSError:
        return ""


def cpu_flags() -> frozenset[str]:
    """The ISA flags of /proc/cpuinfo's first `flags` line (x86 Linux); empty where there is
    no such file or line (macOS, Windows, ARM)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's first `model name`), else what `platform`
    knows (the processor or the machine's architecture)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name") and ":" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_capability() -> str:
    """The vector ISA torch's CPU kernels dispatch to (e.g. AVX2, AVX512; ATEN_CPU_CAPABILITY
    lowers it), or "unknown" where this torch does not say."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def cpu_has_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AMX or AVX-512 bf16)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def cpu_has_int8() -> bool:
    """True when this CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX)
    and this torch build multiplies int8 matrices on the CPU (`torch._int_mm`)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags()) and int_mm_works()


def int_mm_works() -> bool:
    """True when this torch build runs `torch._int_mm` on the CPU (fast or not)."""
    return _int_mm_works()


@functools.cache
def _int_mm_works() -> bool:
    import torch

    try:
        a = torch.ones(2, 8, dtype=torch.int8)
        return bool((torch._int_mm(a, a.T) == 8).all())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def cpu_float_screen() -> torch.dtype:
    """The CPU's floating-point lens screen by its flags: bf16 with bf16 matmul support, else
    float32 (the float screen next to an int8 screen forced by `--dtype`; `--dtype auto`
    measures instead, see `causalshift.lens.probe`)."""
    import torch

    return torch.bfloat16 if cpu_has_bf16() else torch.float32


# `analyze --dtype` values: auto, the float screens, int8 (the CPU's int8 kernel), and each
# int8 kernel by name (docs/method.md, "The fast path").
LENS_DTYPES = ("auto", "float32", "bfloat16", "int8", "int8-intmm", "int8-onednn", "int8-fbgemm")


def lens_dtypes(name: str, device: torch.device | str) -> tuple[torch.dtype, str | None]:
    """`analyze --dtype` -> (weights dtype, the lens screen asked for).

    Weights: bf16 on CUDA with auto or bfloat16, else float32 (on CPU the model's own forward
    is cheap). Screen: on CUDA auto is bfloat16; on CPU auto is None: the lens measures which
    screen is fastest here (`causalshift.lens.probe`, cached per machine); any other value
    is forced as given. The screen changes speed, not the ranks (`causalshift.lens.screen`).
    """
    import torch

    gpu = str(device).startswith("cuda")
    if name not in LENS_DTYPES:
        raise UserError(f"unknown --dtype {name!r} ({', '.join(LENS_DTYPES)})")
    if name.startswith("int8") and gpu:
        raise UserError(f"--dtype {name} is a CPU screen; use bfloat16 or auto on GPUs")
    if gpu and name in ("auto", "bfloat16"):
        return torch.bfloat16, "bfloat16"
    return torch.float32, (None if name == "auto" else name)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """`train`/`eval --dtype` -> the autocast dtype (None: plain float32). auto: bf16 where the
    device multiplies bf16 natively (CUDA with bf16, CPUs with AVX-512 bf16 or AMX)."""
    import torch

    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = cpu_has_bf16()
    return torch.bfloat16 if supported else None
