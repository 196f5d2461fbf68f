"""Interactive latency of the streaming server, measured by a real WebSocket client.

The server (:mod:`aapt_jax.serve`) runs on loopback in this process with the tiny world
(randomly initialised weights: timing does not depend on them); the client connects over
TCP, starts a world and, for ``duration`` seconds, presses and releases keys at random
moments while it receives frames. Names:

  startup_compile_s       compiling the step and decode before serving
  first_frame_ms          start (or reset) request to the first frame; median of 4
  frame_interval_ms_p50/_p99   between consecutive frames received
  key_to_frame_ms_p50/_p99     sending a control to receiving the first frame generated with it
  step_ms_p50, decode_ms_p50   DiT step and VAE decode per latent frame (server-side)
  sustained_video_fps     frame arrival rate over the whole ``duration``: (frames - 1) / (last - first)

Every line carries the device, platform, model config and CPU count. The same suite runs
unchanged on an accelerator (jax picks the default backend).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time

import aiohttp
import numpy as np

from aapt_jax.configs import Named
from aapt_jax.serve import protocol
from aapt_jax.serve.app import BackgroundServer, ServerOptions
from aapt_jax.serve.engine import cached_engine

CONFIG = "tiny_world"


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs, np.float64), q)) if xs else float("nan")


class _Client:
    """One WebSocket client that tracks frames and pending controls."""

    def __init__(self, ws):
        self.ws = ws
        self.stream = 0
        self.arrivals, self.latencies, self.step_ms, self.decode_ms = [], [], [], []
        self.pending = {}
        self.seq = 0
        self.first_frame = asyncio.get_running_loop().create_future()

    async def send_keys(self, actions):
        self.seq += 1
        self.pending[self.seq] = time.perf_counter()
        await self.ws.send_json({"type": "keys", "seq": self.seq, "actions": list(actions)})

    async def receive(self):
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = msg.json()
                if data["type"] == "started":
                    self.stream = data["stream"]
                elif data["type"] == "error":
                    raise RuntimeError(f"server error: {data}")
                continue
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            now = time.perf_counter()
            head, _ = protocol.unpack(msg.data)
            if head.get("type") != "frame" or head["stream"] != self.stream:
                continue
            if not self.first_frame.done():
                self.first_frame.set_result(now)
            self.arrivals.append(now)
            if head["latent"] > 0 and head["index"] % 4 == 1:  # once per latent frame
                self.step_ms.append(head["step_ms"])
                self.decode_ms.append(head["decode_ms"])
            for seq in [s for s in self.pending if s <= head["ctrl_seq"]]:
                self.latencies.append(1e3 * (now - self.pending.pop(seq)))

    async def restart(self, message) -> float:
        """Send start/reset; ms until the new stream's first frame."""
        self.first_frame = asyncio.get_running_loop().create_future()
        self.stream = -1
        t0 = time.perf_counter()
        await self.ws.send_json(message)
        return 1e3 * (await asyncio.wait_for(self.first_frame, 60) - t0)


async def _measure(url: str, duration: float, seed: int = 0) -> dict:
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url + "/ws", max_msg_size=0) as ws:
            hello = await ws.receive_json()
            client = _Client(ws)
            reader = asyncio.create_task(client.receive())
            first = [await client.restart({"type": "start", "source": "world", "seed": seed})]
            client.arrivals.clear()
            t_begin = time.perf_counter()
            held = False
            while time.perf_counter() - t_begin < duration:
                # Random phase against the generation schedule: uniform over a latent period and more.
                await asyncio.sleep(rng.uniform(0.2, 0.6))
                held = not held
                await client.send_keys(["forward", "turn_left"] if held else [])
            t_end = time.perf_counter()
            frames = [t for t in client.arrivals if t <= t_end]
            intervals = 1e3 * np.diff(frames)
            fps = (len(frames) - 1) / (frames[-1] - frames[0]) if len(frames) > 1 else 0.0
            result = dict(hello=hello, fps=fps, intervals=intervals.tolist(),
                          latencies=list(client.latencies), step=list(client.step_ms),
                          decode=list(client.decode_ms), unanswered=len(client.pending))
            for _ in range(3):
                await asyncio.sleep(0.3)
                first.append(await client.restart({"type": "reset"}))
            result["first_frame"] = first
            reader.cancel()
            return result


def run(named: Named, quick: bool = False):
    engine = cached_engine(named(CONFIG))
    duration = 3.0 if quick else 60.0
    with BackgroundServer(engine, ServerOptions(host="127.0.0.1", port=0, capacity=2)) as url:
        r = asyncio.run(_measure(url, duration))
    info = r["hello"]
    context = dict(config=info["config"], device=info["device"], platform=info["platform"],
                   video_hw=info["video_hw"], video_fps=info["fps"], random_weights=info["random_weights"],
                   cpu_count=os.cpu_count(), duration_s=duration, quick=quick)
    yield dict(name="startup_compile_s", value=engine.compile_s, unit="s", **context)
    yield dict(name="first_frame_ms", value=statistics.median(r["first_frame"]), unit="ms",
               samples=[round(x, 1) for x in r["first_frame"]], **context)
    for q in (50, 99):
        yield dict(name=f"frame_interval_ms_p{q}", value=_pct(r["intervals"], q), unit="ms",
                   samples=len(r["intervals"]), **context)
    for q in (50, 99):
        yield dict(name=f"key_to_frame_ms_p{q}", value=_pct(r["latencies"], q), unit="ms",
                   samples=len(r["latencies"]), unanswered=r["unanswered"], **context)
    yield dict(name="step_ms_p50", value=_pct(r["step"], 50), unit="ms", p99=_pct(r["step"], 99),
               samples=len(r["step"]), **context)
    yield dict(name="decode_ms_p50", value=_pct(r["decode"], 50), unit="ms", p99=_pct(r["decode"], 99),
               samples=len(r["decode"]), **context)
    yield dict(name="sustained_video_fps", value=r["fps"], unit="fps", **context)
