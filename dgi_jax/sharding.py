"""Device mesh, shardings, and host-local -> global batch assembly for data parallelism.

The batch is split over a 1-D ('data',) mesh; parameters and optimiser state are
replicated. Every host feeds only its own rows; `jax.make_array_from_process_local_data`
stitches them into one global array, so the same code runs on one CPU or a TPU pod.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  """A ('data',) mesh over every device of every process.

  Auto axis types: with JAX's default Explicit axes a matmul with a sharded contracting
  dimension (the in-batch InfoNCE similarity) raises `ShardingTypeError`.
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def host_batch_size(global_batch_size: int) -> int:
  """Rows this process feeds; checks the global batch splits over processes and devices."""
  if global_batch_size % jax.device_count():
    raise ValueError(f"train.global_batch_size={global_batch_size} is not divisible by the "
                     f"device count {jax.device_count()}")
  return global_batch_size // jax.process_count()


def global_batch(host_batch: Any, sharding: NamedSharding) -> Any:
  """Host-local numpy batch -> global jax.Arrays sharded along the batch axis."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch)


def pmap_batch(host_batch: Any) -> Any:
  """Host-local batch [b, ...] -> [local_devices, b / local_devices, ...] for `jax.pmap`."""
  n = jax.local_device_count()
  return jax.tree.map(lambda x: np.asarray(x).reshape((n, -1) + x.shape[1:]), host_batch)


def replicate_for_pmap(tree: Any) -> Any:
  """Copies a pytree onto every local device along a new leading axis (pmap's layout)."""
  devices = np.array(jax.local_devices())
  sharding = NamedSharding(Mesh(devices, ("local_devices",)), P("local_devices"))

  def put(x):
    return jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)),
                          sharding)
  return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
  """The first local device's copy of a pmap-replicated pytree, on that device alone.

  Each leaf is read from the device's own buffer. Indexing the leading axis (`x[0]`)
  would instead compile, for every leaf, a program over all local devices with an
  all-reduce (pmap's outputs are NamedSharding arrays over a 'local_devices' mesh), and
  its result would stay replicated on every device. On simulated CPU devices, with many
  such programs in flight, a rendezvous of XLA's in-process all-reduce timed out and
  aborted the process (docs/DESIGN.md, "Data parallelism").
  """
  return jax.tree.map(lambda x: x.addressable_data(0)[0], tree)


def sync_processes(name: str) -> None:
  """A barrier across processes (no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def to_local_device(tree: Any) -> Any:
  """`tree` on this process's first device, wherever its arrays are: replicated over the
  mesh (a jit follows committed inputs, so it would run once per device) or global
  multi-process arrays (hence the copy through the host)."""
  return jax.device_put(jax.device_get(tree), jax.local_devices()[0])
