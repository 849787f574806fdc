"""The bf16 and int8 screens: their error band covers the real error; the rotation is exact."""

import pytest
import torch


@pytest.mark.parametrize("scale", [1.0, 1e3])
@pytest.mark.parametrize("kind", ["bf16", "int8"])
def test_screen_band_covers_the_screen_error(scale, kind):
    """Every screen logit lies inside its entry's band around the exact logit, and the band
    is narrow (bf16: a few roundings of |h| max |U_v|; int8: a few quantization steps)."""
    from causalshift.lens.screen import Int8Screen, Screen

    g = torch.Generator().manual_seed(6)
    u = torch.randn(2000, 96, generator=g) * torch.rand(2000, 1, generator=g) * scale
    u[:, 5] *= 20  # outlier channels, as in real residual streams and unembeddings
    h = torch.randn(50, 96, generator=g) * 10
    h[:, 3] *= 50
    screen = Screen(torch.bfloat16) if kind == "bf16" else Int8Screen(96)
    if kind == "int8":
        assert screen.block == 32  # the largest power of two dividing 96, capped at 32
    chunk = screen.prepare_chunk(u, u.norm(dim=1), 0, len(u))
    rows = screen.rows(h)
    exact = (h.double() @ u.double().T).float()
    z = screen.matmul(rows, chunk).float()
    # tau = every exact logit (one "target" per entry): the band of entry v around its own
    # exact logit must contain its screen logit.
    band = screen.thresholds(exact, rows, chunk)
    v = len(u)
    hi, lo = band[:, :v], band[:, v:]
    assert bool((z <= hi).all()) and bool((z >= lo).all())
    if kind == "int8":  # thresholds in units of z: one unit is s_h s_C / B of a logit
        hi = hi * (rows.scale[:, None] * chunk.step / screen.block)
    width = (hi - exact) / (h.norm(dim=1)[:, None] * u.norm(dim=1).max())
    assert float(width.max()) < (0.03 if kind == "bf16" else 0.1)
    assert float(width.min()) > 0


def test_int8_screen_rotation_is_exact_in_the_dot_product():
    """x . y_v = B (h . U_v) for the block Hadamard rotation (checked in float64)."""
    from causalshift.lens.screen import Int8Screen, hadamard

    h8 = hadamard(8)
    assert torch.equal(h8 @ h8.T, 8 * torch.eye(8))
    screen = Int8Screen(40)  # 40 = 8 x 5: blocks of 8
    assert screen.block == 8
    g = torch.Generator().manual_seed(3)
    h, u = torch.randn(4, 40, generator=g), torch.randn(6, 40, generator=g)
    x, y = screen.rotate(h).double(), screen.rotate(u).double()
    torch.testing.assert_close(x @ y.T, 8 * (h.double() @ u.double().T), rtol=1e-6, atol=1e-5)
    assert Int8Screen(97).block == 1  # odd width: no rotation
