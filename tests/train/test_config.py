"""TrainConfig holds a GPTConfig; the CLI, --config files and config.json keep flat keys."""

from __future__ import annotations

import dataclasses

import pytest

from causalshift.errors import UserError
from causalshift.gpt.config import GPTConfig, ResidualConfig
from causalshift.train.config import (
    MODEL_KEYS,
    PRESET_NAMES,
    PRESETS,
    RESIDUAL_PREFIX,
    TrainConfig,
    cli_options,
    flat_keys,
    model_changes,
    preset,
)

# The top-level keys of a run's config.json before the model's own dict (unchanged since
# TrainConfig held copies of the model's fields, but for the tracking keys appended last).
CONFIG_JSON_KEYS = (
    "preset data n_layer n_head n_embd block_size vocab_size dropout bias residual cut_layer "
    "alpha tau batch_size grad_accum batch_tokens max_steps lr min_lr_ratio warmup_steps "
    "weight_decay beta1 beta2 grad_clip gate_lr eval_interval eval_iters log_interval "
    "checkpoint_interval seed compile dtype threads device tensorboard tracker wandb_project "
    "wandb_name wandb_group wandb_tags"
).split()


def test_flat_dict_keeps_config_json_keys_and_order() -> None:
    assert list(flat_keys()) == CONFIG_JSON_KEYS
    cfg = preset("tiny").replace(residual="fixed", cut_layer=2, alpha=0.5)
    d = cfg.to_dict()
    assert list(d) == CONFIG_JSON_KEYS
    assert (d["n_layer"], d["residual"], d["cut_layer"], d["alpha"]) == (2, "fixed", 2, 0.5)
    assert TrainConfig.from_dict(d) == cfg


def test_model_keys_cover_the_model_config_once() -> None:
    paths = [path for path, _ in MODEL_KEYS.values()]
    model = [f.name for f in dataclasses.fields(GPTConfig) if f.name != "residual"]
    residual = [RESIDUAL_PREFIX + f.name for f in dataclasses.fields(ResidualConfig)]
    assert sorted(paths) == sorted(model + residual)


def test_presets_are_one_table() -> None:
    assert tuple(PRESETS) == PRESET_NAMES
    assert preset("cpu-small") == TrainConfig()  # the defaults are cpu-small's
    for name, cfg in PRESETS.items():
        assert cfg.preset == name and cfg.model.residual == ResidualConfig()
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert preset("tiny").model == GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        preset("huge")


def test_replace_takes_flat_keys_or_a_model() -> None:
    cfg = preset("tiny").replace(n_layer=3, residual="gate", tau=0.5, lr=0.01)
    assert (cfg.model.n_layer, cfg.model.residual.mode, cfg.model.residual.tau) == (3, "gate", 0.5)
    assert cfg.lr == 0.01 and cfg.model.n_head == 2  # the rest kept
    model = GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8)
    assert cfg.replace(model=model, seed=3).model == model


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": {}}, "unknown training config keys: model"),
        ({"cut_layer": 3, "residual": "fixed"}, "out of range 1..2 (the model has 2 blocks)"),
        ({"n_layer": 0}, "n_layer must be a positive integer"),
        ({"residual": "bogus"}, "unknown residual mode"),
        ({"max_steps": 0}, "max_steps must be a positive integer"),
        ({"n_embd": 65}, "not divisible"),
    ],
)
def test_bad_values_are_user_errors(changes: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig.from_dict(changes, preset("tiny"))


def test_cli_options_are_the_flat_keys() -> None:
    fields = {f.name: f for f in dataclasses.fields(cli_options())}
    assert list(fields) == CONFIG_JSON_KEYS
    assert fields["n_layer"].default == 6 and fields["block_size"].default == 256
    assert not fields["vocab_size"].metadata["cli"] and not fields["bias"].metadata["cli"]
    assert "gate-hard" in fields["residual"].metadata["help"]


def test_resume_may_change_only_what_shapes_no_weight() -> None:
    cfg = preset("tiny")
    saved = cfg.to_dict()
    assert model_changes(saved, cfg.replace(dropout=0.1, lr=0.5).model) == []
    changed = cfg.replace(n_layer=3, residual="gate", tau=2.0).model
    assert model_changes(saved, changed) == ["n_layer", "residual", "tau"]


def test_presets():
    assert preset("tiny").model.n_layer == 2
    assert preset("gpt2-124m").model.block_size == 1024
    with pytest.raises(UserError, match="cpu-small"):
        preset("huge")
