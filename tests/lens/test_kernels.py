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
    q, err = kernels.quantize_fn()(torch.randn(1, 8, generator=g), torch.tensor([0.01]))
    assert q.dtype == torch.int8 and err.shape == (1,)
