"""Explore a world in the browser: stream an AAPT generator live, steered by keys and mouse.

    python -m launch.serve                       # http://127.0.0.1:8080/, the tiny world's shipped generator
    python -m launch.serve --checkpoint=runs/adv --vae=runs/vae --capacity=4
    python -m launch.serve --host=0.0.0.0        # prints a URL with the required token

Compiles the generator step and the VAE decode once before serving (the log says how
long), then serves the page and one stream per client. Ctrl-C or SIGTERM stops cleanly.
"""

import logging as py_logging
import secrets
import socket

from absl import flags, logging

from aapt_jax import cli
from aapt_jax.io import builtin
from aapt_jax.serve.app import ServerOptions, is_loopback, run
from aapt_jax.serve.engine import Engine

_CONFIG = cli.define_config("configs/tiny_world.py", "Experiment config file.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A finished stage's workdir, a diffusers transformer directory "
                                  "or builtin:WORLD/aapt; default: the config's shipped generator, if any; "
                                  "'' = randomly initialised generator.")
_VAE = flags.DEFINE_string("vae", None, "A finished 'vae' stage's workdir, a diffusers VAE directory or "
                           "builtin:WORLD/vae; default: config.vae.checkpoint, else the config's shipped VAE, "
                           "if any; '' = randomly initialised VAE.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind; anything but loopback requires a token.")
_PORT = flags.DEFINE_integer("port", 8080, "Port (0: any free port, printed in the log).")
_CAPACITY = flags.DEFINE_integer("capacity", 2, "Concurrent streams (one per client).")
_TOKEN = flags.DEFINE_string("token", None, "Token clients must send; generated when --host is not loopback.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of randomly initialised weights.")


def main(argv):
    del argv
    py_logging.getLogger("aapt_jax").setLevel(py_logging.INFO)
    token = _TOKEN.value
    if token is None and not is_loopback(_HOST.value):
        token = secrets.token_urlsafe(16)
    options = ServerOptions(host=_HOST.value, port=_PORT.value, capacity=_CAPACITY.value, token=token)
    try:
        socket.getaddrinfo(options.host, options.port)
    except socket.gaierror as err:
        raise ValueError(f"--host: expected an address of this machine, got {options.host!r} ({err})") from None
    config = _CONFIG.value
    engine = Engine(config, *builtin.sources(config, _CHECKPOINT.value, _VAE.value), seed=_SEED.value)
    if engine.random_generator:
        logging.warning("no --checkpoint: the generator is RANDOMLY INITIALISED (untrained; the video is noise)")
    if engine.random_vae:
        logging.warning("no --vae: the VAE is RANDOMLY INITIALISED (untrained)")
    logging.info("compiling the generator step and the VAE decode...")
    seconds = engine.warm_up()
    logging.info("compiled in %.1f s (%s)", seconds, engine.describe())

    def ready(port):
        query = f"?token={token}" if token else ""
        logging.info("serving on http://%s:%d/%s (capacity %d; Ctrl-C stops)", options.host, port, query,
                     options.capacity)

    run(engine, options, on_ready=ready)
    logging.info("stopped")
    return 0


if __name__ == "__main__":
    cli.run(main)
