"""Process and hardware facts: CPU features, the dtype policy, devices, the environment."""

import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pytest
import torch
import transformers

from causalshift import __version__, runtime
from causalshift.errors import UserError


def test_lens_dtypes_leave_auto_to_the_lens_probe():
    """`--dtype` -> (weights dtype, screen): auto on CPU is None (measured by
    causalshift.lens.probe, whatever the flags), bf16 on CUDA; other values are forced."""
    assert runtime.lens_dtypes("auto", "cpu") == (torch.float32, None)
    assert runtime.lens_dtypes("auto", "cuda") == (torch.bfloat16, "bfloat16")
    assert runtime.lens_dtypes("bfloat16", "cuda:1") == (torch.bfloat16, "bfloat16")
    assert runtime.lens_dtypes("bfloat16", "cpu") == (torch.float32, "bfloat16")
    for name in ("float32", "int8", "int8-intmm", "int8-onednn", "int8-fbgemm"):
        assert runtime.lens_dtypes(name, "cpu") == (torch.float32, name)
    for name in ("int8", "int8-onednn"):
        with pytest.raises(UserError, match="CPU screen"):
            runtime.lens_dtypes(name, "cuda:0")
    with pytest.raises(UserError, match="unknown --dtype"):
        runtime.lens_dtypes("int4", "cpu")


@pytest.mark.parametrize(
    ("flags", "has_int8", "has_bf16"),
    [
        ("fpu avx512f avx512_vnni avx512_bf16", True, True),
        ("fpu avx512f avx512_bf16", False, True),
        ("fpu avx2", False, False),
    ],
)
def test_cpu_facts_from_flags(flags, has_int8, has_bf16, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags.split()))
    monkeypatch.setattr(runtime, "_int_mm_works", lambda: True)
    assert runtime.cpu_has_int8() == has_int8 and runtime.cpu_has_bf16() == has_bf16
    assert runtime.cpu_float_screen() == (torch.bfloat16 if has_bf16 else torch.float32)


def test_cpu_flags_parse_the_flags_line(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD X 16\nflags\t\t: fpu avx2 amx_bf16\n\n")
    monkeypatch.setattr(runtime, "CPUINFO", info)
    assert runtime.cpu_flags() == frozenset({"fpu", "avx2", "amx_bf16"})
    assert runtime.cpu_model() == "AMD X 16"
    assert runtime.cpu_has_bf16()
    assert runtime.autocast_dtype("auto", torch.device("cpu")) == torch.bfloat16


def test_no_cpuinfo_means_no_flags_and_float32(tmp_path, monkeypatch):
    """macOS, Windows, ARM: no /proc/cpuinfo (or no flags line) -> plain float32 everywhere."""
    monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "missing")
    assert runtime.cpu_flags() == frozenset()
    assert not runtime.cpu_has_bf16() and not runtime.cpu_has_int8()
    assert runtime.cpu_float_screen() == torch.float32
    assert runtime.cpu_model() == (platform.processor() or platform.machine() or "unknown")
    assert runtime.cpu_capability()  # torch's own answer, no file needed
    assert runtime.autocast_dtype("auto", torch.device("cpu")) is None
    assert runtime.autocast_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert runtime.autocast_dtype("float32", torch.device("cpu")) is None
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    monkeypatch.setattr(runtime, "CPUINFO", arm)
    assert runtime.cpu_flags() == frozenset()


def test_resolve_device_and_setup_without_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    info = runtime.setup("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    assert not runtime.is_distributed()
    assert runtime.gather_objects("x") == ["x"] and runtime.broadcast_object(3) == 3
    with pytest.raises(UserError, match="unsupported device"):
        runtime.resolve_device("mps")
    with pytest.raises(UserError, match="unknown device"):
        runtime.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            runtime.resolve_device("cuda")
        assert runtime.resolve_device("auto") == torch.device("cpu")


def _legacy_lens(device: str) -> dict:
    """lens/command.py's environment() before runtime.environment (key order and values)."""
    cpu = platform.processor() or platform.machine()
    return {
        "causalshift": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": f"cpu ({cpu}, {torch.get_num_threads()} threads)",
    }


def _legacy_train(device: torch.device, world: int, amp: torch.dtype | None) -> dict:
    """train/loop.py's environment()."""
    return {
        "causalshift": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
        "world_size": world,
        "autocast_dtype": str(amp).replace("torch.", "") if amp else "float32",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _legacy_eval(device: str) -> dict:
    """evaluate/command.py's environment()."""
    env = {
        "causalshift": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    for pkg in ("torch", "transformers", "lm_eval", "datasets"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    return env


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    assert a == b


def test_environment_matches_each_commands_former_dict():
    """The calls analyze, train and eval make give the same keys, order and values as the
    three environment() functions they replace."""
    from causalshift.evaluate.command import ENVIRONMENT_FIELDS as EVAL_FIELDS
    from causalshift.lens.command import environment as analyze_environment
    from causalshift.train.loop import environment as train_environment

    _same(analyze_environment("cpu"), _legacy_lens("cpu"))
    cpu = torch.device("cpu")
    info = runtime.DistInfo(rank=0, local_rank=0, world_size=1, device=cpu)
    for amp in (None, torch.bfloat16):
        _same(train_environment(info, amp), _legacy_train(cpu, 1, amp))
    # evaluate/command.py's call
    _same(runtime.environment(EVAL_FIELDS, device="cpu"), _legacy_eval("cpu"))


def test_environment_rejects_unknown_and_unlisted_fields():
    with pytest.raises(ValueError, match="no value"):
        runtime.environment(("causalshift", "gpu_memory"))
    with pytest.raises(ValueError, match="not listed"):
        runtime.environment(("causalshift",), device="cpu")
    assert runtime.environment(("device", "python"), device="x") == {
        "device": "x",
        "python": platform.python_version(),
    }


def test_importing_runtime_does_not_import_torch():
    code = "import sys, causalshift.runtime; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
