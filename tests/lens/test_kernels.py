"""The compiled counting kernels equal their eager definitions."""

import pytest
import torch


@pytest.mark.parametrize("compiled", [False, True])
def test_band_entries_by_blocks_equal_the_dense_mask(compiled):
    """The two-step band search (counts per block, then the blocks that have any) finds the
    same entries as the dense mask, the target's own column left out."""
    from causalshift.lens import kernels

    g = torch.Generator().manual_seed(8)
    z = torch.randn(30, 4 * kernels.BAND_BLOCK, generator=g).to(torch.bfloat16)
    sel = torch.tensor([0, 3, 4, 17, 29])
    lo = torch.randn(5, generator=g)
    hi = lo + 0.05
    own = (z[sel].float() > lo[:, None]).float().argmax(1)  # sometimes inside the band
    blocks = kernels.kernels_for(torch.device("cpu"), z.dtype)[1] if compiled else None
    got = kernels.band_entries(z, sel, lo, hi, own, blocks or kernels.band_blocks)
    want = kernels.band_mask(z, sel, lo, hi, own).nonzero(as_tuple=True)
    assert len(want[0]) > 10
    assert torch.equal(torch.stack(got), torch.stack(want))


def test_compiled_kernels_take_single_rows_eagerly():
    """Sizes 0 and 1 would make dynamo compile again per size and dtype (seconds each, then
    eager for good past its recompile limit): they run eagerly, with the same results."""
    from causalshift.lens import kernels

    count, blocks = kernels.kernels_for(torch.device("cpu"), torch.int32)
    g = torch.Generator().manual_seed(9)
    z = torch.randint(-50, 50, (1, 2 * kernels.BAND_BLOCK), generator=g, dtype=torch.int32)
    thr = torch.tensor([[10.0, -3.0]])
    torch.testing.assert_close(count(z, thr), kernels.count_above(z, thr))
    sel, own = torch.tensor([0]), torch.tensor([3])
    lo, hi = torch.tensor([-5.0]), torch.tensor([5.0])
    assert torch.equal(blocks(z, sel, lo, hi, own), kernels.band_blocks(z, sel, lo, hi, own))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
def test_compiled_count_for_each_number_of_targets(dtype):
    """The compiled count unrolls one reduction per threshold (3x faster than one broadcast
    comparison, docs/benchmarks.md): J = 2 and 4 thresholds (1 and 2 targets) give the eager
    counts, ties with z included; compiled=False gives the eager kernels themselves."""
    from causalshift.lens import kernels

    count, _ = kernels.kernels_for(torch.device("cpu"), dtype)
    g = torch.Generator().manual_seed(10)
    z = torch.randint(-40, 40, (7, 2 * kernels.BAND_BLOCK), generator=g).to(dtype)
    for j in (2, 4, 2):
        thr = torch.randint(-40, 40, (7, j), generator=g).float()
        assert torch.equal(count(z, thr), kernels.count_above(z, thr))
    eager = kernels.kernels_for(torch.device("cpu"), dtype, compiled=False)
    assert eager == (kernels.count_above, kernels.band_blocks)


def test_quantize_by_hand():
    """round(x / step) clamped to +-levels, and the error norm of each row."""
    from causalshift.lens.kernels import quantize

    x = torch.tensor([[1.0, -2.6, 0.4, 9.0], [0.0, 0.5, -0.5, 1.5]])
    q, err = quantize(x, torch.tensor([1.0, 0.5]), levels=3)
    assert torch.equal(q, torch.tensor([[1, -3, 0, 3], [0, 1, -1, 3]], dtype=torch.int8))
    want = torch.tensor([(0.4**2 + 0.4**2 + 6.0**2) ** 0.5, 0.0])
    torch.testing.assert_close(err, want)
    q, err = quantize(x, torch.tensor(1.0))  # one step for all, 127 levels
    assert torch.equal(q[0], torch.tensor([1, -3, 0, 9], dtype=torch.int8))
