"""Device mesh, logical-axis rules, sharded state and programs (after the T5X and MaxText logical-axis rules). What
several processes must do together lives in distributed.py.

Modules name the axes of their variables and activations with *logical* names; a small named table of rules,
chosen by `cfg.mesh.rules`, maps those names onto the axes of a device mesh built from `cfg.mesh`:

    with sharding.use(sharding.make_mesh(cfg.mesh), cfg.mesh.rules):   # jax.set_mesh + the rules table
      model = sharding.create(lambda: build(cfg, ..., rngs=nnx.Rngs(seed)))   # params born sharded
      chunk = steps.make_train_chunk(..., layout=layout)   # its output state constrained by the rules

Outside `use(...)` nothing here does anything: `create` calls the builder, `constrain` returns its input and the
step factories keep their plain `jax.jit`, so a single-device run needs no mesh and is bit-identical to a run
of the code without this module.

Logical axis names (attached with `nnx.Param(value, **sharding.axes(...))` in models/layers.py, adapters.py):

  batch    windows of a batch: inputs [B, ...] and activations [K', B, ...]
  segment  the MoLA segment axis K: activations [K', B, ...], logits [K, P], LoRA a [K, d_in, r] and b [K, r, d_out],
           per-segment deltas [K, d_in, d_out]
  expert   the MoLA expert axis P: a [P, d_in, r], b [P, r, d_out], logits [K, P]
  token    the token axis of an encoder layer: the variates in iTransformer (862 + 4 for traffic), the patches
           in PatchTST
  embed    d_model; mlp: d_ff; heads: the attention projections' output features (heads x d_head)

Two rules that keep every table valid on every mesh: a name that a table does not list is replicated, and a
mesh axis that does not divide a dimension (or is already used by an earlier dimension of the same array) is
dropped for that dimension, so that dimension is replicated: the segment table on K = 3 segments and a model
axis of 2 replicates the K axis of the logits. Activations (`constrain`, inside a jit) may be split unevenly,
XLA pads them: only a dimension smaller than its mesh axes is replicated, e.g. the shared prefix (K' = 1).

We keep our own metadata key, `logical_axes`, rather than flax's `out_sharding`: flax shards a variable with
`out_sharding` eagerly when it is created, which needs a mesh even for single-device runs, and it keeps names
that a table does not list (an error on the mesh) instead of replicating them.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mola_jax.errors import ConfigError

MESH_AXES = ("data", "model")

# The menu (T5X style): name -> ((logical axis, mesh axis or tuple of mesh axes), ...). Names not listed are
# replicated. `cfg.mesh.rules` picks one.
RULES: dict[str, tuple[tuple[str, Any], ...]] = {
  # Batch over `data`, every weight replicated: MoLA at the paper's scale.
  "data_parallel": (("batch", "data"),),
  # + the K segments over `model`: the per-segment logits / LoRA banks and every activation after the first
  # adapted layer ([K, B, ...]) are split by segment; the shared prefix (K' = 1) stays replicated.
  "segment": (("batch", "data"), ("segment", "model")),
  # + the P experts of each MoLA bank over `model` (the mixture einsum then sums over devices).
  "expert": (("batch", "data"), ("expert", "model")),
  # + the token axis over `model`: iTransformer's variate tokens, for wide data (traffic: 862 variates).
  "variate": (("batch", "data"), ("token", "model")),
  # + Megatron-style FFN and attention weights over `model` (d_ff and the heads' features).
  "tensor": (("batch", "data"), ("mlp", "model"), ("heads", "model")),
}


def axes(*names: str | None) -> dict:
  """Variable metadata naming the logical axis of each dimension: `nnx.Param(value, **axes("embed", "mlp"))`.
  Inert without a layout: it creates no sharding and needs no mesh."""
  return {"logical_axes": tuple(names)}


# ---------------------------------------------------------------------------------------------------------------
# The mesh.


def validate(mesh_cfg) -> None:
  """ConfigError for a rules table that does not exist or a mesh shape that does not fit the mesh names."""
  if mesh_cfg.rules not in RULES:
    raise ConfigError(f"unknown mesh.rules {mesh_cfg.rules!r}; use one of {', '.join(RULES)}")
  if mesh_cfg.shape is not None and len(mesh_cfg.shape) != len(mesh_cfg.names):
    raise ConfigError(f"mesh.shape {tuple(mesh_cfg.shape)} needs one size per mesh.names {tuple(mesh_cfg.names)}")


def mesh_shape(shape, names, num_devices: int) -> tuple[int, ...]:
  """Resolve one -1 ("the rest of the devices") in `shape`; the product must equal `num_devices`."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(names):
    raise ConfigError(f"mesh.shape {shape} and mesh.names {tuple(names)} differ in length")
  for name in MESH_AXES:
    if name not in names:
      raise ConfigError(f"mesh.names {tuple(names)} must include {MESH_AXES}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f"mesh.shape {shape}: positive sizes and at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"mesh.shape {shape}: {num_devices} devices are not a multiple of {known}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ConfigError(f"mesh.shape {shape} needs {math.prod(shape)} devices, there are {num_devices}")
  return shape


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh | None:
  """`cfg.mesh` -> a jax Mesh with Auto axes (the logical-rule/GSPMD path), or None if `mesh_cfg.shape` is
  unset. `devices`: a subset to use (default: all)."""
  if mesh_cfg.shape is None:
    return None
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_cfg.shape, mesh_cfg.names, len(devices))
  return jax.make_mesh(shape, tuple(mesh_cfg.names), axis_types=(AxisType.Auto,) * len(shape), devices=devices)


