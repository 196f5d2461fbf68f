"""Our causal VAE against diffusers' AutoencoderKLWan, random-initialized, in fp32."""

import dataclasses

import numpy as np
import pytest
import torch
from flax import nnx

from aapt_jax.io.vae_import import export_state_dict, import_vae
from aapt_jax.model import vae as V

diffusers = pytest.importorskip("diffusers")

# Two shapes of the architecture: different widths, depths, block counts and temporal
# downsampling patterns, a decoder narrower than the encoder, non-square frames.
CONFIGS = {
    "3scales_tt": dict(conv_impl="conv3d", base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                       temperal_downsample=[True, True], frames=9, hw=(16, 24)),
    "4scales_ftt": dict(conv_impl="taps", base_dim=12, decoder_base_dim=8, z_dim=8, dim_mult=[1, 2, 4, 2],
                        num_res_blocks=2, temperal_downsample=[False, True, True],
                        frames=5, hw=(24, 16)),
}


def _torch_vae(seed, frames, hw, conv_impl, **kw):
    del frames, hw, conv_impl
    torch.manual_seed(seed)
    z = kw["z_dim"]
    model = diffusers.AutoencoderKLWan(latents_mean=[0.0] * z, latents_std=[1.0] * z, **kw).float().eval()
    with torch.no_grad():
        # Defaults (gamma 1, bias 0) would let a mis-mapped norm or bias pass unnoticed.
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "bias")):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, tmp_path_factory):
    spec = CONFIGS[request.param]
    model = _torch_vae(0, **spec)
    # Through a saved directory, so config.json parsing is exercised too.
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    config, _, params = import_vae(str(directory))
    # Both ways of running the 3D convs are checked, one per case.
    config = dataclasses.replace(config, conv_impl=spec["conv_impl"])
    graphdef = nnx.graphdef(V.abstract_vae(config))
    rng = np.random.RandomState(1)
    video = rng.uniform(-1, 1, (2, 3, spec["frames"], *spec["hw"])).astype(np.float32)
    with torch.no_grad():
        posterior = model.encode(torch.from_numpy(video)).latent_dist
        mean, logvar = posterior.mean.numpy(), posterior.logvar.numpy()
        decoded = model.decode(posterior.mean).sample.numpy()
    return dict(name=request.param, model=model, config=config, graphdef=graphdef, params=params, video=video,
                mean=mean, logvar=logvar, decoded=decoded)


def _to_ours(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 4, 1))


def _to_theirs(x):
    return np.asarray(x).transpose(0, 4, 1, 2, 3)


def _assert_close(ours, ref, what):
    scale = float(np.abs(ref).max())
    err = float(np.abs(ours - ref).max())
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    assert err <= 1e-5 * scale, f"{what}: max abs err {err:.3g} vs scale {scale:.3g}"


def test_config_read_from_directory(case):
    spec = CONFIGS[case["name"]]
    assert case["config"].dec_base_dim == spec.get("decoder_base_dim", spec["base_dim"])
    assert case["config"].temporal_downsample == tuple(spec["temperal_downsample"])


def test_encode_matches_diffusers(case):
    mean, logvar = V.encode(case["graphdef"], case["params"], _to_ours(case["video"]))
    _assert_close(_to_theirs(mean), case["mean"], "encode mean")
    _assert_close(_to_theirs(logvar), case["logvar"], "encode logvar")


def test_decode_matches_diffusers(case):
    frames = V.decode(case["graphdef"], case["params"], _to_ours(case["mean"]))
    ref = case["decoded"]
    # Most pixels must be inside the clamp, or the comparison would be vacuous.
    assert np.mean(np.abs(ref) < 1) > 0.5
    _assert_close(_to_theirs(frames), ref, "decode")


def test_export_inverts_import(case):
    exported = export_state_dict(case["config"], case["params"])
    ref = {k: v.numpy() for k, v in case["model"].state_dict().items()}
    assert sorted(exported) == sorted(ref)
    for key, value in ref.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_importer_lists_every_bad_key(case):
    state = {k: v.numpy() for k, v in case["model"].state_dict().items()}
    missing = "decoder.mid_block.attentions.0.to_qkv.weight"
    misshaped = "encoder.conv_in.weight"
    del state[missing]
    state["encoder.extra.weight"] = np.zeros((1,), np.float32)
    state[misshaped] = state[misshaped][:, :, :2]
    with pytest.raises(ValueError) as err:
        import_vae(state, case["config"])
    message = str(err.value)
    for needle in (missing, "encoder.extra.weight", misshaped, "missing", "unexpected", "mis-shaped"):
        assert needle in message, (needle, message)


def test_state_dict_needs_a_config(case):
    state = {k: v.numpy() for k, v in case["model"].state_dict().items()}
    with pytest.raises(ValueError, match="config"):
        import_vae(state)
