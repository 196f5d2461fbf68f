"""The streaming server as a service: protocol errors, fuzzing, capacity, token, export, signals.

One warm tiny-world engine for the whole module (its compile is shared with the latency
bench's quick run); every client is a real aiohttp WebSocket client on loopback.
"""

import asyncio
import base64
import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")

from aapt_jax import bench  # noqa: E402
from aapt_jax.io import builtin  # noqa: E402
from aapt_jax.io.video import probe_video  # noqa: E402
from aapt_jax.serve import protocol  # noqa: E402
from aapt_jax.serve.app import BackgroundServer, ServerOptions, is_loopback  # noqa: E402
from aapt_jax.serve.engine import cached_engine  # noqa: E402
from aapt_jax.serve.protocol import ProtocolError  # noqa: E402
from aapt_jax.serve.session import decode_image  # noqa: E402
from configs import get as named_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def engine():
    return cached_engine(named_config("tiny_world"))


@pytest.fixture(scope="module")
def url(engine):
    with BackgroundServer(engine, ServerOptions(port=0, capacity=2)) as base:
        yield base


def _png(width, height, seed=0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class Client:
    """A WebSocket client that keeps frames and text replies apart."""

    def __init__(self, ws):
        self.ws, self.frames, self.replies = ws, [], asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                head, payload = protocol.unpack(msg.data)
                self.frames.append((time.monotonic(), head, payload))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await self.replies.put(json.loads(msg.data))

    async def reply(self, timeout=30.0):
        return await asyncio.wait_for(self.replies.get(), timeout)

    async def wait_frames(self, n, timeout=30.0):
        t0 = time.monotonic()
        while len(self.frames) < n:
            assert time.monotonic() - t0 < timeout, f"only {len(self.frames)} frames after {timeout}s"
            await asyncio.sleep(0.02)


async def _connect(http, base, query=""):
    ws = await http.ws_connect(base + "/ws" + query, max_msg_size=0)
    client = Client(ws)
    hello = await client.reply()
    return client, hello


# --- protocol (no server) ---

@pytest.mark.parametrize("text,code", [
    ("{", "bad_json"), ("[1, 2]", "bad_json"), ('{"type": "fly"}', "unknown_type"),
    ('{"type": 5}', "unknown_type"), ('{"type": "start"}', "bad_field"),
    ('{"type": "start", "source": "world", "seed": "7"}', "bad_field"),
    ('{"type": "start", "source": "world", "seed": -1}', "bad_field"),
    ('{"type": "start", "source": "image", "image": "@@@"}', "bad_field"),
    ('{"type": "keys", "seq": 1, "actions": ["jump"]}', "bad_field"),
    ('{"type": "keys", "seq": true, "actions": []}', "bad_field"),
    ('{"type": "keys", "seq": 1, "actions": [], "drag": [NaN, 0]}', "bad_field"),
    ('{"type": "keys", "seq": 1, "actions": [], "pad": "' + "x" * 5000 + '"}', "too_large"),
])
def test_protocol_rejects_with_code(text, code):
    with pytest.raises(ProtocolError) as err:
        protocol.parse(text)
    assert err.value.code == code
    assert "expected" in str(err.value)


def test_protocol_accepts_and_packs():
    msg = protocol.parse('{"type": "keys", "seq": 3, "actions": ["forward", "turn_left"], "drag": [2, -1.5]}')
    assert msg == {"type": "keys", "seq": 3, "actions": frozenset({"forward", "turn_left"}), "drag": (2.0, -1.5)}
    png = _png(10, 6)
    msg = protocol.parse(json.dumps({"type": "start", "source": "image",
                                     "image": "data:image/png;base64," + base64.b64encode(png).decode()}))
    assert msg["image"] == png
    head, payload = protocol.unpack(protocol.pack({"type": "frame", "index": 4}, b"\x01\x02"))
    assert head == {"type": "frame", "index": 4} and payload == b"\x01\x02"


def test_decode_image_crops_to_the_video_aspect_and_resizes():
    from PIL import Image

    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, 40:80] = 255  # the centre third: what a square crop keeps
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    rgb = decode_image(buf.getvalue(), (64, 64))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert rgb[:, 8:56].min() > 200  # all white: the black sides were cropped away
    with pytest.raises(ProtocolError, match="start.image"):
        decode_image(b"\x89PNG not really", (64, 64))