def mesh_name(mesh: jax.sharding.Mesh) -> str:
  return "x".join(str(s) for s in mesh.devices.shape)


# ---------------------------------------------------------------------------------------------------------------
# The layout: a mesh plus a rules table, and everything derived from the two.


@dataclasses.dataclass(frozen=True)
class Layout:
  mesh: jax.sharding.Mesh
  rules: tuple[tuple[str, Any], ...]
  name: str = ""

  def mesh_axes(self, logical: str | None) -> tuple[str, ...]:
    for key, value in self.rules:
      if key == logical:
        return () if value is None else (value,) if isinstance(value, str) else tuple(value)
    return ()

  def spec(self, names, shape, *, even: bool = True) -> P:
    """Logical names of an array's dimensions -> its PartitionSpec on this mesh (see the module docstring for
    the replication rules). Trailing replicated dimensions are left out. even=False (activations inside a jit
    only, where XLA pads): a dimension at least as large as its mesh axes is split even if they do not divide
    it, e.g. traffic's 866 tokens over 4 devices as 217 + 217 + 217 + 215."""
    if not names:
      return P()
    if len(names) != len(shape):
      raise ValueError(f"logical axes {tuple(names)} do not fit an array of shape {tuple(shape)}")
    used, out = set(), []
    for name, dim in zip(names, shape, strict=True):
      wanted = tuple(a for a in self.mesh_axes(name) if self.mesh.shape[a] > 1 and a not in used)
      size = math.prod(self.mesh.shape[a] for a in wanted)
      if wanted and (dim % size if even else dim < size):
        _warn_once(name, dim, wanted, size)
        wanted = ()
      used.update(wanted)
      out.append(None if not wanted else wanted[0] if len(wanted) == 1 else wanted)
    while out and out[-1] is None:
      out.pop()
    return P(*out)

  def sharding(self, names, shape, *, even: bool = True) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(names, shape, even=even))

  def state_shardings(self, tree, lead: int = 0):
    """A NamedSharding for every array of `tree` (params, optimizer state, stats, keys; concrete or
    jax.ShapeDtypeStruct): a Variable's from its `logical_axes`, anything else replicated. Optimizer moments
    are Variables that carry their parameter's metadata, so they follow their parameter. `lead`: leading axes the
    metadata does not name (the run axis of runs stacked side by side), replicated."""

    def one(x):
      if isinstance(x, nnx.Variable):
        names = x.get_metadata().get("logical_axes")
        names = (None,) * lead + tuple(names) if names and lead else names
        return x.replace(self.sharding(names, x.shape))
      return self.sharding(None, np.shape(x))

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))

  def batch_shardings(self, batch):
    """Every leaf of a batch split along its leading (window) axis by the `batch` rule."""
    return jax.tree.map(lambda x: self.sharding(("batch",) + (None,) * (np.ndim(x) - 1), np.shape(x)), batch)


_WARNED: set = set()


def _warn_once(name, dim, axes_, size) -> None:
  if dim >= size and (name, dim, axes_) not in _WARNED:
    _WARNED.add((name, dim, axes_))
    logging.warning(
      "logical axis %r of size %d is not divisible by mesh axes %s (%d devices): replicated", name, dim, axes_, size
    )


_LAYOUT: contextvars.ContextVar[Layout | None] = contextvars.ContextVar("mola_jax_layout", default=None)


def current() -> Layout | None:
  """The layout of the innermost `use(...)`, or None outside one."""
  return _LAYOUT.get()


@contextlib.contextmanager
def use(mesh: jax.sharding.Mesh | None, rules: str | tuple = "data_parallel"):
  """Enter `jax.set_mesh(mesh)` and make `rules` (a RULES key or a table) the active mapping; yields the
  Layout. With mesh None this does nothing and yields None (the single-device path)."""
  if mesh is None:
    yield None
    return
  if isinstance(rules, str):
    if rules not in RULES:
      raise ConfigError(f"unknown mesh.rules {rules!r}; use one of {', '.join(RULES)}")
    layout = Layout(mesh, RULES[rules], rules)
  else:
    layout = Layout(mesh, tuple(rules), "custom")
  token = _LAYOUT.set(layout)
  try:
    with jax.set_mesh(mesh):
      yield layout
  finally:
    _LAYOUT.reset(token)


# ---------------------------------------------------------------------------------------------------------------
# Models and activations.


