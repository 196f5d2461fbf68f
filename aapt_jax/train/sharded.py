"""Where a training run's arrays live on the device mesh, and its jitted step.

One path for every mesh, a single CPU device included (a mesh of 1): the mesh comes from
``config.mesh`` (:func:`aapt_jax.parallel.mesh.mesh_from_config`), built once per run, and
the train step is jitted with explicit in/out shardings derived from the logical axis
rules (:mod:`aapt_jax.parallel.sharding`):

* params: each Param's logical axes under its player's strategy
  (:meth:`aapt_jax.train.config.TrainConfig.strategies`, ZeRO-3 or ZeRO-2 over the ZeRO
  group ``fsdp`` x ``context``, :data:`aapt_jax.parallel.sharding.STRATEGIES`). The adversarial
  stage's params are ``{'generator': ..., 'discriminator': ...}``, one player each; every
  other stage's are one player, the generator (the VAE stage's carry no logical axes and are
  replicated);
* gradients and optimizer state: the strategy's ``state`` rules (split over the ZeRO group
  in both strategies). An optimizer-state leaf that mirrors a param (AdamW's ``mu``/``nu``,
  RMSProp's ``nu``: same shape, its tree path ending in the param's) takes that param's
  gradient sharding; counters are replicated;
* frozen inputs: by the stage's ``frozen_axes`` under the ZeRO-3 rules (the distillation
  teacher is split like a ZeRO-3 generator; the VAE, without logical axes, is replicated);
* batches: split on their first dimension by the ``batch`` rule (``data`` x ``fsdp``); each
  process hands in its own rows (:meth:`TrainStep.put_batch`);
* activations and the KV cache: the same rules, active while the step traces
  (``use_mesh``): the model constrains its hidden states, the Ulysses path splits tokens over
  ``context``, the streaming cache is split by batch and heads.

A dimension that its mesh axes do not divide keeps the axes that do and is logged by name
(``strict=True``: an error); nothing is replicated silently.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aapt_jax.parallel import sharding as shd
from aapt_jax.parallel.mesh import make_mesh, mesh_from_config

GENERATOR = "generator"


@dataclasses.dataclass(frozen=True)
class Layout:
    """A run's mesh, the activation rules, and each player's strategy (a key of
    :data:`aapt_jax.parallel.sharding.STRATEGIES`); a player not named is ZeRO-3."""
    mesh: Mesh
    strategies: Mapping[str, str] = dataclasses.field(default_factory=dict)
    rules: Mapping = dataclasses.field(default_factory=lambda: dict(shd.DEFAULT_RULES))
    strict: bool = False

    def param_rules(self, player: str):
        return shd.STRATEGIES[self.strategies.get(player, "zero3")]["params"]

    def state_rules(self, player: str):
        return shd.STRATEGIES[self.strategies.get(player, "zero3")]["state"]

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())


def layout_for(config, mesh: Mesh | None = None) -> Layout:
    """The layout of an experiment config: its ``config.mesh`` (or ``mesh``, built once by the
    caller) and ``train``'s per-player strategies."""
    from aapt_jax.train.config import train_config

    if mesh is None:
        mesh = mesh_from_config(config.get("mesh"))
    return Layout(mesh, train_config(config).strategies())


def one_device_layout() -> Layout:
    """A mesh of the one default device: the path every caller without a config takes."""
    return Layout(make_mesh(devices=jax.devices()[:1]))


