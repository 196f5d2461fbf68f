"""Cache a data source's VAE latents as ArrayRecord shards for ``data.source='latents'``.

    python -m launch.encode --config=configs/tiny_world.py:adapt --vae=runs/vae --out=cache/world
    python -m launch.train  --config=configs/tiny_world.py:adapt --workdir=runs/adapt \
        --config.vae.checkpoint=runs/vae --config.train.init_from=runs/base \
        --config.data.source=latents --config.data.folder=cache/world

``--vae`` is a finished ``vae`` stage's workdir or a diffusers VAE directory (default: the
config's ``vae.checkpoint``; ``''`` encodes with a random init, for tests only). Clips
``0 .. num_examples-1`` of the config's ``data`` source are encoded in order; ``--out`` must
be new or empty and appears only once complete (see :mod:`aapt_jax.data.latent_shards`).
"""

import json

from absl import flags, logging

from aapt_jax import cli, configs
from aapt_jax.data.encode_latents import encode_to_shards
from aapt_jax.data.latent_shards import check_out_dir
from aapt_jax.io.vae_source import load_vae

_CONFIG = cli.define_config("configs/tiny_world.py:adapt", "Experiment config file.")
_VAE = flags.DEFINE_string("vae", None, "VAE checkpoint (a 'vae' stage workdir or a diffusers VAE directory); "
                           "default: the config's vae.checkpoint; '' = random init (tests only).")
_OUT = flags.DEFINE_string("out", None, "New directory for the shards and meta.json.", required=True)
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", None, "Clips to encode (default: data.num_examples).")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 256, "Clips per ArrayRecord shard.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4, "Clips per VAE call.")


def main(argv):
    del argv
    config = _CONFIG.value
    if "data" not in config:
        raise ValueError("--config: expected a config with a data source (a 'data' field), e.g. "
                         "configs/tiny_world.py:adapt")
    configs.check_common(config)
    checkpoint = config.vae.checkpoint if _VAE.value is None else _VAE.value
    if not checkpoint:
        logging.warning("no VAE checkpoint: encoding with a randomly initialised %r VAE", config.vae.preset)
    seed = config.train.seed if "train" in config else 0
    check_out_dir(_OUT.value)  # before the (possibly large) VAE loads
    try:
        vae = load_vae(config.vae.preset, checkpoint, seed=seed, allow_random=not checkpoint)
    except ValueError as err:
        if _VAE.value is None:
            raise
        raise ValueError(str(err).replace("vae.checkpoint", "--vae", 1)) from err
    meta = encode_to_shards(_OUT.value, config.data, vae, vae_preset=config.vae.preset,
                            vae_checkpoint=checkpoint, num_examples=_NUM_EXAMPLES.value,
                            shard_size=_SHARD_SIZE.value, batch_size=_BATCH_SIZE.value)
    print(json.dumps({"out": _OUT.value, "count": meta["count"], "shards": len(meta["shards"]),
                      "latent_shape": meta["latent_shape"]}))
    return 0


if __name__ == "__main__":
    cli.run(main)
