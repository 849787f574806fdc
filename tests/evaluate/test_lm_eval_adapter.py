"""The lm-eval adapter's option parsing and device setup (no model needed)."""

import pytest
import torch

pytest.importorskip("lm_eval")

from causalshift.errors import UserError  # noqa: E402
from causalshift.evaluate import lm_eval_adapter as A  # noqa: E402


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (None, A.DEFAULT_BATCH_SIZE),
        ("", A.DEFAULT_BATCH_SIZE),
        ("auto", A.DEFAULT_BATCH_SIZE),
        ("auto:4", A.DEFAULT_BATCH_SIZE),  # lm-eval's "search 4 times": formerly a ValueError
        ("8", 8),
        (8, 8),
    ],
)
def test_batch_size(value, size):
    assert A.parse_batch_size(value) == size


@pytest.mark.parametrize("value", ["eight", "4:2", "0", -3])
def test_bad_batch_size_is_a_user_error(value):
    with pytest.raises(UserError, match="batch_size"):
        A.parse_batch_size(value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback needs a machine without CUDA")
def test_cuda_without_cuda_falls_back_to_the_cpu(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        info = A._dist_setup("cuda:0")
    assert info.device == torch.device("cpu") and (info.rank, info.world_size) == (0, 1)
    assert A._dist_setup(None).device == torch.device("cpu")
