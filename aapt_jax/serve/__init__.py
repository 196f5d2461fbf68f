"""The interactive streaming server behind ``python -m launch.serve``.

``engine`` (weights and the jitted step/decode), ``camera_rig`` (keys -> camera path),
``worker`` (one thread per stream, paced at the video rate), ``protocol`` (the WebSocket
messages), ``session`` (one client) and ``app`` (the aiohttp application); the page is
``static/`` (plain HTML/JS/CSS, no build step).
"""
