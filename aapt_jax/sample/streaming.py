"""Jitted streaming generation: ``init`` once, then one ``step`` per latent frame.

    sampler = StreamingSampler(cfg, graphdef)
    state = sampler.init(params, first_frame, text)            # [B,1,h,w,C], [B,Lt,text_dim]
    state, frame = sampler.step(params, state, control, key)   # one forward pass, 1 NFE
    state, frames = sampler.rollout(params, state, controls, key, num_frames=K)  # lax.scan

The generator is one-step: at position ``p`` it sees pure noise ``eps`` (t = 1000), the
recycled frame ``p`` and the control of frame ``p+1``, predicts ``v = eps - x0`` and returns
``x0 = eps - v``. The KV cache (sink + ring buffer, see :mod:`aapt_jax.model.kv_cache`)
keeps every step the same cost and memory however long the video runs. All functions are
pure; gradients flow through the cache (the student-forcing stage differentiates
:func:`generate_frame` under ``lax.scan``).

Meshes. The sampler runs on a device mesh (:mod:`aapt_jax.parallel.mesh`) with logical
rules: the one passed in, else the ``use_mesh`` active when it is built, else a mesh of the
one default device; the same code path either way. Its jitted functions trace under that
mesh and have explicit in/out shardings: params by their logical axes, inputs, frames and
the recycled frame by batch, the KV cache as :func:`aapt_jax.parallel.ulysses.cache_shardings`
(split by heads over ``context``). With ``context > 1`` one stream runs across the context
devices (Ulysses context parallelism: tokens split, all-to-alls around self-attention).
The functions below are mesh-agnostic: traced under ``use_mesh`` they follow its mesh.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec as P

from aapt_jax.model import kv_cache as kvc
from aapt_jax.model.config import DiTConfig
from aapt_jax.model.dit import WanDiT
from aapt_jax.parallel import sharding as shd
from aapt_jax.parallel import ulysses
from aapt_jax.parallel.mesh import make_mesh


@struct.dataclass
class StreamState:
    """Everything a stream carries between steps.

    cache: :class:`KVCache`; prev_frame: ``[B, 1, h, w, C]`` the frame to recycle;
    position: int32 scalar, index of the frame the next step's forward pass occupies.
    """

    cache: kvc.KVCache
    prev_frame: jax.Array
    position: jax.Array


def check_inputs(cfg: DiTConfig, first_frame, text, cache_frames: int | None = None):
    """Shape checks before tracing; each failure names the field, expected and given."""
    if not cfg.causal:
        raise ValueError("model.causal: expected True for streaming (a base model has no KV-cache "
                         "semantics), got False")
    shape = tuple(first_frame.shape)
    if len(shape) != 5 or shape[1] != 1 or shape[-1] != cfg.latent_channels:
        raise ValueError(f"first_frame: expected [B, 1, h, w, {cfg.latent_channels}], got {list(shape)}")
    _, _, h, w, _ = shape
    ph, pw = cfg.patch_size[1:]
    if h % ph or w % pw:
        raise ValueError(f"first_frame: latent height/width must be multiples of the patch size "
                         f"{(ph, pw)}, got {(h, w)}")
    if len(text.shape) != 3 or text.shape[0] != shape[0] or text.shape[-1] != cfg.text_dim:
        raise ValueError(f"text: expected [{shape[0]}, Lt, {cfg.text_dim}], got {list(text.shape)}")
    if cache_frames is not None and cache_frames < cfg.window:
        raise ValueError(f"cache_frames: expected >= model.window ({cfg.window}), got {cache_frames}")


STREAM_DTYPES = ("float32", "bfloat16")  # the dtypes of the model configs; frames keep the first frame's


def check_values(first_frame, text) -> None:
    """Dtype and finiteness of concrete stream inputs (a NaN first frame would stream NaN
    frames forever, a float16 one float16 frames); each failure names the field."""
    for name, x in (("first_frame", first_frame), ("text", text)):
        if isinstance(x, jax.core.Tracer):
            continue
        dtype = jnp.dtype(x.dtype)
        if dtype.name not in STREAM_DTYPES:
            raise ValueError(f"{name}: expected dtype float32 or bfloat16, got {dtype.name}")
        finite = jnp.isfinite(x)
        if not bool(jnp.all(finite)):
            raise ValueError(f"{name}: expected finite values, got {int(finite.size - jnp.sum(finite))} "
                             f"NaN/Inf of {finite.size}")


def check_control(cfg: DiTConfig, control, batch, h, w, frames=None):
    if cfg.control_channels == 0:
        if control is not None:
            raise ValueError(f"control: the model takes no control (control_channels=0), got shape "
                             f"{list(control.shape)}")
        return
    expected = [batch, 1 if frames is None else frames, h, w, cfg.control_channels]
    if control is None or list(control.shape) != expected:
        raise ValueError(f"control: expected {expected}, got {None if control is None else list(control.shape)}")


def init_state(model: WanDiT, first_frame, text, cache_frames: int | None = None) -> StreamState:
    """Empty cache with the text keys/values prefilled; ``first_frame`` waits to be recycled."""
    cfg = model.cfg
    B, _, h, w, _ = first_frame.shape
    text_k, text_v = model.text_kv(text)
    S = (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
    cache = kvc.empty_cache(cfg.num_layers, B, cache_frames or cfg.window, S, cfg.num_heads, cfg.head_dim,
                            text_k, text_v, jnp.dtype(cfg.dtype))
    if shd.active_mesh() is not None:
        # Placed as the cached steps use it (by heads over the context axis): no resharding later.
        cache = jax.lax.with_sharding_constraint(cache, ulysses.cache_shardings(cache))
    return StreamState(cache=cache, prev_frame=first_frame, position=jnp.zeros((), jnp.int32))


def generate_frame(model: WanDiT, state: StreamState, noise, control=None, *, sigma: float = 1.0,
                   detach_recycled: bool = False):
    """One forward pass: the next latent frame from ``noise`` ``[B,1,h,w,C]`` at ``sigma``.

    ``detach_recycled`` stops the gradient through the recycled input (student forcing);
    the gradient through the KV cache is kept either way.
    Returns (new state, frame ``[B, 1, h, w, C]``).
    """
    B = noise.shape[0]
    t = jnp.full((B,), 1000.0 * sigma, jnp.float32)
    recycled = jax.lax.stop_gradient(state.prev_frame) if detach_recycled else state.prev_frame
    cache, v = model.cached_forward(state.cache, state.position, noise, t, recycled=recycled, control=control)
    frame = (noise.astype(jnp.float32) - sigma * v.astype(jnp.float32)).astype(noise.dtype)
    return StreamState(cache=cache, prev_frame=frame, position=state.position + 1), frame


def rollout_frames(model: WanDiT, state: StreamState, noise, controls=None, *, detach_recycled=False):
    """``K`` generated frames under ``lax.scan``.

    Args:
      noise: ``[B, K, h, w, C]``, one standard normal draw per frame.
      controls: ``[B, K, h, w, Cc]`` (control of each generated frame) or None.
    Returns:
      (state, frames ``[B, K, h, w, C]``).
    """

    def body(st, xs):
        eps, control = xs
        st, frame = generate_frame(model, st, eps[:, None], None if control is None else control[:, None],
                                   detach_recycled=detach_recycled)
        return st, frame[:, 0]

    xs = (jnp.moveaxis(noise, 1, 0), None if controls is None else jnp.moveaxis(controls, 1, 0))
    state, frames = jax.lax.scan(body, state, xs)
    return state, jnp.moveaxis(frames, 0, 1)


def replay_frames(model: WanDiT, state: StreamState | None, first_frame, noise, frames, controls=None, text=None):
    """The frames of a rollout with a detached recycled input, recomputed in ONE parallel pass.

    Because each step's recycled input is detached, a rollout's frames and their gradient
    through the KV cache equal those of one block-causal forward over the same noise with
    the rollout's own frames (detached) as the recycled inputs: frame ``p + 1`` attends to
    the keys/values that the cache would hold for frames ``<= p``, computed here from the
    same inputs. So student forcing can roll out without gradient (no residuals) and
    differentiate this pass, whose saved activations are those of one teacher-forcing step
    (``O(K)``) instead of a scan's ``O(K x window)`` cache copies.

    Args:
      state: None to start from ``first_frame`` (a fresh stream; ``text`` required), or the
        state the rollout started from (a continued stream: its cache is a fixed prefix that
        the new frames attend to; its ``prev_frame`` is the first recycled input).
      first_frame: ``[B, 1, h, w, C]``, used when ``state`` is None.
      noise: ``[B, K, h, w, C]``, the rollout's noise.
      frames: ``[B, K, h, w, C]``, the rollout's frames (only ``frames[:, :-1]`` is read, as
        the recycled inputs; treated as constants).
      controls: ``[B, K, h, w, Cc]`` or None.
    Returns:
      frames ``[B, K, h, w, C]``, differentiable w.r.t. the model's params.
    """
    B = noise.shape[0]
    t = jnp.full((B,), 1000.0, jnp.float32)
    start = first_frame if state is None else state.prev_frame
    recycled = jax.lax.stop_gradient(jnp.concatenate([start, frames[:, :-1]], axis=1).astype(noise.dtype))
    if state is None:
        v = model(noise, t, text, recycled=recycled, control=controls)
    else:
        _, v = model.cached_forward(state.cache, state.position, noise, t, recycled=recycled, control=controls)
    return (noise.astype(jnp.float32) - v.astype(jnp.float32)).astype(noise.dtype)


def rollout_noise(key, state: StreamState, num_frames: int):
    """The noise :meth:`StreamingSampler.rollout` draws: ``[B, K, h, w, C]``."""
    B, _, h, w, C = state.prev_frame.shape
    return jax.random.normal(key, (B, num_frames, h, w, C), state.prev_frame.dtype)


def _batch_sharding(x, mesh, rules, name):
    """Split by batch (dim 0) as the rules say; None for an absent (None) input."""
    if x is None:
        return None
    return shd.array_sharding(x.shape, ("batch",) + (None,) * (len(x.shape) - 1), mesh, rules, name=name)


def state_shardings(state: StreamState, mesh, rules=shd.DEFAULT_RULES) -> StreamState:
    """A :class:`StreamState` of NamedShardings for ``state`` (concrete or abstract): the cache
    by :func:`aapt_jax.parallel.ulysses.cache_shardings`, the recycled frame by batch, the
    position replicated."""
    return StreamState(cache=ulysses.cache_shardings(state.cache, mesh=mesh, rules=rules),
                       prev_frame=_batch_sharding(state.prev_frame, mesh, rules, "prev_frame"),
                       position=NamedSharding(mesh, P()))


def _signature(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(x.shape), x.dtype) for x in leaves)


def _placed(leaves, shardings) -> bool:
    """Whether every array of ``leaves`` is already laid out as ``shardings`` says."""
    return all(isinstance(x, jax.Array) and (x.sharding == s or x.sharding.is_equivalent_to(s, x.ndim))
               for x, s in zip(leaves, shardings))


def _conform(tree, shardings):
    """``tree`` (state, inputs) moved to ``shardings`` (same structure) where it is not there:
    jit refuses an argument split differently from its in_shardings."""
    leaves = jax.tree_util.tree_leaves(tree)
    return tree if _placed(leaves, jax.tree_util.tree_leaves(shardings)) else jax.device_put(tree, shardings)


class StreamingSampler:
    """Jitted ``init``/``step``/``rollout`` for one model graph (see module docstring).

    Args:
      cfg, graphdef: the generator.
      cache_frames: ring slots of the KV cache (default: the window).
      mesh, rules: where the stream runs (default: the active ``use_mesh``, else a mesh of the
        default device; rules default to that ``use_mesh``'s, else
        :data:`aapt_jax.parallel.sharding.DEFAULT_RULES`).
    """

    def __init__(self, cfg: DiTConfig, graphdef: nnx.GraphDef, cache_frames: int | None = None, *,
                 mesh=None, rules=None):
        self.cfg = cfg
        self.graphdef = graphdef
        self.cache_frames = cache_frames
        active = shd.active_mesh()
        if mesh is None:
            mesh = active[0] if active is not None else make_mesh(devices=jax.devices()[:1])
        if rules is None:
            rules = active[1] if active is not None and active[0] is mesh else shd.DEFAULT_RULES
        self.mesh, self.rules = mesh, dict(rules)
        context = dict(mesh.shape).get(ulysses.CONTEXT_AXIS, 1)
        if cfg.num_heads % context:
            raise ValueError(f"model.num_heads: expected a multiple of the mesh's context={context} "
                             f"(Ulysses splits heads over it), got {cfg.num_heads}")
        self._jits: dict = {}
        self._params = None  # (signature, shardings, their leaves) of the params last seen

    def _model(self, params) -> WanDiT:
        return nnx.merge(self.graphdef, params)

    # The traced functions: under the sampler's mesh, so the model's constraints and the
    # Ulysses path (context > 1) see it.

    def _init_impl(self, params, first_frame, text):
        with shd.use_mesh(self.mesh, self.rules):
            return init_state(self._model(params), first_frame, text, self.cache_frames)

    def _step_impl(self, params, state, control, key):
        with shd.use_mesh(self.mesh, self.rules):
            noise = jax.random.normal(key, state.prev_frame.shape, state.prev_frame.dtype)
            return generate_frame(self._model(params), state, noise, control)

    def _rollout_impl(self, params, state, controls, key, num_frames):
        with shd.use_mesh(self.mesh, self.rules):
            return rollout_frames(self._model(params), state, rollout_noise(key, state, num_frames), controls)

    # Shardings and jitted functions, one per input signature (shardings depend on shapes:
    # a batch the mesh does not divide is split over fewer axes).

    def _param_entry(self, params, leaves=None, treedef=None):
        if leaves is None:
            leaves, treedef = jax.tree_util.tree_flatten(params)
        signature = (treedef, tuple((tuple(x.shape), x.dtype) for x in leaves))
        if self._params is None or self._params[0] != signature:
            shardings = shd.param_shardings(params, self.mesh, self.rules)
            self._params = (signature, shardings, jax.tree_util.tree_leaves(shardings))
        return self._params

    def param_shardings(self, params):
        """NamedShardings of ``params`` on the sampler's mesh, from their logical axes."""
        return self._param_entry(params)[1]

    def place(self, params):
        """``params`` on the sampler's mesh: unchanged where they are there already (checked
        leaf by leaf on every call: a step costs no copy), else copied there."""
        return self._place(params)[0]

    def _place(self, params):
        """(placed params, their signature, their shardings); one flatten per call."""
        leaves, treedef = jax.tree_util.tree_flatten(params)
        signature, shardings, targets = self._param_entry(params, leaves, treedef)
        if not _placed(leaves, targets):
            params = jax.device_put(params, shardings)
        return params, signature, shardings

    def _replicated(self):
        return NamedSharding(self.mesh, P())

    def _jitted(self, name, placed, *args, **static):
        """(the jitted ``name``, the in_shardings of ``args``) for ``placed`` (:meth:`_place`'s
        result) and these inputs."""
        params, params_signature, ps = placed
        key = (name, params_signature, _signature(args), tuple(sorted(static.items())))
        if key in self._jits:
            return self._jits[key]
        m, r = self.mesh, self.rules
        if name == "init":
            first, text = args
            abstract = jax.eval_shape(self._init_impl, params, first, text)
            ins = (_batch_sharding(first, m, r, "first_frame"), _batch_sharding(text, m, r, "text"))
            fn = jax.jit(self._init_impl, in_shardings=(ps,) + ins, out_shardings=state_shardings(abstract, m, r))
        else:
            state, control, _ = args
            ss = state_shardings(state, m, r)
            control_name = "control" if name == "step" else "controls"
            ins = (ss, _batch_sharding(control, m, r, control_name), self._replicated())
            if name == "step":
                frame = _batch_sharding(state.prev_frame, m, r, "frame")
                fn = jax.jit(self._step_impl, in_shardings=(ps,) + ins, out_shardings=(ss, frame),
                             donate_argnums=(1,))
            else:
                B, _, h, w, C = state.prev_frame.shape
                frames = jax.ShapeDtypeStruct((B, static["num_frames"], h, w, C), state.prev_frame.dtype)
                fn = jax.jit(functools.partial(self._rollout_impl, num_frames=static["num_frames"]),
                             in_shardings=(ps,) + ins, out_shardings=(ss, _batch_sharding(frames, m, r, "frames")))
        self._jits[key] = fn, ins
        return fn, ins

    def _call(self, name, params, *args, **static):
        placed = self._place(params)
        fn, ins = self._jitted(name, placed, *args, **static)
        return fn(placed[0], *_conform(args, ins))

    def lower(self, name: str, params, *args, num_frames: int | None = None):
        """The jitted ``init``, ``step`` or ``rollout`` lowered for these arguments (arrays or
        ``jax.ShapeDtypeStruct``; nothing runs or is placed), with the shardings it runs with:
        ``.compile()`` for the HLO, ``cost_analysis()`` and ``memory_analysis()``. ``args`` as
        the method's (``rollout`` without ``num_frames``, given by keyword)."""
        if name not in ("init", "step", "rollout") or (num_frames is None) != (name != "rollout"):
            raise ValueError(f"name: expected 'init', 'step' or 'rollout' (num_frames with rollout only), "
                             f"got {name!r} with num_frames={num_frames!r}")
        signature, shardings, _ = self._param_entry(params)
        static = {} if num_frames is None else dict(num_frames=num_frames)
        return self._jitted(name, (params, signature, shardings), *args, **static)[0].lower(params, *args)

    def init(self, params, first_frame, text) -> StreamState:
        """first_frame ``[B, 1, h, w, C]`` latent; text ``[B, Lt, text_dim]``."""
        check_inputs(self.cfg, first_frame, text, self.cache_frames)
        check_values(first_frame, text)
        return self._call("init", params, first_frame, text)

    def step(self, params, state: StreamState, control, key):
        """control ``[B, 1, h, w, Cc]`` (None without controls) -> (state, frame ``[B,1,h,w,C]``).

        The state is donated: do not reuse the state passed in.
        """
        B, _, h, w, _ = state.prev_frame.shape
        check_control(self.cfg, control, B, h, w)
        return self._call("step", params, state, control, key)

    def rollout(self, params, state: StreamState, controls, key, num_frames: int):
        """``num_frames`` steps in one ``lax.scan``; controls ``[B, K, h, w, Cc]`` or None.

        Returns (state, frames ``[B, K, h, w, C]``).
        """
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames: expected an int >= 1, got {num_frames!r}")
        B, _, h, w, _ = state.prev_frame.shape
        check_control(self.cfg, controls, B, h, w, frames=num_frames)
        return self._call("rollout", params, state, controls, key, num_frames=num_frames)
