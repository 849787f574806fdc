"""The bf16 and int8 screens: their error band covers the real error; the rotation is exact."""

import pytest
import torch

INT8 = ["int8-intmm", "int8-onednn", "int8-fbgemm"]


def _int8_screen(kind: str, hidden: int):
    from causalshift.lens.screen import Int8Screen, int8_kernel_works

    if not int8_kernel_works(kind):
        pytest.skip(f"{kind} does not run in this torch build")
    return Int8Screen(hidden, kernel=kind)


def _band_holds(screen, u, h, max_width):
    """Every screen logit lies inside its entry's band around the exact logit (tau = every
    exact logit, one "target" per entry), and the band's half-width, relative to
    |h| max |U_v|, is below max_width."""
    chunk = screen.prepare_chunk(u, u.norm(dim=1), 0, len(u))
    rows = screen.rows(h)
    exact = (h.double() @ u.double().T).float()
    z = screen.matmul(rows, chunk).float()
    band = screen.thresholds(exact, rows, chunk)
    v = len(u)
    hi, lo = band[:, :v], band[:, v:]
    assert bool((z <= hi).all()) and bool((z >= lo).all())
    if screen.dtype == torch.int8:  # thresholds in units of z: one unit is s_h s_C / B
        hi = hi * (rows.scale[:, None] * chunk.step / screen.block)
    width = (hi - exact) / (h.norm(dim=1)[:, None] * u.norm(dim=1).max())
    assert float(width.max()) < max_width
    assert float(width.min()) > 0
    return z, rows, chunk


@pytest.mark.parametrize("scale", [1.0, 1e3])
@pytest.mark.parametrize("kind", ["bf16", *INT8])
def test_screen_band_covers_the_screen_error(scale, kind):
    """Every screen logit lies inside its entry's band around the exact logit, and the band
    is narrow (bf16: a few roundings of |h| max |U_v|; int8: a few quantization steps; the
    7-bit rows of the quantized-linear kernels about twice as many)."""
    from causalshift.lens.screen import Screen

    g = torch.Generator().manual_seed(6)
    u = torch.randn(2000, 96, generator=g) * torch.rand(2000, 1, generator=g) * scale
    u[:, 5] *= 20  # outlier channels, as in real residual streams and unembeddings
    h = torch.randn(50, 96, generator=g) * 10
    h[:, 3] *= 50
    screen = Screen(torch.bfloat16) if kind == "bf16" else _int8_screen(kind, 96)
    if kind != "bf16":
        assert screen.block == 32  # the largest power of two dividing 96, capped at 32
    width = {"bf16": 0.03, "int8-intmm": 0.1}.get(kind, 0.2)
    _band_holds(screen, u, h, width)


@pytest.mark.parametrize("hidden", [64, 2304])
@pytest.mark.parametrize("kind", INT8)
def test_int8_kernels_are_exact_where_saturation_would_bite(kind, hidden):
    """Adversarial rows and chunks: after the rotation every row is at its extreme level
    (+-63, or +-127 for _int_mm) and every weight at +-127 with the row's sign pattern, so
    each pair of products sums to its largest value (2 x 127 x 127 in u8 x s8: one more bit
    of the row would saturate vpmaddubsw's int16 on CPUs without VNNI) and |z| reaches
    d x 63 x 127 (past 2^24 at d = 2304: the float32 output rounds). The integer products are
    exact (up to that rounding) and the band still holds."""
    from causalshift.lens.screen import hadamard

    screen = _int8_screen(kind, hidden)
    block = screen.block
    g = torch.Generator().manual_seed(11)
    signs = torch.where(torch.rand(8, hidden, generator=g) < 0.5, -1.0, 1.0)
    signs[0] = 1.0
    h_rot = hadamard(block)
    unrotate = lambda x: (x.reshape(-1, block) @ h_rot / block).reshape(x.shape)  # H H = B I
    h = unrotate(signs)  # rotated: exactly +-1 everywhere
    u = unrotate(torch.cat([signs, -signs, signs[:1].repeat(4, 1)]) * 3.0)
    z, rows, chunk = _band_holds(screen, u, h, 0.2)
    q_rows = torch.round(screen.rotate(h) / rows.scale[:, None]).long()
    q_u = torch.round(screen.rotate(u) / chunk.step).long()
    assert int(q_rows.abs().min()) == screen.levels and int(q_u.abs().min()) == 127
    exact = (q_rows @ q_u.T).double()
    assert float(exact.abs().max()) == hidden * screen.levels * 127
    tolerance = screen.conversion + (exact.abs() * 2.0**-23 if hidden > 1024 else 0)
    assert bool(((z.double() - exact).abs() <= tolerance).all())
    if hidden == 64:
        assert torch.equal(z.double(), exact)


def test_int8_kernel_check_and_names():
    """Each kernel runs here or says it does not; screens carry their names."""
    from causalshift.lens.screen import SCREEN_NAMES, int8_kernel_works, make_screen

    for name in SCREEN_NAMES:
        if name.startswith("int8") and not int8_kernel_works(name):
            continue
        assert make_screen(name, "cpu", 64).name == name
    assert make_screen(torch.int8, "cpu", 64).name == "int8-intmm"
    with pytest.raises(ValueError, match="unknown lens screen"):
        make_screen("int4", "cpu", 64)
    assert not int8_kernel_works("int8-nonexistent")


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
