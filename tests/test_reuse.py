"""Reusable modules: the exports of ``sst_jax.models`` and ``docs/reuse.md``.

The documentation's code blocks run as written against a small trained
workdir and its export (paths substituted), and what they compute is checked
against the parser itself.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from sst_jax import export as export_lib
from sst_jax import models

import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

DOC = os.path.join(os.path.dirname(__file__), '..', 'docs', 'reuse.md')
SIZE = 32  # tiny.py's data.eval_input_size


def test_models_exports_build_from_keyword_arguments():
  # pylint: disable=g-import-not-at-top
  from sst_jax.models import parser as parser_lib
  from sst_jax.models import schp as schp_lib
  from sst_jax.models import sst as sst_lib
  # pylint: enable=g-import-not-at-top
  assert all(hasattr(models, n) for n in models.__all__)
  assert (models.ParsingNetwork, models.AugmentCE2P, models.SST) == (
      parser_lib.ParsingNetwork, schp_lib.AugmentCE2P, sst_lib.SST)
  key = jax.random.key(0)
  x = jax.ShapeDtypeStruct((2, SIZE, SIZE, 3), jnp.float32)
  parser = models.ParsingNetwork(num_classes={'a': 3, 'b': 5},
                                 backbone='resnet_tiny', width=8,
                                 context_features=16, decoder_features=16,
                                 psp_bins=(1, 2))
  variables = jax.eval_shape(parser.init, key, x)
  logits, aux = jax.eval_shape(parser.apply, variables, x)
  assert logits['a'].shape == (2, 8, 8, 3) and logits['b'].shape[-1] == 5

  backbone = models.make_resnet('resnet_tiny', width=8, output_stride=16)
  feats = jax.eval_shape(backbone.apply,
                         jax.eval_shape(backbone.init, key, x), x)
  assert feats['res5'].shape == (2, 2, 2, 64)
  assert models.ResNet(stage_sizes=(1, 1, 1, 1), width=8) == models.ResNet(
      stage_sizes=(1, 1, 1, 1), block='basic', width=8)
  # From keyword arguments: the plain forms; backbone_of passes the parser's.
  plain = models.fast_paths.Implementations()
  assert parser.implementations == plain
  assert (backbone.conv, backbone.residual_act) == (plain.conv,
                                                    plain.residual_act)
  cpu = models.fast_paths.for_backend('cpu')
  fast_backbone = models.backbone_of(models.ParsingNetwork(
      num_classes={'a': 3}, backbone='resnet_tiny', implementations=cpu))
  assert (fast_backbone.conv, fast_backbone.residual_act) == (
      cpu.conv, cpu.residual_act)

  schp = models.AugmentCE2P(num_classes={'lip': 20}, backbone='resnet50',
                            width=8, context_features=16, edge_features=8,
                            decoder_features=16, skip_features=8,
                            fusion_features=16)
  schp_logits, _ = jax.eval_shape(schp.apply,
                                  jax.eval_shape(schp.init, key, x), x)
  assert schp_logits['lip'].shape == (2, 8, 8, 20)

  sst = models.SST(domain_names=('a', 'b'), num_classes=(3, 5), dim=8)
  label = jax.ShapeDtypeStruct((2, SIZE, SIZE), jnp.int32)
  domain = jax.ShapeDtypeStruct((2,), jnp.int32)
  sst_vars = jax.eval_shape(sst.init, key, aux, label, domain)
  assert jax.tree.leaves(sst_vars['params'])


@pytest.fixture(scope='module')
def doc_namespace(tmp_path_factory):
  """Runs every python block of docs/reuse.md, in order, in one namespace."""
  root = tmp_path_factory.mktemp('reuse')
  workdir, exported = str(root / 'work'), str(root / 'export')
  helpers.write_workdir(workdir, seed=4)
  export_lib.export(workdir, exported, serialize=False)
  photo = str(root / 'photo.jpg')
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).resize(
      (50, 60), Image.BILINEAR).save(photo)
  with open(DOC) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  assert len(blocks) >= 5
  code = '\n'.join(blocks)
  for placeholder, path in (("'/tmp/sst_export'", exported),
                            ("'photo.jpg'", photo)):
    assert placeholder in code, placeholder
    code = code.replace(placeholder, repr(path))
  namespace = {'__name__': 'reuse_doc'}
  exec(compile(code, DOC, 'exec'), namespace)  # pylint: disable=exec-used
  return namespace, workdir


def test_doc_builds_from_keyword_arguments(doc_namespace):
  ns, _ = doc_namespace
  # ResNet-50 trunk with two heads: about 25M parameters (ResNet-50 alone).
  assert 2.0e7 < ns['num_params'] < 6.0e7
  assert set(ns['shapes']['params']) >= {'backbone', 'head_lip', 'head_atr'}
  # The speed paths change no parameter.
  assert ns['fast_parser'].implementations == models.fast_paths.for_backend(
      jax.default_backend())
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), ns['fast_shapes']) ==
          jax.tree.map(lambda x: (x.shape, x.dtype), ns['shapes']))


def test_doc_loads_the_same_model_from_workdir_and_export(doc_namespace):
  ns, workdir = doc_namespace
  module, variables, info = export_lib.load_model(workdir)
  assert info['domains'] == ns['info']['domains']
  assert info['preprocessing'] == ns['info']['preprocessing']
  logits, _ = module.apply(variables, ns['images'])
  for name, lg in ns['logits'].items():
    np.testing.assert_array_equal(lg, logits[name])
  assert ns['logits'][ns['domain']].shape == (1, SIZE // 4, SIZE // 4,
                                              len(ns['classes']))
  # The photo went in normalized: per-channel mean near 0, not 0..1 pixels.
  assert ns['images'].shape == (1, SIZE, SIZE, 3)
  assert float(jnp.abs(ns['images'].mean())) < 1.5
  assert float(ns['images'].min()) < 0


def test_doc_backbone_alone_is_the_parsers(doc_namespace):
  ns, _ = doc_namespace
  for level in ('res2', 'res5'):
    np.testing.assert_allclose(ns['features'][level], ns['aux'][level],
                               rtol=1e-6, atol=1e-6)


def test_doc_submodules_carry_the_trained_weights(doc_namespace):
  ns, _ = doc_namespace
  head = ns['segmenter_variables']['params']['head']
  want = jnp.einsum('nhwc,cd->nhwd', ns['features']['res5'],
                    head['kernel'][0, 0]) + head['bias']
  np.testing.assert_allclose(ns['foreground'], want, rtol=1e-5, atol=1e-5)
  for name, lg in ns['logits'].items():
    np.testing.assert_allclose(ns['part_logits'][name], lg, rtol=1e-6,
                               atol=1e-6)
  assert ns['boundary'].shape == ns['aux']['decoder'].shape[:3] + (1,)


def test_doc_nnx_wrapper_computes_the_linen_logits(doc_namespace):
  ns, _ = doc_namespace
  for name, lg in ns['logits'].items():
    scale = float(jnp.abs(lg).max())
    np.testing.assert_allclose(ns['nnx_logits'][name], lg, rtol=0,
                               atol=1e-5 * scale)
  np.testing.assert_array_equal(ns['nnx_label'], ns['label'])
  # lazy_init's random variables would give other logits: the update took.
  from flax import nnx  # pylint: disable=g-import-not-at-top
  fresh = nnx.bridge.ToNNX(ns['module'], rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(fresh, ns['images'])
  other, _ = fresh(ns['images'])
  assert not np.allclose(other[ns['domain']], ns['logits'][ns['domain']],
                         atol=1e-3)
