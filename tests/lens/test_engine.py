"""The streaming lens engine: exact ranks whatever the screen, rank reuse, counts by hand."""

import pytest
import torch

from causalshift.lens import engine
from causalshift.lens.models import lens_model
from causalshift.testing import tiny_hf_model as tiny_model

# Every screen the probe can choose (int8 through each kernel; skipped where it cannot run).
FAST_SCREENS = [torch.bfloat16, torch.int8, "int8-onednn", "int8-fbgemm"]


def _runs_here(dtype):
    from causalshift.lens.screen import int8_kernel_works

    if isinstance(dtype, str) and not int8_kernel_works(dtype):
        pytest.skip(f"{dtype} does not run in this torch build")


@pytest.mark.parametrize("dtype", FAST_SCREENS)
def test_fast_lens_gives_the_float32_metrics(dtype, monkeypatch):
    """The bf16 and int8 screens only decide which entries to re-score: the metrics are the
    float32 ones (top-k hits identical; cosines computed in float32 in both)."""
    _runs_here(dtype)
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


def _lens_weights_of(unembed, bias, dtype, vocab_chunk, first=None, int8_after=0):
    from types import SimpleNamespace

    from causalshift.lens.engine import LensWeights

    lm = SimpleNamespace(unembed=unembed, embed=unembed, tied_embeddings=True, unembed_bias=bias)
    return LensWeights.prepare(lm, dtype, vocab_chunk, first=first, int8_after=int8_after)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, *FAST_SCREENS])
@pytest.mark.parametrize("first", [None, torch.tensor([7, 3, 250, 0])])
def test_decode_ranks_equals_reference_definition(with_bias, dtype, first):
    """The chunked, pruned rank count equals metrics.target_ranks on full logits (capped at
    max_rank), ties included, whatever order the vocabulary is scanned in."""
    _runs_here(dtype)
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
@pytest.mark.parametrize("dtype", FAST_SCREENS)
def test_decode_ranks_resolves_near_ties_below_bf16_resolution(with_bias, dtype):
    """Competitors within 1e-5 (relative) of the target's logit, far below bf16's 2^-8: the
    screen must leave them to the float32 re-scoring and still count them right."""
    _runs_here(dtype)
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
    if dtype in (torch.int8, "int8-onednn", "int8-fbgemm") and not with_bias:
        assert type(weights.screens[-1]).__name__ == "Int8Screen"
    logits = h @ unembed.T
    expected = (logits > logits.gather(1, target[:, None])).sum(1)
    assert bool((expected >= 3).all())  # the near ties above really are above in float32
    (got,) = decode_ranks(h, weights, (target,), max_rank=10)
    assert torch.equal(got, expected.clamp(max=10))


@pytest.mark.parametrize("kind", ["gpt2", "causalshift_gpt"])
def test_a_type_error_inside_the_forward_propagates(kind):
    """The call signature is decided once (LensModel.takes_input_ids), so a real TypeError
    raised inside a block is not mistaken for the wrong signature and retried."""
    from causalshift.testing import tiny_gpt

    model = tiny_model("gpt2") if kind == "gpt2" else tiny_gpt()
    lm = lens_model(model, tokenizer=None, name=kind, source="config")
    assert lm.takes_input_ids == (kind == "gpt2")
    ids = torch.tensor([[1, 2, 3, 4]])
    assert len(engine.residual_stream(lm, ids)) == lm.num_layers + 1

    block, calls = lm.blocks[1], []
    original = block.forward

    def flaky(*args, **kwargs):  # fails once: a retry with other arguments would hide it
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("a bug inside the block")
        return original(*args, **kwargs)

    block.forward = flaky
    with pytest.raises(TypeError, match="a bug inside the block"):
        engine.residual_stream(lm, ids)
    assert len(calls) == 1


def test_next2_target_by_hand_at_last_layer():
    """top1_next2 at layer L: how often the model's greedy prediction at i is t_(i+2), over
    the positions that have one; the column exists only when next2 is asked for."""
    model = tiny_model("gpt2")
    lm = lens_model(model, tokenizer=None, name="gpt2", source="config")
    tokens = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(3))
    kw = dict(compute_dtype=torch.bfloat16, progress=False, batch_size=2)
    plain = engine.run_lens(lm, tokens, **kw)
    run = engine.run_lens(lm, tokens, targets=("next2", "input", "output"), **kw)
    assert "top1_next2" not in plain.accumulator.names
    names = run.accumulator.names
    assert names[:3] == ["top1_input", "top1_output", "top1_next2"]
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[:, :-2]
    expected = (logits.argmax(-1) == tokens[:, 2:]).float().mean().item()
    assert run.accumulator.layer_summary()[-1]["top1_next2"] == pytest.approx(expected)
    assert int(run.accumulator.counts[:, names.index("top5_next2")].sum()) == 3 * 10
    for name in plain.accumulator.names:  # the other columns are unchanged
        j, k = names.index(name), plain.accumulator.names.index(name)
        assert torch.equal(run.accumulator.sums[..., j], plain.accumulator.sums[..., k])


def test_targets_must_be_known_and_include_input_and_output():
    from causalshift.lens.metrics import check_targets

    assert check_targets(["next2", "output", "input"]) == ("input", "output", "next2")
    with pytest.raises(ValueError, match="unknown target"):
        check_targets(["input", "output", "next3"])
    with pytest.raises(ValueError, match="include input and output"):
        check_targets(["output", "next2"])