def test_options_and_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with pytest.raises(ValueError, match="capacity"):
        ServerOptions(capacity=0)
    with pytest.raises(ValueError, match="token"):
        ServerOptions(token="short")


def test_controls_count_a_tap_shorter_than_a_latent_frame():
    from aapt_jax.serve.worker import Controls

    controls = Controls()
    controls.update(1, frozenset({"forward"}), (3.0, 0.0))
    controls.update(2, frozenset(), (1.0, -2.0))  # released before the next latent frame began
    assert controls.take() == (frozenset({"forward"}), (4.0, -2.0), 2)
    assert controls.take() == (frozenset(), (0.0, 0.0), 2)


def test_camera_rig_moves_along_its_heading_and_not_through_walls():
    from aapt_jax.data.world import make_world
    from aapt_jax.data.world_camera import CameraState, wall_distance
    from aapt_jax.serve.camera_rig import MOVE_PER_FRAME, CameraRig

    rig = CameraRig.free((64, 64), CameraState(0.0, 0.0, np.pi / 2))
    intrinsics, c2w = rig.advance(frozenset({"forward"}), (0.0, 0.0), 4)
    assert intrinsics.shape == (1, 5, 4) and c2w.shape == (1, 5, 4, 4) and c2w.dtype == np.float32
    np.testing.assert_allclose(c2w[0, :, 0, 3], MOVE_PER_FRAME * np.arange(5), atol=1e-6)  # yaw pi/2: +x
    np.testing.assert_allclose(c2w[0, :, 2, 3], 0.0, atol=1e-6)
    rig.advance(frozenset({"turn_left"}), (0.0, 0.0), 4)
    assert rig.state.yaw < np.pi / 2
    world = make_world(0)
    iz, ix = world.free_cells()[0]
    walker = CameraRig.in_world(world, CameraState((ix + 0.5) * 2.0, (iz + 0.5) * 2.0, 0.0), (64, 64))
    for _ in range(40):
        walker.advance(frozenset({"forward", "right"}), (0.0, 0.0), 4)
        assert wall_distance(world, walker.state.x, walker.state.z) >= 0.35 - 1e-9


# --- the running server ---

def _fuzz_messages(rng: random.Random):
    """200 malformed messages: (kind, payload) with kind 'text' or 'binary'."""
    good_keys = {"type": "keys", "seq": 10 ** 9, "actions": []}
    makers = [
        lambda: ("text", "{" * rng.randint(1, 50)),
        lambda: ("text", "[" * 100_000),  # deep nesting
        lambda: ("text", json.dumps(rng.choice([1, "x", None, [1], 3.5]))),
        lambda: ("text", json.dumps({"type": rng.choice(["fly", "START", "", 7, None, ["keys"]])})),
        lambda: ("text", json.dumps({"type": "start", "source": rng.choice(["moon", 3, None])})),
        lambda: ("text", json.dumps({"type": "start", "source": "world", "seed": rng.choice(["1", 1.5, -3, 2 ** 40])})),
        lambda: ("text", json.dumps({"type": "start", "source": "image", "image": rng.choice(["%%%", "", "AAAA"])})),
        lambda: ("text", json.dumps({"type": "keys", "seq": rng.choice(["a", None, 0, -5]), "actions": []})),
        lambda: ("text", json.dumps({"type": "keys", "seq": 5, "actions": rng.choice(["forward", [1], ["up"] * 20])})),
        lambda: ("text", json.dumps({"type": "keys", "seq": 5, "actions": [], "drag": rng.choice([[1], "x", [1e9, 0]])})),
        lambda: ("text", json.dumps(dict(good_keys, seq=rng.randint(1, 10 ** 6)))),  # keys before start
        lambda: ("text", json.dumps({"type": rng.choice(["reset", "stop", "export"])})),  # nothing to act on
        lambda: ("text", json.dumps(dict(good_keys, pad="x" * rng.randint(5000, 200_000)))),  # oversized control
        lambda: ("binary", rng.randbytes(rng.randint(1, 4096))),
        lambda: ("text", "\x00\ufffd" * rng.randint(1, 100)),
    ]
    msgs = [rng.choice(makers)() for _ in range(195)]
    huge = "x" * (protocol.MAX_MESSAGE_BYTES + 1000)
    msgs += [("text", huge), ("binary", b"\xff" * (4 << 20)),
             ("text", json.dumps({"type": "start", "source": "image", "image": "A" * (12 << 20)})),
             ("text", '{"type": "start", "source": "image", "image": "' + "B" * (3 << 20)),
             ("text", json.dumps({"type": "start", "source": "image",
                                  "image": base64.b64encode(rng.randbytes(1 << 20)).decode()}))]
    rng.shuffle(msgs)
    return msgs


