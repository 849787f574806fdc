"""Process and hardware facts: the dtype policy."""

import pytest
import torch

from causalshift.errors import UserError


@pytest.mark.parametrize(
    ("flags", "screen"),
    [
        ("fpu avx512f avx512_vnni avx512_bf16", torch.int8),
        ("fpu avx512f avx512_bf16", torch.bfloat16),
        ("fpu avx2", torch.float32),
    ],
)
def test_auto_dtype_picks_the_fastest_cpu_screen(flags, screen, monkeypatch):
    from causalshift.lens import models

    monkeypatch.setattr(models, "_cpu_flags", lambda: f"flags\t: {flags}\n")
    assert models.parse_dtype("auto", "cpu") == (torch.float32, screen)
    assert models.parse_dtype("auto", "cuda") == (torch.bfloat16, torch.bfloat16)
    assert models.parse_dtype("int8", "cpu") == (torch.float32, torch.int8)
    with pytest.raises(UserError, match="CPU screen"):
        models.parse_dtype("int8", "cuda:0")
