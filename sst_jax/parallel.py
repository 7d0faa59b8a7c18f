"""Device mesh, shardings, host->device placement and multi-host helpers.

Data parallelism is expressed with ``jax.jit`` over a one-axis mesh: batches
are sharded on ``'data'``, the train state is replicated. Because BatchNorm
reduces over the (global) batch axis inside jit, its statistics are
synchronized across devices with no extra code.
"""

from __future__ import annotations

import collections
import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def split_cpu(num_devices: int) -> None:
  """Splits the host CPU into ``num_devices`` XLA devices (0: leave as is).

  Call before JAX runs anything. A small model's step is many small ops that
  XLA's intra-op threads barely parallelize; on a CPU-only host, several
  devices each running its shard of the batch keep the cores busier (the
  synthetic main job's numbers: docs/results.md, "CPU devices: two devices
  on two cores"). The CPU then stands in for an accelerator: the mesh
  covers its devices and BatchNorm stays synchronized. Ignored where
  ``XLA_FLAGS`` already sets ``--xla_force_host_platform_device_count``
  (the tests).
  Starts no backend itself (``jax.distributed.initialize`` may follow).
  ``config_lib.validate_config`` checks ``num_devices >= 0``.
  """
  if num_devices and ('xla_force_host_platform_device_count'
                      not in os.environ.get('XLA_FLAGS', '')):
    try:
      jax.config.update('jax_num_cpu_devices', num_devices)
    except RuntimeError as e:
      started = len(jax.devices('cpu'))
      if started != num_devices:
        raise RuntimeError(
            f'config.cpu_devices={num_devices}: JAX already started with '
            f'{started} CPU devices; set it before any JAX computation '
            'runs') from e


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``('data',)`` mesh over all (or the first N) devices."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if n > len(devices):
    raise ValueError(f'asked for {n} devices, only {len(devices)} available')
  return jax.make_mesh((n,), ('data',), devices=devices[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def shapes_like(tree, sharding):
  """``jax.ShapeDtypeStruct`` of every leaf of ``tree`` (arrays or shapes).

  For ``jit(...).lower``: shape, dtype and weak type of each leaf, placed with
  ``sharding``.
  """
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding,
                                     weak_type=getattr(x, 'weak_type', False)),
      tree)


def local_batch_size(global_batch: int, mesh) -> int:
  """Per-process batch size; the global batch must split over devices."""
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f'batch size {global_batch} is not divisible by the '
                     f'{n} devices of the mesh')
  return global_batch // jax.process_count()


def shard_batch(batch: dict, mesh) -> dict:
  """Places this process's slice of a global batch onto the mesh.

  Every array's leading axis is the batch axis. Each process passes its own
  local rows; the result is one global array per key.
  """
  sharding = data_sharding(mesh)
  # The train loop's one host-to-device transfer, allowed by name under any
  # jax.transfer_guard: with several processes jax builds the global array
  # through a put it does not count as explicit.
  with jax.transfer_guard_host_to_device('allow'):
    return {k: jax.make_array_from_process_local_data(sharding,
                                                      np.asarray(v))
            for k, v in batch.items()}


class DevicePrefetcher:
  """Places host batches on the mesh ``size - 1`` steps ahead of their use.

  ``next()`` returns the batch placed by the previous call and issues the
  copy of the one after it while the step dispatched just before (jax
  dispatches asynchronously) still runs on the devices: with the default
  ``size=2`` (double buffering) every batch is copied one step ahead of its
  use, never between two steps. Placement is ``shard_batch``'s transfer, the only
  host-to-device one of the train loop and allowed by name under its
  ``jax.transfer_guard``. Multi-host: every process places its own rows of
  the same batches in the same order, with no collective.

  ``get_state()`` is the host iterator's state before the next batch to be
  returned was read, so a checkpoint resumes at the first unused batch
  whatever is buffered.
  """

  def __init__(self, iterator, mesh, size: int = 2):
    if size < 1:
      raise ValueError(f'device prefetch size must be >= 1, got {size}')
    self._it, self._mesh, self._size = iterator, mesh, size
    self._buffer = collections.deque()  # (host state before, device batch)
    self._exhausted = False

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    while len(self._buffer) < self._size and not self._exhausted:
      state = self._it.get_state()
      try:
        host = next(self._it)
      except StopIteration:
        self._exhausted = True
        break
      self._buffer.append((state, shard_batch(host, self._mesh)))
    if not self._buffer:
      raise StopIteration
    return self._buffer.popleft()[1]

  def get_state(self):
    return self._buffer[0][0] if self._buffer else self._it.get_state()


def replicate(tree, mesh):
  """Puts a host pytree (the same on every process) on every device.

  Works with any number of processes: each process fills only its own
  devices (``jax.device_put`` onto non-addressable devices would fail).
  """
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, tree)


_barriers = {}  # barrier name -> times used, for unique barrier ids


def sync_processes(name: str, timeout_s: float) -> None:
  """Waits until every process reaches ``name``; a no-op with one process.

  Hosts reach the same point of a run at different times: one compiles
  while another finds its program in the compilation cache, one renders or
  reads data longer, process 0 writes images and events after an
  evaluation. A device collective is no place to wait for that: the CPU
  backend's gloo collectives give up after about 30 s (``Gloo context
  initialization failed: DEADLINE_EXCEEDED``), and ``jax.experimental.
  multihost_utils.sync_global_devices`` is itself such a collective. This
  barrier lives in ``jax.distributed``'s coordination service instead, with
  the caller's timeout (``config.multihost.sync_timeout_s``).

  Args:
    name: where the processes meet; every process passes the same names in
      the same order.
    timeout_s: how long to wait for the slowest process.

  Raises:
    RuntimeError: naming the barrier when a process has not arrived in time.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # the coordination service's client
  count = _barriers[name] = _barriers.get(name, 0) + 1
  try:
    distributed.global_state.client.wait_at_barrier(
        f'sst_jax/{name}/{count}', int(timeout_s * 1000))
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise RuntimeError(
        f'process {jax.process_index()}: not every process reached {name!r} '
        f'within {timeout_s:.0f} s (config.multihost.sync_timeout_s): {e}'
    ) from e


def constant(fn, mesh):
  """Evaluates ``fn()`` directly into replicated arrays on the mesh."""
  return jax.jit(fn, out_shardings=replicated(mesh))()


def local_rows(array, mesh):
  """This process's rows of a batch-sharded global array, on the host."""
  if jax.process_count() == 1:
    return jax.device_get(array)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.global_array_to_host_local_array(
      array, mesh, P('data')))

