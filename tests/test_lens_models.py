"""Every supported architecture family, as a tiny random model built from a config:
the lens finds its blocks, final norm and unembedding, and at layer L it reproduces the
model's own logits."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from causalshift.errors import UserError
from causalshift.lens import engine
from causalshift.lens.models import lens_model, load

SMALL = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)

FAMILIES = {
    "gpt2": dict(vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=64),
    "llama": dict(SMALL, tie_word_embeddings=True),
    "mistral": dict(SMALL, tie_word_embeddings=False),
    "qwen2": dict(SMALL, tie_word_embeddings=False),
    "qwen3": dict(SMALL, head_dim=8),
    "gemma2": dict(SMALL, head_dim=8, final_logit_softcapping=30.0, query_pre_attn_scalar=8),
    "gemma3_text": dict(SMALL, head_dim=8, query_pre_attn_scalar=8, sliding_window=4),
}


def tiny_model(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **FAMILIES[model_type])
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # make the final norms non-trivial so a wrong norm would show
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_lens_at_last_layer_equals_model_logits(model_type):
    model = tiny_model(model_type)
    lm = lens_model(model, tokenizer=None, name=model_type, source="config")
    assert lm.num_layers == 3
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))
    states = engine.residual_stream(lm, ids)
    assert len(states) == 4 and states[0].shape == (2, 11, 32)
    with torch.no_grad():
        expected = model(input_ids=ids).logits.float()
    torch.testing.assert_close(lm.decode(states[-1]), expected, atol=1e-4, rtol=1e-4)
    tied = model.config.get_text_config().tie_word_embeddings
    assert lm.tied_embeddings == tied
    assert (lm.unembed.data_ptr() == lm.embed.data_ptr()) == tied


@pytest.mark.parametrize("model_type", ["gpt2", "gemma3_text"])
def test_layer_zero_is_stream_entering_block_one(model_type):
    model = tiny_model(model_type)
    lm = lens_model(model, tokenizer=None, name=model_type, source="config")
    ids = torch.tensor([[1, 2, 3, 4]])
    h0 = engine.residual_stream(lm, ids)[0]
    with torch.no_grad():
        if model_type == "gpt2":
            t = model.transformer
            expected = t.wte(ids) + t.wpe(torch.arange(4))[None]
        else:  # Gemma scales the embedding by sqrt(d) before block 1
            expected = model.model.embed_tokens(ids)
            raw = model.model.embed_tokens.weight[ids]
            assert torch.allclose(expected, raw * 32**0.5, atol=1e-4)
    torch.testing.assert_close(h0, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
def test_fast_lens_gives_the_float32_metrics(dtype, monkeypatch):
    """The bf16 and int8 screens only decide which entries to re-score: the metrics are the
    float32 ones (top-k hits identical; cosines computed in float32 in both)."""
    monkeypatch.setattr(engine, "INT8_AFTER", 20)  # int8 chunks after the first 20 columns
    model = tiny_model("llama")
    lm = lens_model(model, tokenizer=None, name="llama", source="config")
    tokens = torch.randint(0, 97, (8, 64), generator=torch.Generator().manual_seed(2))
    ref = engine.run_lens(lm, tokens, compute_dtype=torch.float32, progress=False, batch_size=4)
    fast = engine.run_lens(
        lm, tokens, compute_dtype=dtype, progress=False, batch_size=3, vocab_chunk=40
    )
    assert ref.num_positions == 8 * 63
    for r, f in zip(ref.accumulator.layer_summary(), fast.accumulator.layer_summary()):
        for name in ref.accumulator.names:
            assert r[name] == pytest.approx(f[name], abs=1e-9), (r["layer"], name)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_layer0_rank_reuse_changes_nothing(model_type):
    """Repeated tokens reuse their layer-0 input rank when the state depends on the token
    alone (Llama); GPT-2 adds positions, so nothing is reused. Metrics identical either way."""
    model = tiny_model(model_type)
    lm = lens_model(model, tokenizer=None, name=model_type, source="config")
    tokens = torch.randint(0, 12, (6, 24), generator=torch.Generator().manual_seed(7))
    kw = dict(compute_dtype=torch.bfloat16, progress=False, batch_size=2)
    plain = engine.run_lens(lm, tokens, reuse_layer0=False, **kw)
    reused = engine.run_lens(lm, tokens, **kw)
    assert torch.equal(plain.accumulator.sums, reused.accumulator.sums)
    assert plain.reused_layer0_ranks == 0
    if model_type == "llama":
        assert reused.reused_layer0_ranks >= 6 * 23 - 12  # all but the first of each token
    else:
        assert reused.reused_layer0_ranks == 0


def test_run_lens_counts_by_hand_at_last_layer():
    """top-1 output match at layer L equals the model's own next-token accuracy."""
    model = tiny_model("gpt2")
    lm = lens_model(model, tokenizer=None, name="gpt2", source="config")
    tokens = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(3))
    result = engine.run_lens(lm, tokens, compute_dtype=torch.float32, progress=False)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[:, :-1]
    accuracy = (logits.argmax(-1) == tokens[:, 1:]).float().mean().item()
    last = result.accumulator.layer_summary()[-1]
    assert last["top1_output"] == pytest.approx(accuracy)
    # projection leaves out positions whose input equals its output
    repeats = int((tokens[:, :-1] == tokens[:, 1:]).sum())
    assert result.excluded_projection_positions == repeats


