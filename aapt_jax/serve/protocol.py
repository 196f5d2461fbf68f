"""The WebSocket protocol between the page (or any client) and the server.

Client -> server: JSON text messages, one object each, ``type`` first:

    {"type": "start", "source": "world", "seed": 7}                   a procedural world
    {"type": "start", "source": "image", "image": "<base64 or data: URL of a PNG/JPEG>"}
    {"type": "keys", "seq": 12, "actions": ["forward", "turn_left"], "drag": [dx, dy]}
    {"type": "reset"}      restart from the same first frame (same seed: same video)
    {"type": "stop"}       end the stream (the connection stays open)
    {"type": "export"}     the frames streamed so far, as one MP4 (binary reply)

``keys`` carries the actions held now and the mouse drag (canvas pixels) since the last
message; ``seq`` must increase (per connection). The control of the next latent frame is
built from every action held at any time during the current one.

Server -> client: JSON text ``{"type": "hello" | "started" | "stopped" | "error", ...}`` and
binary messages ``[uint32 little-endian header length][header JSON][payload]`` with header
``{"type": "frame", ...}`` (payload: raw RGB ``H * W * 3`` bytes) or ``{"type": "mp4"}``.
Every malformed message gets an ``error`` reply (``code``, ``message``) and changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct

from aapt_jax.serve.camera_rig import ACTIONS

MAX_CONTROL_BYTES = 4096  # a keys/reset/stop/export message
MAX_IMAGE_BYTES = 8 << 20  # decoded upload
MAX_MESSAGE_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 4096  # base64 of the largest upload, plus the envelope
MAX_DRAG_PIXELS = 10_000.0
MAX_SEED = 2 ** 31 - 1
TYPES = ("start", "keys", "reset", "stop", "export")


class ProtocolError(ValueError):
    """A message the server answers with an error and otherwise ignores."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code

    def reply(self) -> dict:
        return {"type": "error", "code": self.code, "message": str(self)}


def _field(msg: dict, name: str, kinds, expected: str, required: bool = True):
    if name not in msg:
        if required:
            raise ProtocolError("bad_field", f"{msg['type']}.{name}: expected {expected}, got nothing")
        return None
    value = msg[name]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ProtocolError("bad_field", f"{msg['type']}.{name}: expected {expected}, got {_short(value)}")
    return value


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse(text: str) -> dict:
    """A client's text message -> a validated dict (see the module docstring).

    Raises ProtocolError (code ``too_large``, ``bad_json``, ``bad_field`` or ``unknown_type``).
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message: expected at most {MAX_MESSAGE_BYTES} bytes, got {size}")
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ProtocolError("bad_json", f"message: expected a JSON object, got invalid JSON ({err})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", f"message: expected a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if kind not in TYPES:
        raise ProtocolError("unknown_type", f"type: expected one of {list(TYPES)}, got {_short(kind)}")
    if kind != "start" and size > MAX_CONTROL_BYTES:
        raise ProtocolError("too_large", f"{kind}: expected at most {MAX_CONTROL_BYTES} bytes, got {size}")
    if kind == "start":
        return _parse_start(msg)
    if kind == "keys":
        return _parse_keys(msg)
    return {"type": kind}


def _parse_start(msg: dict) -> dict:
    source = _field(msg, "source", (str,), "'world' or 'image'")
    if source == "world":
        seed = _field(msg, "seed", (int,), f"an int in [0, {MAX_SEED}]", required=False)
        seed = 0 if seed is None else seed
        if not 0 <= seed <= MAX_SEED:
            raise ProtocolError("bad_field", f"start.seed: expected an int in [0, {MAX_SEED}], got {seed}")
        return {"type": "start", "source": "world", "seed": seed}
    if source == "image":
        data = _field(msg, "image", (str,), "a base64 PNG or JPEG (optionally a data: URL)")
        if data.startswith("data:"):
            data = data.partition(",")[2]
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("bad_field", "start.image: expected base64 data, got characters outside base64") from None
        if not raw:
            raise ProtocolError("bad_field", "start.image: expected a PNG or JPEG, got 0 bytes")
        if len(raw) > MAX_IMAGE_BYTES:
            raise ProtocolError("too_large", f"start.image: expected at most {MAX_IMAGE_BYTES} bytes, got {len(raw)}")
        return {"type": "start", "source": "image", "image": raw, "seed": 0}
    raise ProtocolError("bad_field", f"start.source: expected 'world' or 'image', got {_short(source)}")


def _parse_keys(msg: dict) -> dict:
    seq = _field(msg, "seq", (int,), "an int >= 1")
    if seq < 1:
        raise ProtocolError("bad_field", f"keys.seq: expected an int >= 1, got {seq}")
    actions = _field(msg, "actions", (list,), f"a list of {list(ACTIONS)}")
    if len(actions) > len(ACTIONS) or not all(isinstance(a, str) and a in ACTIONS for a in actions):
        raise ProtocolError("bad_field", f"keys.actions: expected a list of {list(ACTIONS)}, got {_short(actions)}")
    drag = _field(msg, "drag", (list,), "[dx, dy] in pixels", required=False) or [0, 0]
    ok = (len(drag) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and abs(v) <= MAX_DRAG_PIXELS for v in drag))
    if not ok:
        raise ProtocolError("bad_field", f"keys.drag: expected [dx, dy], each a number within "
                            f"+-{MAX_DRAG_PIXELS:g}, got {_short(drag)}")
    return {"type": "keys", "seq": seq, "actions": frozenset(actions), "drag": (float(drag[0]), float(drag[1]))}


def pack(header: dict, payload: bytes = b"") -> bytes:
    """A binary server message: ``[uint32 LE len][header JSON][payload]``."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + payload


def unpack(data: bytes) -> tuple[dict, bytes]:
    """Inverse of :func:`pack` (for clients)."""
    (n,) = struct.unpack_from("<I", data)
    return json.loads(data[4:4 + n]), data[4 + n:]
