"""Entry point: ``python -m sst_jax.main --config=<file> --workdir=<dir>``."""

import os

if __name__ == '__main__':
  # First, before the imports below: restart with glibc's huge-page tunable
  # on CPU-only runs (a no-op if set already, on GPU and TPU hosts and with
  # SST_JAX_NO_HUGEPAGES=1; see sst_jax/host_memory.py).
  from sst_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.reexec_with_huge_pages()

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from sst_jax import config_lib
from sst_jax import parallel
from sst_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
config_flags.DEFINE_config_file('config', None, 'Training configuration.',
                                lock_config=True)
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() '
                  '(auto-detects TPU pods and SLURM; otherwise pass the '
                  'coordinator flags).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Number of processes.')
flags.DEFINE_integer('process_id', None, 'This process index.')
flags.DEFINE_string('compilation_cache', '~/.cache/sst_jax/jit',
                    'Persistent XLA compilation cache ("" disables): a '
                    'resumed or repeated run skips compilation.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    # Library INFO logs (checkpointing internals) would bury the progress
    # lines; --verbosity=0 brings them back.
    logging.set_verbosity(logging.WARNING)
  # Before JAX starts: a bad config is refused before any device work.
  config_lib.validate_config(FLAGS.config)
  parallel.split_cpu(FLAGS.config.cpu_devices)
  timeouts = FLAGS.config.multihost
  distributed = FLAGS.multihost or FLAGS.coordinator_address
  if distributed:
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
        initialization_timeout=int(timeouts.init_timeout_s),
        shutdown_timeout_seconds=int(timeouts.shutdown_timeout_s))
  if FLAGS.compilation_cache:
    jax.config.update('jax_compilation_cache_dir',
                      os.path.expanduser(FLAGS.compilation_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  logging.info('JAX process %d/%d, local devices %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if distributed:
    # Process 0 finishes later (it writes the last images and events): the
    # others wait here rather than in jax.distributed's shutdown barrier.
    parallel.sync_processes('end', timeouts.sync_timeout_s)
    jax.distributed.shutdown()


if __name__ == '__main__':
  app.run(main)
