"""What a config builds: the parser, the SST module and their first state.

Training (``train.py``), the benchmarks and the tests build their models
here, from a config checked by ``config_lib.validate_config``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sst_jax import steps
from sst_jax.models import fast_paths
from sst_jax.models import parser as parser_lib
from sst_jax.models import sst as sst_lib


def compute_dtype(config):
  return jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32


def speed_paths():
  """The parser's implementations for the backend JAX runs on.

  Asked once, where an entry point builds its model (training, evaluation,
  export, ``sst_jax.Parser``, the benchmarks), which passes it on; the
  builders default to the plain forms and the modules under
  ``sst_jax/models`` never ask for the backend (``fast_paths``).
  """
  return fast_paths.for_backend(jax.default_backend())


# XLA:CPU's options for compiling the initialization. It runs once, so its
# compile time is almost all of its cost: LLVM's optimization level 1
# instead of XLA's default 2 gives the same parameters bit for bit
# (tests/test_train.py) and compiles in less time (the times:
# docs/history.md, "Startup: initialization compiled cheaply"). Level 0
# changes values.
CPU_INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


def init_compiler_options():
  """The compiler options of the state's initialization on JAX's backend.

  Asked where training initializes its state (``train.run_init``), beside
  :func:`speed_paths`: :data:`CPU_INIT_COMPILER_OPTIONS` on the CPU, None
  (jit's defaults) elsewhere.
  """
  if jax.default_backend() == 'cpu':
    return dict(CPU_INIT_COMPILER_OPTIONS)
  return None


def build_models(config, domains, implementations=None):
  """The parser and (when enabled) the training-only SST module.

  ``implementations`` (``fast_paths.Implementations``) is what the parser
  runs; None: the plain forms. Entry points pass the backend's speed paths
  (:func:`speed_paths`).
  """
  model = parser_lib.make_parser(config.model, [d.name for d in domains],
                                 [d.num_classes for d in domains],
                                 compute_dtype(config), implementations)
  sst_model = sst_lib.make_sst(config, domains)
  return model, sst_model


def init_train_state(rng, *, model, sst_model, tx, image_size: int,
                     frozen_source: bool = False):
  """Fresh parameters and optimizer state (jit this with out_shardings).

  ``frozen_source`` adds ``model_state['frozen']``, a copy of the parameters
  and state that dedicated training keeps fixed
  (``config_lib.dedicated_source``); training replaces it with the source
  model's (``train.load_init_from``).
  """
  r_parser, r_sst = jax.random.split(rng)
  image = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  variables = model.init(r_parser, image, train=False)
  params = {'parser': variables['params']}
  model_state = {'batch_stats': variables['batch_stats']}
  if sst_model is not None:
    _, aux = model.apply(variables, image, train=False)
    label = jnp.zeros((2, image_size, image_size), jnp.int32)
    sst_vars = sst_model.init(r_sst, aux, label, jnp.zeros((2,), jnp.int32),
                              train=False)
    params['sst'] = sst_vars['params']
    # Empty for modules that keep no statistics (e.g. sst.intra='learned').
    model_state['sst_memory'] = sst_vars.get('sst_memory', {})
  if frozen_source:
    model_state['frozen'] = jax.tree.map(
        jnp.copy, {'params': params, 'model_state': dict(model_state)})
  return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          model_state=model_state, opt_state=tx.init(params))