def _shapes(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def by_player(players: bool, axes, tree, fn):
    """``fn(player, axes, subtree)`` per player: the top-level entries of ``tree`` when
    ``players`` (the adversarial stage), else the whole tree as the generator."""
    if axes is None:
        axes = shd.replicated_axes(tree)
    if players:
        return {k: fn(k, axes[k], tree[k]) for k in tree}
    return fn(GENERATOR, axes, tree)


def param_shardings(layout: Layout, axes, params, players: bool = False):
    """NamedShardings of ``params`` (arrays or abstract) under each player's param rules."""
    return by_player(players, axes, params, lambda player, ax, sub: shd.tree_shardings(
        ax, sub, layout.mesh, layout.param_rules(player), what=f"{player} param", strict=layout.strict))


def grad_shardings(layout: Layout, axes, params, players: bool = False):
    """NamedShardings of gradients (and the optimizer state mirroring them)."""
    return by_player(players, axes, params, lambda player, ax, sub: shd.tree_shardings(
        ax, sub, layout.mesh, layout.state_rules(player), what=f"{player} gradient", strict=layout.strict))


def mirror_shardings(opt_state, params, grads_sharding, other: NamedSharding):
    """Shardings of an optimizer state (abstract): a leaf whose tree path ends with a param's
    path and has its shape gets that param's gradient sharding; any other leaf ``other``."""
    by_path = {}
    for (path, p), s in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(grads_sharding)):
        by_path[tuple(path)] = (tuple(p.shape), s)

    def one(path, leaf):
        path = tuple(path)
        for start in range(len(path)):
            hit = by_path.get(path[start:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return other

    return jax.tree_util.tree_map_with_path(one, opt_state)


def initial_state(params, tx, seed: int):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "key": jax.random.key_data(jax.random.key(seed))}


@dataclasses.dataclass
class TrainShardings:
    """Shardings of one stage's train step: ``state`` (``{step, params, opt_state, key}``),
    ``grads`` (like params), ``frozen``, ``batch`` (a prefix for every leaf of a batch, split on
    dimension 0) and ``metrics`` (replicated)."""
    state: Any
    grads: Any
    frozen: Any
    batch: NamedSharding
    metrics: NamedSharding


def train_shardings(stage, tx, layout: Layout, batch_size: int) -> TrainShardings:
    """The shardings of ``stage``'s step (``batch_size``: examples per step over all processes,
    clips included: ``train.batch_size * stage.clips_per_example``)."""
    players = bool(stage.players)
    params = _shapes(stage.params)
    p_sh = param_shardings(layout, stage.param_axes, params, players)
    g_sh = grad_shardings(layout, stage.param_axes, params, players)
    repl = layout.replicated()
    opt = mirror_shardings(jax.eval_shape(tx.init, params), params, g_sh, repl)
    frozen_axes = stage.frozen_axes if stage.frozen_axes is not None else shd.replicated_axes(stage.frozen)
    frozen = shd.tree_shardings(frozen_axes, _shapes(stage.frozen), layout.mesh, shd.ZERO_RULES, what="frozen",
                                strict=layout.strict)
    batch = shd.array_sharding((batch_size,), ("batch",), layout.mesh, layout.rules, name="batch",
                               strict=layout.strict)
    state = {"step": repl, "params": p_sh, "opt_state": opt, "key": repl}
    return TrainShardings(state=state, grads=g_sh, frozen=frozen, batch=batch, metrics=repl)


def _all_finite(tree):
    ok = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(ok)) if ok else jnp.array(True)


def process_rows(sharding: NamedSharding, rows: int) -> tuple[int, int, int]:
    """``(shard_index, shard_count, local_rows)`` of this process for a batch of ``rows``
    split by ``sharding`` on dimension 0: processes holding the same rows share a shard
    index (they load the same examples); ``local_rows`` is what this process loads."""
    starts = {}
    for device, index in sharding.devices_indices_map((rows,)).items():
        start, stop, _ = index[0].indices(rows)
        starts.setdefault(device.process_index, set()).add((start, stop))
    spans = {p: (min(a for a, _ in s), max(b for _, b in s)) for p, s in starts.items()}
    distinct = sorted(set(spans.values()))
    mine = spans[jax.process_index()]
    return distinct.index(mine), len(distinct), mine[1] - mine[0]


