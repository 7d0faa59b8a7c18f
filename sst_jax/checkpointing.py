"""Checkpoints: train state + data-iterator state + JSON metadata (orbax).

This is the only module that imports orbax. A checkpoint step holds three
items: ``state`` (the TrainState pytree), ``data`` (the input iterator's
state, JSON) and ``metadata`` (config, label domains with class lists,
step; JSON). Saves are asynchronous.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

import sst_jax
from sst_jax import domains as domains_lib


class CheckpointMismatchError(ValueError):
  """A checkpoint was trained with label domains the config does not have."""


class CheckpointFormatError(ValueError):
  """A checkpoint was written in a format this version cannot read."""


# The layout of a checkpoint (its items and metadata fields). A change that
# older code could not read, or that this code could not read from older
# checkpoints, takes the next number; readers refuse any other number
# (``check_format``). Checkpoints from before the field existed are format 1.
CHECKPOINT_FORMAT = 1


def format_fields() -> dict:
  """Metadata fields naming the writer: checkpoint format and version."""
  return {'format': CHECKPOINT_FORMAT,
          'sst_jax_version': sst_jax.__version__}


def check_format(metadata: dict, path: str) -> None:
  """Refuses checkpoint metadata of another format than ``CHECKPOINT_FORMAT``.

  Raises:
    CheckpointFormatError: naming the checkpoint, the format it has (and the
      version that wrote it) and the format this version reads.
  """
  found = metadata.get('format', 1)
  if found != CHECKPOINT_FORMAT:
    writer = metadata.get('sst_jax_version', 'unknown')
    raise CheckpointFormatError(
        f'checkpoint {path} has checkpoint format {found} (written by '
        f'sst_jax {writer}), but sst_jax {sst_jax.__version__} reads '
        f'checkpoint format {CHECKPOINT_FORMAT} only; load it with the '
        'sst_jax version that wrote it')


ITEMS = ('state', 'data', 'metadata')


def make_manager(workdir: str, max_to_keep: int = 3,
                 save_interval_steps: int = 1,
                 async_save: bool = True) -> ocp.CheckpointManager:
  path = os.path.join(os.path.abspath(workdir), 'checkpoints')
  # Handlers (not just item names) so that a reader can ask for an item's
  # saved tree structure, shapes and dtypes (``restore_state``).
  return ocp.CheckpointManager(
      path,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
          enable_async_checkpointing=async_save, create=True),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': ocp.JsonCheckpointHandler(),
                     'metadata': ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict,
         metadata: dict, force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      metadata=ocp.args.JsonSave(metadata)), force=force)


def restore_metadata(manager: ocp.CheckpointManager, step: int) -> dict:
  """Checkpoint ``step``'s metadata item, checked by ``check_format``."""
  metadata = manager.restore(step, args=ocp.args.Composite(
      metadata=ocp.args.JsonRestore()))['metadata']
  check_format(metadata, f'{manager.directory}/{step}')
  return metadata


def restore_state(manager: ocp.CheckpointManager, step: int,
                  target: Any = None, sharding: Any = None) -> Any:
  """Restores checkpoint ``step``'s train state for this process.

  Every reader of a checkpoint comes here. The state is always restored
  against a target built for the current process, never with the shardings
  it was saved with: a checkpoint written by N devices or processes (a pod
  slice, ``config.cpu_devices=2``) reads on M, one device or a laptop
  included. Without a target orbax would rebuild the saved topology and
  fail with "Topology mismatch".

  Args:
    manager: from :func:`make_manager`.
    step: the checkpoint step.
    target: an abstract state (``jax.ShapeDtypeStruct`` leaves with
      shardings, e.g. ``parallel.shapes_like(eval_shape(init), repl)``): the
      state is restored onto exactly that tree (resuming training).
    sharding: without ``target``, the tree is the checkpoint's own (nested
      dicts and lists) and every leaf is placed with this sharding (the
      current mesh's replicated sharding for evaluation or
      ``config.init_from``); ``None`` restores host numpy arrays (export,
      predict, ``Parser.load``).

  Returns:
    the state tree.
  """
  if target is None:
    saved = manager.item_metadata(step)['state']
    if saved is None:
      raise FileNotFoundError(
          f'{manager.directory}/{step}: the checkpoint has no train state')
    if sharding is None:
      target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), saved.tree)
    else:
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
          saved.tree)
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))['state']


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restores state (onto ``abstract_state``'s shardings) and data state."""
  state = restore_state(manager, step, target=abstract_state)
  data = manager.restore(step, args=ocp.args.Composite(
      data=ocp.args.JsonRestore()))['data']
  return state, data


def open_latest(workdir: str, what: str = 'workdir'
                ) -> tuple[ocp.CheckpointManager, int, dict]:
  """A read-only view of ``workdir``'s latest checkpoint.

  Args:
    workdir: a training workdir.
    what: how the workdir was given, for messages (e.g.
      ``'config.init_from'``).

  Returns:
    ``(manager, step, metadata)``; the caller closes the manager.

  Raises:
    FileNotFoundError: naming the workdir when it holds no checkpoint.
    CheckpointFormatError: when the checkpoint has another format.
  """
  # Checked first: the manager would otherwise create the directory.
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(f'{what} {workdir!r} is not a training workdir '
                            '(no checkpoints/ folder)')
  manager = make_manager(workdir, async_save=False)
  step = manager.latest_step()
  if step is None:
    manager.close()
    raise FileNotFoundError(f'{what} {workdir!r}: no checkpoint in '
                            f'{manager.directory}')
  return manager, int(step), restore_metadata(manager, step)


def check_domains(metadata: dict, domains: Sequence[domains_lib.Domain],
                  path: str, allow_new: bool = False) -> list[str]:
  """Refuses a checkpoint whose label domains differ from the config's.

  Args:
    metadata: the checkpoint's metadata item.
    domains: the configured domains, in config order.
    path: checkpoint location, for the message.
    allow_new: accept configured domains the checkpoint does not have
      (extending a universal model with new datasets); the checkpoint's own
      domains must still match exactly.

  Returns:
    names of the configured domains that are new relative to the checkpoint.

  Raises:
    CheckpointMismatchError: naming the domain and the differing classes.
  """
  saved = {d['name']: d for d in metadata['domains']}
  configured = {d.name: d for d in domains}
  for name, entry in saved.items():
    if name not in configured:
      raise CheckpointMismatchError(
          f'checkpoint {path} was trained with label domain {name!r}, which '
          f'the config does not list (config domains: {list(configured)})')
    want = list(configured[name].classes)
    if entry['classes'] != want:
      diff = [f'{i}: {a!r} vs {b!r}' for i, (a, b) in enumerate(
          zip(entry['classes'], want)) if a != b]
      raise CheckpointMismatchError(
          f'checkpoint {path}: label domain {name!r} has '
          f'{len(entry["classes"])} classes {entry["classes"]} but the config '
          f'has {len(want)} classes {want}' +
          (f' (differing ids: {"; ".join(diff[:5])})' if diff else ''))
  new = [n for n in configured if n not in saved]
  if new and not allow_new:
    raise CheckpointMismatchError(
        f'checkpoint {path} has label domains {list(saved)} but the config '
        f'adds {new}; to extend a trained model with new domains, start a new '
        'workdir with config.init_from pointing at this one')
  return new