def test_fuzz_200_malformed_messages_while_another_client_streams(url):
    async def main():
        async with aiohttp.ClientSession() as http:
            viewer, _ = await _connect(http, url)
            await viewer.ws.send_json({"type": "start", "source": "world", "seed": 1})
            assert (await viewer.reply())["type"] == "started"
            await viewer.wait_frames(8)
            fuzzer, _ = await _connect(http, url)
            t0 = time.monotonic()
            n0 = len(viewer.frames)
            codes = []
            for kind, payload in _fuzz_messages(random.Random(0)):
                await (fuzzer.ws.send_str(payload) if kind == "text" else fuzzer.ws.send_bytes(payload))
                reply = await fuzzer.reply()
                assert reply["type"] == "error", reply
                codes.append(reply["code"])
                await asyncio.sleep(0.01)  # spread over a few seconds of the viewer's stream
            elapsed = time.monotonic() - t0
            received = len(viewer.frames) - n0
            arrivals = [t for t, _, _ in viewer.frames[n0:]]
            # The fuzzed connection is still usable: it can start its own stream.
            await fuzzer.ws.send_json({"type": "start", "source": "world", "seed": 2})
            assert (await fuzzer.reply())["type"] == "started"
            await fuzzer.wait_frames(5)
            await fuzzer.ws.close()
            await viewer.ws.close()
            async with http.get(url + "/healthz") as resp:
                health = await resp.json()
            return codes, elapsed, received, arrivals, health

    codes, elapsed, received, arrivals, health = asyncio.run(main())
    assert len(codes) == 200
    assert {"bad_json", "unknown_type", "bad_field", "out_of_order", "too_large", "binary"} <= set(codes)
    # The viewer kept its video rate while the other client was fuzzing.
    assert elapsed > 1.0 and received >= 0.6 * 24 * elapsed, (received, elapsed)
    assert max(np.diff(arrivals)) < 1.0
    assert health["status"] == "ok"


def test_over_the_hard_limit_closes_only_that_connection(url):
    async def main():
        async with aiohttp.ClientSession() as http:
            client, _ = await _connect(http, url)
            try:
                await client.ws.send_bytes(b"\x00" * (3 * protocol.MAX_MESSAGE_BYTES))
            except ConnectionError:
                pass  # the server may close before the whole message is written
            await asyncio.wait_for(client.task, 30)
            code = client.ws.close_code
            other, hello = await _connect(http, url)
            await other.ws.close()
            return code, hello

    code, hello = asyncio.run(main())
    assert code in (1009, 1006) and hello["type"] == "hello"


def test_out_of_order_and_sequence(url):
    async def main():
        async with aiohttp.ClientSession() as http:
            c, _ = await _connect(http, url)
            await c.ws.send_json({"type": "keys", "seq": 1, "actions": []})
            before_start = await c.reply()
            await c.ws.send_json({"type": "start", "source": "world", "seed": 3})
            assert (await c.reply())["type"] == "started"
            await c.ws.send_json({"type": "start", "source": "world", "seed": 3})
            twice = await c.reply()
            await c.ws.send_json({"type": "keys", "seq": 5, "actions": ["forward"]})
            await c.ws.send_json({"type": "keys", "seq": 5, "actions": []})
            repeated = await c.reply()
            await c.ws.send_json({"type": "stop"})
            stopped = await c.reply()
            await c.ws.close()
            return before_start, twice, repeated, stopped

    before_start, twice, repeated, stopped = asyncio.run(main())
    assert before_start["code"] == "out_of_order" and "start first" in before_start["message"]
    assert twice["code"] == "out_of_order"
    assert repeated["code"] == "out_of_order" and "expected > 5" in repeated["message"]
    assert stopped["type"] == "stopped"


