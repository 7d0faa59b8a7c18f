"""Checkpoints: train state + data-iterator state + JSON metadata (orbax).

This is the only module that imports orbax. A checkpoint step holds three
items: ``state`` (the TrainState pytree), ``data`` (the input iterator's
state, JSON) and ``metadata`` (config, label domains with class lists,
step; JSON). Saves are asynchronous.

Workdirs are ``etils.epath`` paths: a local directory or a ``gs://`` URL
(with the ``[gcs]`` extra). On ``gs://`` a checkpoint commits by writing a
commit file into its step directory once every item is written (orbax's
``CommitFileTemporaryPath``) instead of renaming a temporary directory,
which object storage cannot do atomically (``manager_options``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from etils import epath
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


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
  """``workdir`` as an ``epath.Path``: absolute if local, URLs kept as given.

  Every file under a workdir (checkpoints, ``metrics.jsonl``, TensorBoard
  events, PNGs, ``config.json``) is reached through this path, so a
  ``gs://bucket/run`` workdir works wherever a local one does.
  """
  path = epath.Path(workdir)
  return path if is_remote(path) else path.expanduser().absolute()


def is_remote(path: str | os.PathLike) -> bool:
  """Whether ``path`` is a URL (``gs://...``) rather than a local path."""
  return '://' in os.fspath(path)


def is_gcs(path: str | os.PathLike) -> bool:
  return os.fspath(path).startswith('gs://')


def manager_options(directory: str | os.PathLike, *, max_to_keep: int = 3,
                    save_interval_steps: int = 1, async_save: bool = True,
                    create: bool = True) -> ocp.CheckpointManagerOptions:
  """The checkpoint manager's options for a checkpoint ``directory``.

  On ``gs://`` the commit-file protocol is selected explicitly: orbax
  writes the step in place and adds a commit file last, and readers skip
  steps without one; the rename-based protocol of local directories would
  copy every object of the checkpoint on GCS.
  """
  options = dict(max_to_keep=max_to_keep,
                 save_interval_steps=save_interval_steps,
                 enable_async_checkpointing=async_save, create=create)
  if is_gcs(directory):
    fields = {f.name for f in dataclasses.fields(ocp.CheckpointManagerOptions)}
    if 'atomicity_options' in fields:
      options['atomicity_options'] = ocp.options.AtomicityOptions(
          mode=ocp.options.AtomicityMode.COMMIT_FILE)
    else:  # orbax-checkpoint releases before AtomicityOptions
      options['temporary_path_class'] = (
          ocp.path.atomicity.CommitFileTemporaryPath)
  return ocp.CheckpointManagerOptions(**options)


def make_manager(workdir: str | os.PathLike, max_to_keep: int = 3,
                 save_interval_steps: int = 1, async_save: bool = True,
                 create: bool = True) -> ocp.CheckpointManager:
  """The checkpoint manager of ``<workdir>/checkpoints``.

  ``create=False``: a reader's view; the manager writes nothing until a
  ``save`` (readers never call it).
  """
  path = workdir_path(workdir) / 'checkpoints'
  # Handlers (not just item names) so that a reader can ask for an item's
  # saved tree structure, shapes and dtypes (``restore``).
  return ocp.CheckpointManager(
      path,
      options=manager_options(path, max_to_keep=max_to_keep,
                              save_interval_steps=save_interval_steps,
                              async_save=async_save, create=create),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': ocp.JsonCheckpointHandler(),
                     'metadata': ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict,
         metadata: dict, force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      metadata=ocp.args.JsonSave(metadata)), force=force)


ITEMS = ('state', 'data', 'metadata')


def restore(manager: ocp.CheckpointManager, step: int,
            items: Sequence[str] = ('state',), *, target: Any = None,
            sharding: Any = None) -> dict:
  """Reads items of checkpoint ``step``; every reader of a checkpoint.

  The state is always restored against a target built for the current
  process, never with the shardings it was saved with: a checkpoint written
  by N devices or processes (a pod slice, ``config.cpu_devices=2``) reads on
  M, one device or a laptop included. Without a target orbax would rebuild
  the saved topology and fail with "Topology mismatch".

  Args:
    manager: from :func:`make_manager`.
    step: the checkpoint step.
    items: which of ``ITEMS`` to read: ``'state'`` (the train state),
      ``'data'`` (the input iterator's state), ``'metadata'`` (checked by
      :func:`check_format`).
    target: an abstract state (``jax.ShapeDtypeStruct`` leaves with
      shardings, e.g. ``parallel.shapes_like(eval_shape(init), repl)``): the
      state is restored onto exactly that tree (resuming training).
    sharding: without ``target``, the state's tree is the checkpoint's own
      (nested dicts and lists) and every leaf is placed with this sharding
      (the current mesh's replicated sharding for evaluation or
      ``config.init_from``); ``None`` restores host numpy arrays (export,
      predict, ``Parser.load``).

  Returns:
    ``{item: value}`` for each of ``items``.

  Raises:
    FileNotFoundError: when the state is asked for and the checkpoint has
      none.
    CheckpointFormatError: when the metadata records another format.
  """
  unknown = set(items) - set(ITEMS)
  if unknown:
    raise ValueError(f'unknown checkpoint items {sorted(unknown)}; the items '
                     f'are {ITEMS}')
  args = {}
  if 'state' in items:
    if target is None:
      saved = manager.item_metadata(step)['state']
      if saved is None:
        raise FileNotFoundError(
            f'{manager.directory}/{step}: the checkpoint has no train state')
      if sharding is None:
        target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype),
                              saved.tree)
      else:
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                           sharding=sharding), saved.tree)
    args['state'] = ocp.args.StandardRestore(target)
  for item in ('data', 'metadata'):
    if item in items:
      args[item] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**args))
  out = {item: restored[item] for item in items}
  if 'metadata' in out:
    check_format(out['metadata'], f'{manager.directory}/{step}')
  return out


def open_latest(workdir: str | os.PathLike, what: str = 'workdir',
                step: int | None = None
                ) -> tuple[ocp.CheckpointManager, int, dict]:
  """A read-only view of ``workdir``'s latest checkpoint (or of ``step``).

  Nothing in the workdir is created, changed or deleted.

  Args:
    workdir: a training workdir (local or ``gs://``).
    what: how the workdir was given, for messages (e.g.
      ``'config.init_from'``).
    step: a checkpoint step to open instead of the latest.

  Returns:
    ``(manager, step, metadata)``; the caller closes the manager.

  Raises:
    FileNotFoundError: naming the workdir when it holds no checkpoint, or
      when it holds none at ``step`` (listing the steps it holds).
    CheckpointFormatError: when the checkpoint has another format.
  """
  if not (workdir_path(workdir) / 'checkpoints').is_dir():
    raise FileNotFoundError(f'{what} {os.fspath(workdir)!r} is not a '
                            'training workdir (no checkpoints/ folder)')
  manager = make_manager(workdir, async_save=False, create=False)
  steps = sorted(manager.all_steps())
  if not steps or (step is not None and step not in steps):
    manager.close()
    if not steps:
      raise FileNotFoundError(f'{what} {os.fspath(workdir)!r}: no checkpoint '
                              f'in {manager.directory}')
    raise FileNotFoundError(
        f'{what} {os.fspath(workdir)!r}: no checkpoint at step {step} in '
        f'{manager.directory} (steps there: '
        f'{", ".join(map(str, steps))})')
  step = steps[-1] if step is None else step
  return manager, int(step), restore(manager, step, ('metadata',))['metadata']


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