class TrainStep:
    """A stage's train step, ``(state, frozen, batch) -> (state, metrics)``, jitted on the
    layout's mesh with explicit in/out shardings (see the module docstring). ``state`` is
    donated. ``batch`` holds this process's rows (numpy or arrays; a single process: the
    whole batch); :meth:`lower` takes abstract arguments (``jax.ShapeDtypeStruct``)."""

    def __init__(self, stage, tx, layout: Layout | None = None, batch_size: int | None = None):
        self.stage, self.tx = stage, tx
        self.layout = layout or one_device_layout()
        self.batch_size = batch_size
        self.shardings = None if batch_size is None else train_shardings(stage, tx, self.layout, batch_size)
        self._jit = None
        self._frozen = (None, None)  # (the frozen tree last placed, its placed copy)

    def _fit(self, rows: int) -> None:
        if self.shardings is None or self.batch_size != rows:
            self.batch_size = rows
            self.shardings = train_shardings(self.stage, self.tx, self.layout, rows)
            self._jit = None

    def _step(self, state, frozen, batch):
        stage, tx, sh = self.stage, self.tx, self.shardings
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
        with shd.use_mesh(self.layout.mesh, self.layout.rules):
            if stage.grads is not None:
                grads, metrics = stage.grads(state["params"], frozen, batch, key)
            else:
                (_, metrics), grads = jax.value_and_grad(
                    lambda p: stage.loss(p, frozen, batch, key), has_aux=True)(state["params"])
        # ZeRO: gradients reduce-scattered to their shards; the update runs on the shards and
        # the out_shardings gather the new params where the strategy keeps them whole.
        grads = jax.lax.with_sharding_constraint(grads, sh.grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # Checked here, not only at save: a finite loss of the old params says nothing of the
        # updated ones (an overflowing learning rate), and they must never be checkpointed.
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), state_finite=_all_finite((params, opt_state)))
        return dict(state, step=state["step"] + 1, params=params, opt_state=opt_state), metrics

    def jitted(self):
        if self._jit is None:
            sh = self.shardings
            self._jit = jax.jit(self._step, in_shardings=(sh.state, sh.frozen, sh.batch),
                                out_shardings=(sh.state, sh.metrics), donate_argnums=(0,))
        return self._jit

    # ----- placement ----------------------------------------------------------------------

    def init_state(self, seed: int, rows: int | None = None):
        """The initial train state on the mesh: params placed by their shardings (no copy where
        they are there already), the optimizer state created in its shards."""
        self._fit(rows or self.batch_size)
        sh = self.shardings
        params = jax.device_put(self.stage.params, sh.state["params"])
        init = jax.jit(lambda p: initial_state(p, self.tx, seed), out_shardings=sh.state)
        return init(params)

    def abstract_state(self, rows: int | None = None):
        """The train state as ``ShapeDtypeStruct``s carrying their shardings: the target of a
        restore (each process reads only its shards) and the input of :meth:`lower`."""
        self._fit(rows or self.batch_size)
        shapes = jax.eval_shape(lambda p: initial_state(p, self.tx, 0), _shapes(self.stage.params))
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                            self.shardings.state)

    def place_frozen(self, frozen):
        if self._frozen[0] is not frozen:
            self._frozen = (frozen, jax.device_put(frozen, self.shardings.frozen))
        return self._frozen[1]

    def put_batch(self, batch):
        """This process's rows of a batch -> global arrays split by the batch sharding
        (``jax.make_array_from_process_local_data``; arrays already placed pass through)."""
        sharding = self.shardings.batch
        _, _, local = process_rows(sharding, self.batch_size)

        def one(x):
            if isinstance(x, jax.Array) and x.ndim and x.shape[0] == self.batch_size and (
                    x.sharding.is_equivalent_to(sharding, x.ndim)):
                return x
            x = np.asarray(x)
            if x.shape[0] != local:
                raise ValueError(f"batch: expected {local} rows in this process (of {self.batch_size} in all), "
                                 f"got {x.shape[0]}")
            return jax.make_array_from_process_local_data(sharding, x, (self.batch_size,) + x.shape[1:])

        return jax.tree.map(one, batch)

    def __call__(self, state, frozen, batch):
        if self.shardings is None:  # a single process: the batch is the whole batch
            self._fit(jax.tree.leaves(batch)[0].shape[0])
        return self.jitted()(state, self.place_frozen(frozen), self.put_batch(batch))

    def lower(self, state, frozen, batch):
        """The step lowered for these (abstract or concrete, global) arguments."""
        self._fit(jax.tree.leaves(batch)[0].shape[0])
        return self.jitted().lower(state, frozen, batch)