def test_capacity_refuses_extra_clients_and_disconnect_frees_a_slot(url):
    async def main():
        async with aiohttp.ClientSession() as http:
            a, _ = await _connect(http, url)
            await a.ws.send_json({"type": "start", "source": "world", "seed": 4})
            b, _ = await _connect(http, url)
            third = await http.ws_connect(url + "/ws")
            refused = await third.receive_json()
            await third.receive()
            refused_code = third.close_code
            await a.ws.close()  # mid-stream
            for _ in range(100):
                async with http.get(url + "/healthz") as resp:
                    if (await resp.json())["streams"] == 1:
                        break
                await asyncio.sleep(0.05)
            c, hello = await _connect(http, url)
            await b.ws.close()
            await c.ws.close()
            return refused, refused_code, hello

    refused, refused_code, hello = asyncio.run(main())
    assert refused["code"] == "capacity" and "capacity (2 streams)" in refused["message"]
    assert refused_code == 1013
    assert hello["type"] == "hello"


def test_token_and_origin(engine):
    async def main(base):
        async with aiohttp.ClientSession() as http:
            bad = await http.ws_connect(base + "/ws?token=wrong-token")
            refused = await bad.receive_json()
            await bad.receive()
            good, hello = await _connect(http, base, "?token=s3cret-token")
            await good.ws.close()
            try:
                await http.ws_connect(base + "/ws?token=s3cret-token", headers={"Origin": "http://evil.example"})
                cross_site = None
            except aiohttp.WSServerHandshakeError as err:
                cross_site = err.status
            return refused, bad.close_code, hello, cross_site

    with BackgroundServer(engine, ServerOptions(port=0, token="s3cret-token")) as base:
        refused, code, hello, cross_site = asyncio.run(main(base))
    assert refused["code"] == "unauthorized" and code == 1008
    assert hello["type"] == "hello"
    assert cross_site == 403


def test_image_to_video_and_export(url, tmp_path):
    async def main():
        async with aiohttp.ClientSession() as http:
            c, _ = await _connect(http, url)
            image = base64.b64encode(_png(200, 120, seed=5)).decode()
            await c.ws.send_json({"type": "start", "source": "image", "image": image})
            started = await c.reply()
            await c.wait_frames(9)
            await c.ws.send_json({"type": "export"})
            for _ in range(200):
                mp4 = [p for _, h, p in c.frames if h["type"] == "mp4"]
                if mp4:
                    break
                await asyncio.sleep(0.05)
            await c.ws.close()
            return started, c.frames, mp4

    started, frames, mp4 = asyncio.run(main())
    assert started["source"] == "image"
    heads = [h for _, h, _ in frames if h["type"] == "frame"]
    assert heads[0]["latent"] == 0 and heads[1]["latent"] == 1 and heads[0]["height"] == 64
    assert all(len(p) == 64 * 64 * 3 for _, h, p in frames if h["type"] == "frame")
    assert mp4, "no mp4 reply"
    path = tmp_path / "stream.mp4"
    path.write_bytes(mp4[0])
    info = probe_video(path)
    assert (info.height, info.width) == (64, 64) and info.fps == pytest.approx(24)


def test_latency_bench_runs_quick(engine):
    records = {r["name"]: r for r in bench.load("latency").run(named_config, quick=True)}
    for name in ("startup_compile_s", "first_frame_ms", "key_to_frame_ms_p50", "key_to_frame_ms_p99",
                 "frame_interval_ms_p50", "step_ms_p50", "decode_ms_p50", "sustained_video_fps"):
        assert np.isfinite(records[name]["value"]), name
    assert records["key_to_frame_ms_p50"]["samples"] >= 3
    assert records["sustained_video_fps"]["device"] and records["sustained_video_fps"]["config"] == "tiny_world"


