"""Parameter counts of the Wan configs equal diffusers' (both counted without allocating)."""

import jax
import pytest

from aapt_jax import configs
from aapt_jax.bench.streaming import diffusers_param_count
from aapt_jax.io.wan_transformer import abstract_params
from configs import get as named_config

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("name,expected", [("wan2.1-t2v-1.3B", 1_418_996_800), ("wan2.1-t2v-14B", 14_288_491_584)])
def test_wan_param_count_equals_diffusers(name, expected):
    config = named_config(name)
    theirs = diffusers_param_count(config)  # WanTransformer3DModel of the same fields, on the meta device
    ours = sum(x.size for x in jax.tree.leaves(abstract_params(configs.model_config(config))))
    assert ours == theirs == expected


def test_aapt_8b_is_about_8b():
    cfg = configs.model_config(named_config("aapt-8B"))
    count = sum(x.size for x in jax.tree.leaves(abstract_params(cfg)))
    assert cfg.num_layers == 36 and cfg.window == 30 and (cfg.latent_height, cfg.latent_width) == (52, 92)
    assert 7.5e9 < count < 8.5e9
