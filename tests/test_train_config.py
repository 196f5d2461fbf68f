"""The train section is one typed, validated config: defaults for what a config leaves out,
one line naming the field for a bad value, the nearest name for an unknown one."""

import pytest

from aapt_jax.train.config import TrainConfig, train_config, train_fields
from configs import tiny_world


def test_configs_write_every_field_and_read_back_typed():
    c = tiny_world.get_config("adversarial")
    assert set(c.train) == {f for f in TrainConfig.__dataclass_fields__}
    tc = train_config(c)
    assert (tc.stage, tc.optimizer, tc.disc_layers) == ("adversarial", "rmsprop", (-3, -1))
    assert train_fields(steps=5).steps == 5 and train_fields().lr == TrainConfig().lr


@pytest.mark.parametrize("fields,message", [
    (dict(stepz=3), r"^train: unknown field\(s\) \['stepz'\] \(did you mean 'steps'\?\)"),
    (dict(steps="3"), r"^train.steps: expected an int, got '3'$"),
    (dict(steps=0), r"^train.steps: expected a positive int, got 0$"),
    (dict(random_init=1), r"^train.random_init: expected a bool, got 1$"),
    (dict(lr=float("nan")), r"^train.lr: expected a finite number, got nan$"),
    (dict(optimizer="sgd"), r"^train.optimizer: expected one of \('adamw', 'rmsprop'\), got 'sgd'$"),
    (dict(forcing="both"), r"^train.forcing: expected one of \('student', 'teacher'\), got 'both'$"),
    (dict(disc_layers=[1, 2]), None),  # a list (JSON, a YAML override) is a tuple
])
def test_bad_fields_are_named_in_one_line(fields, message):
    if message is None:
        assert TrainConfig.from_mapping(fields).disc_layers == (1, 2)
        return
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_mapping(fields)


def test_an_unknown_field_in_a_config_is_refused_before_training(tmp_path):
    from aapt_jax.train.loop import train

    c = tiny_world.get_config("vae")
    c.train.warmup_step = 0
    with pytest.raises(ValueError, match=r"did you mean 'warmup_steps'"):
        train(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
