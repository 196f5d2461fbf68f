"""Our WanDiT reproduces diffusers' WanTransformer3DModel (random tiny configs, fp32)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from aapt_jax.io.wan_transformer import (config_from_diffusers, load_wan_transformer,  # noqa: E402
                                         to_diffusers_state_dict)

CONFIGS = {
    "two_heads": dict(num_layers=2, num_attention_heads=2, attention_head_dim=12, ffn_dim=40,
                      in_channels=4, out_channels=4, text_dim=20, freq_dim=256),
    "three_heads": dict(num_layers=3, num_attention_heads=3, attention_head_dim=18, ffn_dim=64,
                        in_channels=6, out_channels=6, text_dim=24, freq_dim=64),
}


def _torch_model(hf_cfg, seed):
    torch.manual_seed(seed)
    model = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), **hf_cfg).eval()
    with torch.no_grad():  # move every default-initialised tensor (norm gains, zeros) off its default
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _compare(hf_cfg, frames, height, width, per_frame_t, seed):
    model = _torch_model(hf_cfg, seed)
    rng = np.random.default_rng(seed)
    C = hf_cfg["out_channels"]
    x = rng.standard_normal((2, C, frames, height, width)).astype(np.float32)
    text = rng.standard_normal((2, 7, hf_cfg["text_dim"])).astype(np.float32)
    tokens = frames * (height // 2) * (width // 2)
    if per_frame_t:
        t_frames = rng.uniform(0, 1000, (2, frames)).astype(np.float32)
        t_torch = torch.from_numpy(np.repeat(t_frames, tokens // frames, axis=1))  # per-token path
        t_ours = jnp.asarray(t_frames)
    else:
        t_np = np.array([137.0, 901.0], np.float32)
        t_torch, t_ours = torch.from_numpy(t_np), jnp.asarray(t_np)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), t_torch, torch.from_numpy(text), return_dict=False)[0].numpy()

    cfg, graphdef, params = load_wan_transformer(model.state_dict(), config_from_diffusers(hf_cfg))
    ours = nnx.merge(graphdef, params)(jnp.asarray(x.transpose(0, 2, 3, 4, 1)), t_ours, jnp.asarray(text))
    ours = np.asarray(ours).transpose(0, 4, 1, 2, 3)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < 1e-5, f"relative max error {err:.2e}"
    return cfg, model, params


@pytest.mark.parametrize("name,frames,height,width,per_frame_t", [
    ("two_heads", 3, 4, 6, False),
    ("three_heads", 2, 6, 4, False),
    ("three_heads", 4, 4, 8, True),
])
def test_matches_diffusers(name, frames, height, width, per_frame_t):
    _compare(CONFIGS[name], frames, height, width, per_frame_t, seed=len(name) + frames)


def test_export_round_trip_is_exact():
    hf_cfg = CONFIGS["two_heads"]
    model = _torch_model(hf_cfg, 3)
    cfg, _, params = load_wan_transformer(model.state_dict(), config_from_diffusers(hf_cfg))
    exported = to_diffusers_state_dict(cfg, params)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(exported[k], v.numpy(), err_msg=k)


def test_importer_lists_bad_keys():
    state = {k: v.numpy() for k, v in _torch_model(CONFIGS["two_heads"], 0).state_dict().items()}
    cfg = config_from_diffusers(CONFIGS["two_heads"])
    del state["blocks.1.attn2.to_k.bias"]
    state["blocks.0.extra.weight"] = np.zeros(3, np.float32)
    state["proj_out.weight"] = state["proj_out.weight"][:, :-1]
    with pytest.raises(ValueError) as err:
        load_wan_transformer(state, cfg)
    msg = str(err.value)
    assert "1 missing" in msg and "blocks.1.attn2.to_k.bias" in msg
    assert "1 unexpected" in msg and "blocks.0.extra.weight" in msg
    assert "1 mis-shaped" in msg and "proj_out.weight" in msg


def test_directory_with_config_and_shards(tmp_path):
    import json

    from safetensors.numpy import save_file

    model = _torch_model(CONFIGS["two_heads"], 5)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    keys = sorted(state)
    save_file({k: state[k] for k in keys[: len(keys) // 2]}, str(tmp_path / "a-00001.safetensors"))
    save_file({k: state[k] for k in keys[len(keys) // 2:]}, str(tmp_path / "a-00002.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(dict(model.config)))
    cfg, graphdef, params = load_wan_transformer(tmp_path)
    assert cfg.num_heads == 2 and cfg.num_layers == 2 and cfg.latent_channels == 4
    np.testing.assert_array_equal(np.asarray(params["proj_out"]["kernel"][...]), state["proj_out.weight"].T)


def test_base_checkpoint_widens_into_aapt_generator():
    model = _torch_model(CONFIGS["two_heads"], 7)
    base = config_from_diffusers(CONFIGS["two_heads"])
    causal = base.replace(causal=True, control_channels=3, window=2)
    _, _, params = load_wan_transformer(model.state_dict(), causal, new_channels="random")
    kernel = np.asarray(params["patch_embedding"]["kernel"][...]).reshape(4, causal.in_channels, -1)
    w = model.state_dict()["patch_embedding.weight"].numpy()  # [dim, C, 1, 2, 2]
    np.testing.assert_array_equal(kernel[:, :4], w.transpose(2, 3, 4, 1, 0).reshape(4, 4, -1))
    assert np.abs(kernel[:, 4:]).min() > 0 and np.std(kernel[:, 4:]) > 0.01
    _, _, zero = load_wan_transformer(model.state_dict(), causal, new_channels="zero")
    assert not np.asarray(zero["patch_embedding"]["kernel"][...]).reshape(4, causal.in_channels, -1)[:, 4:].any()