def test_unknown_architecture_is_named():
    config = AutoConfig.for_model(
        "gpt_neox",
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UserError, match="gpt_neox"):
        lens_model(model, tokenizer=None, name="neox", source="config")


def test_load_saved_hf_folder_and_errors(tmp_path):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path / "qwen")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(
        models.WordLevel({f"w{i}": i for i in range(97)} | {"[UNK]": 96}, unk_token="[UNK]")
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path / "qwen")
    lm = load(str(tmp_path / "qwen"))
    assert lm.architecture == "qwen2" and lm.num_layers == 3
    with pytest.raises(UserError, match="not found"):
        load(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no network"):
        load("nonexistent-org-xyz/nonexistent-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load(str(tmp_path / "empty"))


def _lens_weights_of(unembed, bias, dtype, vocab_chunk, first=None, int8_after=0):
    from types import SimpleNamespace

    from causalshift.lens.engine import LensWeights

    lm = SimpleNamespace(unembed=unembed, embed=unembed, tied_embeddings=True, unembed_bias=bias)
    return LensWeights.prepare(lm, dtype, vocab_chunk, first=first, int8_after=int8_after)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("first", [None, torch.tensor([7, 3, 250, 0])])
def test_decode_ranks_equals_reference_definition(with_bias, dtype, first):
    """The chunked, pruned rank count equals metrics.target_ranks on full logits (capped at
    max_rank), ties included, whatever order the vocabulary is scanned in."""
    from causalshift.lens.engine import decode_ranks
    from causalshift.lens.metrics import target_ranks

    g = torch.Generator().manual_seed(4)
    unembed = torch.randint(-3, 4, (300, 8), generator=g).float()  # integer logits: many ties
    bias = torch.randint(-2, 3, (300,), generator=g).float() if with_bias else None
    h = torch.randint(-2, 3, (64, 8), generator=g).float()
    h[:8] = unembed[:8] * 3  # rows whose input target is the clear maximum
    targets = (torch.arange(64) % 300, torch.randint(0, 300, (64,), generator=g))
    weights = _lens_weights_of(unembed, bias, dtype, 64, first)
    logits = h @ unembed.T + (0 if bias is None else bias)
    for max_rank in (1, 5, 300):
        got = decode_ranks(h, weights, targets, max_rank=max_rank)
        for g_, t in zip(got, targets):
            assert torch.equal(g_, target_ranks(logits, t).clamp(max=max_rank))


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
def test_decode_ranks_resolves_near_ties_below_bf16_resolution(with_bias, dtype):
    """Competitors within 1e-5 (relative) of the target's logit, far below bf16's 2^-8: the
    screen must leave them to the float32 re-scoring and still count them right."""
    from causalshift.lens.engine import decode_ranks

    g = torch.Generator().manual_seed(5)
    d, n = 64, 40
    unembed = torch.randn(500, d, generator=g)
    h = torch.randn(n, d, generator=g) * 3
    target = torch.arange(n)
    unembed[:n] = h / h.norm(dim=1, keepdim=True) * 2  # targets: the best direction
    # for each row, 3 entries just above and 3 just below its target's logit
    for i in range(n):
        for k, sign in enumerate((1, 1, 1, -1, -1, -1)):
            eps = sign * 1e-5 * (k % 3 + 1)
            unembed[n + 6 * i + k] = unembed[i] * (1 + eps)
    bias = torch.zeros(500) if with_bias else None
    weights = _lens_weights_of(unembed, bias, dtype, 128)
    if dtype == torch.int8 and not with_bias:
        assert type(weights.screens[-1]).__name__ == "Int8Screen"
    logits = h @ unembed.T
    expected = (logits > logits.gather(1, target[:, None])).sum(1)
    assert bool((expected >= 3).all())  # the near ties above really are above in float32
    (got,) = decode_ranks(h, weights, (target,), max_rank=10)
    assert torch.equal(got, expected.clamp(max=10))


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
