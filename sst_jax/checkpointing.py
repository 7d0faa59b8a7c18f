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

from sst_jax import domains as domains_lib


class CheckpointMismatchError(ValueError):
  """A checkpoint was trained with label domains the config does not have."""


def make_manager(workdir: str, max_to_keep: int = 3,
                 save_interval_steps: int = 1,
                 async_save: bool = True) -> ocp.CheckpointManager:
  path = os.path.join(os.path.abspath(workdir), 'checkpoints')
  return ocp.CheckpointManager(
      path,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
          enable_async_checkpointing=async_save, create=True),
      item_names=('state', 'data', 'metadata'))


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict,
         metadata: dict, force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      metadata=ocp.args.JsonSave(metadata)), force=force)


def restore_metadata(manager: ocp.CheckpointManager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(
      metadata=ocp.args.JsonRestore()))['metadata']


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restores state (onto ``abstract_state``'s shardings) and data state."""
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=ocp.args.JsonRestore()))
  return out['state'], out['data']


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


def to_host(tree: Any) -> Any:
  return jax.tree.map(np.asarray, jax.device_get(tree))
