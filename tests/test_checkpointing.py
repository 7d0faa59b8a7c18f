"""``sst_jax/checkpointing.py``: managers, restore, format metadata.

(Readers on another device count: tests/test_topology.py; ``gs://``
workdirs end to end: tests/test_workdir_paths.py; other formats refused by
every reader: tests/test_release.py.)
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

import helpers
import sst_jax
from sst_jax import checkpointing
from sst_jax import parallel


def test_restore_without_target_gives_host_arrays(tmp_path):
  """Host restore: numpy leaves, the saved tree, no device placement."""
  mesh = parallel.make_mesh()
  state = jax.device_put({'params': {'w': np.arange(6.0).reshape(2, 3)},
                          'step': np.int32(5)}, parallel.replicated(mesh))
  manager = checkpointing.make_manager(str(tmp_path), async_save=False)
  checkpointing.save(manager, 5, state, {'next_index': 5}, {'domains': []})
  manager.wait_until_finished()
  host = checkpointing.restore(manager, 5)['state']
  assert isinstance(host['params']['w'], np.ndarray)
  np.testing.assert_array_equal(host['params']['w'],
                                np.arange(6.0).reshape(2, 3))
  one = jax.sharding.SingleDeviceSharding(jax.devices()[3])
  placed = checkpointing.restore(manager, 5, sharding=one)['state']
  assert placed['params']['w'].sharding == one
  assert int(placed['step']) == 5
  manager.close()


def test_gcs_checkpoints_commit_with_a_commit_file(tmp_path):
  gcs = checkpointing.manager_options('gs://bucket/run/checkpoints')
  local = checkpointing.manager_options(tmp_path / 'checkpoints')
  if hasattr(gcs, 'atomicity_options'):
    assert gcs.atomicity_options.mode == ocp.options.AtomicityMode.COMMIT_FILE
    assert local.atomicity_options is None  # orbax's default: rename
  else:
    assert gcs.temporary_path_class is (
        ocp.path.atomicity.CommitFileTemporaryPath)
  assert local.temporary_path_class is None
  assert str(checkpointing.workdir_path('gs://bucket/run')) == (
      'gs://bucket/run')
  rel = checkpointing.workdir_path('run')
  assert rel.is_absolute() and str(rel) == os.path.join(os.getcwd(), 'run')


def test_checkpoint_metadata_records_format_and_version(tmp_path):
  helpers.write_workdir(str(tmp_path), 'baseline')
  manager, step, meta = checkpointing.open_latest(str(tmp_path))
  manager.close()
  assert step == 3
  assert meta['format'] == checkpointing.CHECKPOINT_FORMAT
  assert meta['sst_jax_version'] == sst_jax.__version__