def constrain(x: jax.Array, names) -> jax.Array:
  """with_sharding_constraint by logical names under the active layout; the identity outside one."""
  layout = current()
  if layout is None:
    return x
  return jax.lax.with_sharding_constraint(x, layout.sharding(tuple(names), x.shape, even=False))


def activation_axes(ndim: int) -> tuple:
  """Logical names of an encoder activation [K', B, ..., N, d]."""
  return ("segment", "batch") + (None,) * (ndim - 4) + ("token", "embed")


def create(fn: Callable[[], nnx.Module]) -> nnx.Module:
  """`fn()` with every variable born sharded by the active layout: the shapes come from nnx.eval_shape, the
  values from one jitted call of `fn` with those out_shardings, so no replicated copy is ever materialised.
  Outside a layout: plain `fn()`."""
  layout = current()
  if layout is None:
    return fn()
  graphdef, abstract = nnx.split(nnx.eval_shape(fn))
  state = jax.jit(lambda: nnx.split(fn())[1], out_shardings=layout.state_shardings(abstract))()
  return nnx.merge(graphdef, state)


def place_model(model: nnx.Module) -> None:
  """Move every variable of `model` (e.g. numpy arrays from a checkpoint) to its sharding; no-op outside a
  layout."""
  layout = current()
  if layout is not None:
    state = nnx.state(model)
    nnx.update(model, jax.tree.map(_put, state, layout.state_shardings(state)))


def abstract(tree, layout: Layout, lead: int = 0):
  """`tree` as jax.ShapeDtypeStructs with the layout's shardings (`lead` unnamed leading axes): an orbax restore
  target or an AOT input."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, layout.state_shardings(tree, lead)
  )


# ---------------------------------------------------------------------------------------------------------------
# Data: host batches -> global arrays. Training itself gathers its batches on the device (data.DeviceWindows).


def global_batch(batch: dict, layout: Layout) -> dict:
  """Host batch -> global jax arrays split by the `batch` rule. The batch is the whole global batch, identical on
  every process; arrays already on the devices are re-placed only if their sharding differs."""
  out = {}
  for key, x in batch.items():
    if isinstance(x, jax.Array):
      out[key] = _put(x, layout.batch_shardings(x))
      continue
    x = np.asarray(x)
    names = ("batch",) + (None,) * (x.ndim - 1)
    out[key] = jax.make_array_from_process_local_data(layout.sharding(names, x.shape), x, x.shape)
  return out


# ---------------------------------------------------------------------------------------------------------------
# Programs.


def jit(fn, *, donate_argnums=(), layout: Layout | None = None, lead: int = 0):
  """`jax.jit(fn)`; under a `layout` its trace sees that layout (the activation constraints of `constrain`) and
  its outputs are constrained to the layout's state shardings (`state_shardings`), so a train step returns its
  state as it took it. The inputs bring their own shardings (a state born sharded, batches and indices placed by
  `replicate` or `global_batch`); jax's own cache keeps one compiled program per signature. A program cached by
  its factory is cached per layout, since `layout` is part of what it computes. `lead`: leading axes of the outputs
  that the logical names do not cover (a run axis), replicated."""
  if layout is None:
    return jax.jit(fn, donate_argnums=donate_argnums)

  def traced(*args):
    token = _LAYOUT.set(layout)
    try:
      out = fn(*args)
    finally:
      _LAYOUT.reset(token)
    return jax.lax.with_sharding_constraint(out, layout.state_shardings(out, lead))

  return jax.jit(traced, donate_argnums=donate_argnums)


def replicate(tree):
  """Host arrays -> device arrays, replicated on every device of the active mesh (None leaves stay None); one
  transfer for the whole tree where every device is this process's."""
  layout = current()
  if layout is None:
    return jax.device_put(tree)
  everywhere = NamedSharding(layout.mesh, P())
  if everywhere.is_fully_addressable:
    return jax.device_put(tree, everywhere)
  return jax.tree.map(lambda x: _put(x, everywhere), tree)


def commit(tree):
  """Every array of `tree` committed to its device (outside a layout: this process's first device; under one
  the arrays are placed already). A jitted step keeps one cached program per pattern of committed arguments, so a
  training state that mixes restored (committed) and freshly built (uncommitted) arrays would give its step a
  second one after the first call."""
  if current() is not None:
    return tree
  return jax.device_put(tree, jax.local_devices()[0])


def _put(x, sharding: NamedSharding):
  """`x` (host or device, any placement) as a global array with `sharding`; no copy if it is one already. Every
  process holds the same value: a host value onto a mesh that spans processes is assembled slice by slice."""
  if isinstance(x, jax.Array):
    if x.sharding == sharding:
      return x
    if sharding.is_fully_addressable or not x.is_fully_addressable:
      return jax.device_put(x, sharding)
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def target_shardings(state):
  """Where a restore should put each array of `state` (a tree of arrays, e.g. a pure dict): the active layout's
  shardings, or outside one each array's own (a host array: this process's first device)."""
  layout = current()
  if layout is not None:
    return layout.state_shardings(state)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: x.sharding if isinstance(x, jax.Array) else device, state)