def test_binary_serves_and_stops_cleanly_on_sigterm():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "launch.serve", "--port=0", "--capacity=1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, base = [], None
        deadline = time.monotonic() + 240
        while base is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            log.append(line)
            if "serving on " in line:
                base = line.split("serving on ")[1].split()[0].rstrip("/")
        assert base, "".join(log)
        text = "".join(log)
        # No flags: the tiny world's shipped VAE, and its shipped generator where there is one
        # (builtin.sources; random weights, said loudly, where there is none).
        generator, vae = builtin.sources(named_config("tiny_world"))
        assert vae == "builtin:tiny_world/vae" and vae in text and "compiled in" in text
        assert ("RANDOMLY INITIALISED" in text) == (generator == ""), text

        async def stream_then_signal():
            async with aiohttp.ClientSession() as http:
                c, hello = await _connect(http, base)
                await c.ws.send_json({"type": "start", "source": "world", "seed": 0})
                await c.wait_frames(5)
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(c.task, 30)
                return hello, c.ws.close_code

        hello, close_code = asyncio.run(stream_then_signal())
        rc = proc.wait(30)
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert hello["random_weights"] is (generator == "") and hello["compile_s"] > 0
    assert close_code == 1001
    assert rc == 0, rest
    assert "stopped" in rest


def test_engine_loads_stage_exports(tmp_path):
    import jax
    from flax import nnx

    from aapt_jax import configs
    from aapt_jax.io import checkpoint as ckpt
    from aapt_jax.model import vae as vae_lib
    from aapt_jax.model.dit import create
    from aapt_jax.model.vae_config import get_vae_config
    from aapt_jax.serve.engine import Engine

    config = named_config("tiny_world")
    cfg = configs.model_config(config)
    _, params = create(cfg, 3)
    ckpt.save_export(str(tmp_path / "adv"), nnx.to_pure_dict(params), {"stage": "adversarial", "model": cfg.to_dict()})
    _, vae_params = vae_lib.init_vae(get_vae_config(config.vae.preset), 4)
    ckpt.save_export(str(tmp_path / "vae"), nnx.to_pure_dict(vae_params),
                     {"stage": "vae", "vae_preset": config.vae.preset})
    engine = Engine(config, str(tmp_path / "adv"), str(tmp_path / "vae"))
    info = engine.describe()
    assert info["random_weights"] is False and "adversarial" in info["generator"]
    saved, loaded = jax.tree.leaves(nnx.to_pure_dict(params)), jax.tree.leaves(engine.params)
    assert all(np.array_equal(a, b) for a, b in zip(saved, loaded))
    with pytest.raises(ValueError, match="--checkpoint"):
        Engine(config, str(tmp_path / "missing"))


@pytest.mark.parametrize("flag,message", [("--capacity=0", "capacity: expected an int >= 1"),
                                          ("--host=no-such-host.invalid", "--host: expected an address")])
def test_binary_rejects_bad_flags_before_compiling(flag, message):
    proc = subprocess.run([sys.executable, "-m", "launch.serve", flag, "--port=0"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 2  # refused (aapt_jax.cli)
    assert f"error: {message}" in proc.stderr and "compiling" not in proc.stderr


def test_a_failing_stream_is_reported_and_the_server_goes_on(url, engine, monkeypatch):
    def broken(*args, **kwargs):
        raise FloatingPointError("NaN in the latent frame")

    async def main():
        async with aiohttp.ClientSession() as http:
            c, _ = await _connect(http, url)
            with monkeypatch.context() as m:
                m.setattr(engine, "next", broken)
                await c.ws.send_json({"type": "start", "source": "world", "seed": 0})
                assert (await c.reply())["type"] == "started"
                failed = await c.reply()
            await c.ws.send_json({"type": "reset"})  # the connection is still usable
            restarted = await c.reply()
            await c.wait_frames(6)
            await c.ws.close()
            return failed, restarted

    failed, restarted = asyncio.run(main())
    assert failed["code"] == "internal" and "FloatingPointError" in failed["message"]
    assert restarted["type"] == "started"
