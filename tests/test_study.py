"""launch.study's runs: how each stage 3 variant is wired, and the flags refused before training."""

import os

import pytest

from aapt_jax.eval.study import VARIANTS, run_study, variant_config
from aapt_jax.train.pipeline import pretrained_of
from configs import tiny_world

PRETRAINED = pretrained_of(tiny_world.get_config)


def test_variants_start_where_the_study_says(tmp_path):
    w = str(tmp_path)
    c = {v: variant_config(tiny_world.get_config, v, w, {}, PRETRAINED) for v in VARIANTS}
    assert c["teacher"].train.forcing == "teacher" and c["student"].train.forcing == "student"
    for v in ("teacher", "student"):
        assert c[v].train.init_from == os.path.join(w, "distill") and c[v].train.extensions == 0
    long_steps = tiny_world.get_config("adversarial_long").train.steps
    assert c["student_long"].train.init_from == os.path.join(w, "student")
    assert c["student_long"].train.extensions > 0 and c["student_long"].train.steps == long_steps
    # The control for long-video training: as many updates from the same start, no extensions.
    assert c["student_more"].train.init_from == os.path.join(w, "student")
    assert c["student_more"].train.extensions == 0 and c["student_more"].train.steps == long_steps
    for v in VARIANTS:
        assert c[v].train.stage == "adversarial"
        assert c[v].train.disc_init_from == os.path.join(w, "adapt")
        assert c[v].vae.checkpoint == PRETRAINED["vae"]
    # Command-line overrides win over the variant's own.
    smoke = variant_config(tiny_world.get_config, "student_more", w, {"train.steps": 2}, PRETRAINED)
    assert smoke.train.steps == 2


@pytest.mark.parametrize("change, message", [
    (dict(variants=("student", "nope")), r"--variants: expected names among .*'nope'"),
    (dict(variants=("student_long",)), r"--variants: student_long starts from student, which is not in"),
    (dict(seed=tiny_world.get_config("distill").data.seed), r"--seed: expected a seed distinct"),
    (dict(paths=0), r"--paths: expected an int >= 1"),
    (dict(seconds="1.5"), r"--seconds: expected comma-separated positive ints"),
])
def test_bad_flags_fail_before_anything_trains(tmp_path, change, message):
    w = tmp_path / "study"
    args = dict(overrides={}, pretrained=PRETRAINED, variants=tuple(VARIANTS), seconds="10", paths=2, seed=5)
    with pytest.raises(ValueError, match=message):
        run_study(tiny_world.get_config, str(w), **{**args, **change})
    assert not w.exists()
