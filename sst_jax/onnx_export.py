"""ONNX serialization of the inference forward pass (``[onnx]`` extra).

``python -m sst_jax.export --format=onnx`` writes ``forward.onnx``: the same
function as ``forward.jax_export``, with the same contract (input ``image``,
float32 ``[b, S, S, 3]`` normalized as ``export.json`` says, ``b`` symbolic
unless ``--batch`` fixes it; one output per kept domain, named after it,
float32 ``[b, S, S, C]`` logits), parameters embedded as initializers.

The conversion is jax2onnx's, applied to the function's jaxpr rather than to
the Flax code, with four exact rewrites that the parser's jaxpr needs:

* The function is traced here, outside jax2onnx. jax2onnx traces with its
  own ``flax.linen.max_pool`` in place, which takes only keyword arguments,
  so the ResNet stem's ``nn.max_pool(x, (3, 3), (2, 2), ...)`` fails under
  it. Replaying the finished jaxpr runs no Flax code.
* Calls (``jit``, ``custom_jvp_call``, ``custom_vjp_call``) are inlined:
  inference needs only their forward computation, not their rules.
* ``reduce_window_max`` becomes the maximum of strided slices of the
  edge-replicated input. jax2onnx lowers it to an ONNX ``MaxPool`` whose
  window spans all four NHWC axes, which ONNX Runtime refuses ("Unsupported
  pooling size").
* Zero-sized arrays are dropped from concatenations (and not computed):
  ``jnp.pad(mode='edge')``, used by the bilinear upsampling, makes them, and
  jax2onnx declares shapes for them that ONNX Runtime rejects.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import os
from typing import Callable, Sequence

import jax
from jax import lax
from jax.extend import core as jex_core
import jax.numpy as jnp

# jax2onnx without its dependencies: see the [onnx] extra in setup.cfg.
INSTALL_HINT = ('pip install "sst_jax[onnx]" && '
                'pip install --no-deps "jax2onnx>=0.17.1"')

# Call primitives inlined by ``replay``, and the parameter holding the
# called jaxpr (its inputs are the equation's inputs).
_CALL_JAXPR_PARAM = {
    'jit': 'jaxpr',
    'pjit': 'jaxpr',
    'closed_call': 'call_jaxpr',
    'core_call': 'call_jaxpr',
    'custom_jvp_call': 'call_jaxpr',
    'custom_vjp_call': 'call_jaxpr',
    'remat': 'jaxpr',
    'checkpoint': 'jaxpr',
}

# Above this, a model goes to an external-data file next to the .onnx
# (protobuf messages are limited to 2 GiB).
_SINGLE_FILE_LIMIT = 2**31 - 2**26


def _is_empty(aval) -> bool:
  # Symbolic dimensions (the batch) are never 0.
  return any(isinstance(d, int) and d == 0 for d in aval.shape)


def _edge_pad(x: jax.Array, axis: int, low: int, high: int) -> jax.Array:
  n = x.shape[axis]
  parts = ([lax.slice_in_dim(x, 0, 1, axis=axis)] * low + [x] +
           [lax.slice_in_dim(x, n - 1, n, axis=axis)] * high)
  return lax.concatenate(parts, axis) if len(parts) > 1 else x


def max_pool_by_slices(x: jax.Array, out_shape, *, window_dimensions,
                       window_strides, padding, base_dilation,
                       window_dilation) -> jax.Array | None:
  """``reduce_window_max`` as a maximum of strided slices, or None.

  Padding replicates the edge instead of adding -inf: a window that reaches
  into the padding (at most ``window - 1`` wide, undilated) also covers the
  edge element it replicates, so its maximum is unchanged.

  Returns:
    the pooled array, or None when the window is dilated along a padded
    axis, the padding is as wide as the window, or the input is dilated
    (cases the parser does not have; the primitive is then kept).
  """
  if any(d != 1 for d in base_dilation):
    return None
  for (low, high), w, d in zip(padding, window_dimensions, window_dilation):
    if (low or high) and (d != 1 or max(low, high) >= w):
      return None
  for axis, (low, high) in enumerate(padding):
    if low or high:
      x = _edge_pad(x, axis, low, high)
  result = None
  for offsets in itertools.product(*[range(w) for w in window_dimensions]):
    start = [o * d for o, d in zip(offsets, window_dilation)]
    limit = [s + (n - 1) * st + 1
             for s, n, st in zip(start, out_shape, window_strides)]
    part = lax.slice(x, start, limit, window_strides)
    result = part if result is None else lax.max(result, part)
  return result


def replay(jaxpr: jex_core.Jaxpr, consts: Sequence, *args) -> list:
  """Evaluates ``jaxpr`` on ``args`` with the module docstring's rewrites."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    outs = None
    if name == 'concatenate':
      kept = [read(v) for v in eqn.invars if not _is_empty(v.aval)]
      outs = [kept[0] if len(kept) == 1 else
              lax.concatenate(kept, eqn.params['dimension'])]
    elif all(_is_empty(v.aval) for v in eqn.outvars):
      outs = [jnp.zeros(v.aval.shape, v.aval.dtype) for v in eqn.outvars]
    elif name in _CALL_JAXPR_PARAM:
      called = eqn.params[_CALL_JAXPR_PARAM[name]]
      invals = [read(v) for v in eqn.invars]
      if isinstance(called, jex_core.ClosedJaxpr):
        outs = replay(called.jaxpr, called.consts, *invals)
      else:
        outs = replay(called, (), *invals)
    elif name == 'reduce_window_max':
      pooled = max_pool_by_slices(read(eqn.invars[0]),
                                  eqn.outvars[0].aval.shape, **eqn.params)
      outs = None if pooled is None else [pooled]
    if outs is None:
      outs = eqn.primitive.bind(*[read(v) for v in eqn.invars], **eqn.params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


@contextlib.contextmanager
def _quiet_converter():
  """Hides jax2onnx's and onnx_ir's warnings during a conversion.

  jax2onnx imports every plugin it ships (warning with a traceback for each
  one whose optional framework is missing) and onnx_ir warns about
  intermediate values it leaves untyped; neither concerns the converted
  model, whose outputs the tests compare with the JAX forward.
  """
  loggers = [logging.getLogger(n) for n in ('jax2onnx', 'onnx_ir')]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def require() -> None:
  """Checks that the converter can be imported.

  Raises:
    ImportError: naming what to install when jax2onnx, onnx or onnx_ir is
      missing.
  """
  for name in ('jax2onnx', 'onnx', 'onnx_ir'):
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ImportError(f'ONNX export needs {name} ({e}); install it with: '
                        f'{INSTALL_HINT}') from None


def convert(fn: Callable, heads: Sequence[str], input_size: int,
            batch: str | int = 'b', path: str | None = None):
  """Converts ``fn: image -> {head: logits}`` to an ONNX model.

  Args:
    fn: the forward function (``export.forward_fn``), parameters closed
      over (they become initializers).
    heads: the output order and names.
    input_size: the square input side ``S``.
    batch: a symbolic dimension name or a fixed batch size.
    path: where to write the model (``.onnx``), or None.

  Returns:
    the ``onnx.ModelProto``.

  Raises:
    ImportError: from ``require``.
  """
  require()
  import jax2onnx  # pylint: disable=g-import-not-at-top
  import onnx  # pylint: disable=g-import-not-at-top
  dims = f'{batch}' if isinstance(batch, str) else f'{int(batch)}'
  spec = jax.ShapeDtypeStruct(
      jax.export.symbolic_shape(f'{dims}, {input_size}, {input_size}, 3'),
      jnp.float32)
  heads = tuple(heads)
  closed = jax.make_jaxpr(lambda x: tuple(fn(x)[h] for h in heads))(spec)

  def forward(image):
    return tuple(replay(closed.jaxpr, closed.consts, image))

  with _quiet_converter():
    model = jax2onnx.to_onnx(forward, [spec], model_name='sst_jax_forward',
                             input_names=['image'], output_names=list(heads))
  if path is not None:
    external = model.ByteSize() > _SINGLE_FILE_LIMIT
    onnx.save_model(model, path, save_as_external_data=external,
                    all_tensors_to_one_file=True,
                    location=os.path.basename(path) + '.data')
  return model
