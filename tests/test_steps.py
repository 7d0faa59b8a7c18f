"""The pure steps (``sst_jax/steps.py``): the train step and the predictions.

* ``train_step``: 8 devices give 1 device's update; a non-finite loss skips
  the update; uint8 pixels are normalized inside it (``normalize_images``).
* ``predict_logits``: flip test-time augmentation swaps each domain's
  left/right channels back; ``label_grid_logits`` maps onto the label grid.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from sst_jax import config_lib
from sst_jax import domains as domains_lib
from sst_jax import optim
from sst_jax import parallel
from sst_jax import recipe
from sst_jax import steps
from sst_jax.data import pipeline
from sst_jax.data import transforms


def tiny_setup(arg='sst'):
  """A tiny config, its domain names, models, optimizer and state."""
  config = helpers.tiny_config(arg)
  domains = config_lib.validate_config(config)
  model, sst_model = recipe.build_models(config, domains)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  state = recipe.init_train_state(jax.random.key(0), model=model,
                                 sst_model=sst_model, tx=tx, image_size=32)
  return config, [d.name for d in domains], model, sst_model, tx, state


def host_normalized(image):
  """What the pipeline used to send: float32 ``(pixel - mean) / std``."""
  x = image.astype(np.float32)
  x -= transforms.IMAGENET_MEAN
  x /= transforms.IMAGENET_STD
  return x


# 1. The train step.


def test_train_step_8_devices_equals_1_device():
  config, names, model, sst_model, tx, state = tiny_setup()
  ds = pipeline.train_dataset(names, config.data, 8, seed=0)
  batch = ds[0]
  assert set(batch['domain']) == {0, 1}, 'the batch should mix both domains'
  results = []
  for n in (8, 1):
    mesh = parallel.make_mesh(n)
    repl = parallel.replicated(mesh)
    step = jax.jit(functools.partial(
        steps.train_step, model=model, sst_model=sst_model, tx=tx,
        domain_names=names, cfg=config),
        in_shardings=(repl, parallel.data_sharding(mesh)),
        out_shardings=(repl, repl))
    new_state, metrics = step(jax.device_put(state, repl),
                              parallel.shard_batch(batch, mesh))
    results.append(jax.device_get((new_state.params, new_state.model_state,
                                   metrics['loss'])))
  (p8, s8, l8), (p1, s1, l1) = results
  assert l8 == pytest.approx(l1, rel=1e-5)
  helpers.assert_trees_close(p8, p1)
  helpers.assert_trees_close(s8, s1)
  # The step changed the parameters (so the comparison is not vacuous).
  before = jax.device_get(state.params)
  assert not np.allclose(before['parser']['head_synthetic_pascal']['kernel'],
                         p8['parser']['head_synthetic_pascal']['kernel'])


def test_nonfinite_loss_skips_the_update_and_finite_loss_applies_it():
  config, names, model, sst_model, tx, state = tiny_setup('baseline')
  step = jax.jit(functools.partial(
      steps.train_step, model=model, sst_model=sst_model, tx=tx,
      domain_names=names, cfg=config))
  batch = pipeline.train_dataset(names, config.data, 4, seed=0)[0]
  bad = dict(batch, image=np.where(np.arange(32)[:, None, None] == 5, np.nan,
                                   batch['image']).astype(np.float32))
  before = jax.device_get(state)
  skipped, metrics = step(state, bad)
  assert float(metrics['nonfinite']) == 1.0
  assert int(skipped.step) == int(state.step) + 1
  for part in ('params', 'opt_state', 'model_state'):
    for x, y in zip(jax.tree.leaves(getattr(before, part)),
                    jax.tree.leaves(jax.device_get(getattr(skipped, part)))):
      np.testing.assert_array_equal(y, x, err_msg=part)
  applied, metrics = step(state, batch)
  assert float(metrics['nonfinite']) == 0.0
  for part in ('params', 'opt_state', 'model_state'):
    leaves = zip(jax.tree.leaves(getattr(before, part)),
                 jax.tree.leaves(jax.device_get(getattr(applied, part))))
    assert any(np.asarray(x).dtype.kind == 'f' and not np.array_equal(x, y)
               for x, y in leaves), part


def test_uint8_batches_train_and_evaluate_as_host_normalized_float32():
  config = helpers.tiny_config()
  names, model, state, step = helpers.jit_train_setup(config)
  batch = pipeline.train_dataset(names, config.data, 8, seed=0)[0]
  assert batch['image'].dtype == np.uint8
  assert pipeline.train_batch_spec(config.data, 8)['image'][1] == np.uint8
  np.testing.assert_allclose(steps.normalize_images(batch['image']),
                             host_normalized(batch['image']), rtol=1e-6,
                             atol=1e-6)
  # The same update from the uint8 batch as from the float32 one.
  got_state, got = step(state, batch)
  want_state, want = step(state, dict(batch, image=host_normalized(
      batch['image'])))
  assert float(got['loss']) == pytest.approx(float(want['loss']), rel=1e-5)
  for a, b in zip(jax.tree.leaves(got_state.params),
                  jax.tree.leaves(want_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  # Evaluation: the uint8 canvas with its extent is the float32 canvas
  # evaluation built before, padding exactly 0 (the mean colour).
  batches, _ = pipeline.eval_batches(names[1], 1, config.data, 4)
  batch = next(iter(batches))
  assert batch['image'].dtype == np.uint8
  assert ({k: (v.shape, v.dtype) for k, v in batch.items()} ==
          pipeline.eval_batch_spec(config.data, 4))
  reference = np.zeros(batch['image'].shape, np.float32)
  for i, (h, w) in enumerate(batch['image_hw']):
    reference[i, :h, :w] = host_normalized(batch['image'][i, :h, :w])
  got = steps.normalize_images(batch['image'], batch['image_hw'])
  np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)
  variables = steps.parser_variables(state.params, state.model_state)
  logits = functools.partial(steps.label_grid_logits, model=model,
                             domain_names=tuple(names))
  np.testing.assert_allclose(
      logits(variables, batch), logits(variables, dict(batch, image=reference)),
      rtol=1e-5, atol=1e-5)
  with pytest.raises(TypeError, match='uint8'):
    steps.normalize_images(batch['image'].astype(np.int32))


# 2. Predictions.


class PixelModel(nn.Module):
  """A position-sensitive fake parser: logits depend on x and image content."""
  num_classes: dict

  @nn.compact
  def __call__(self, image, train=False, heads=None):
    names = heads or list(self.num_classes)
    w = image.shape[2]
    ramp = jnp.linspace(-1, 1, w)[None, None, :, None]
    out = {}
    for n in names:
      c = self.num_classes[n]
      base = nn.Conv(c, (3, 3), name=f'head_{n}')(image)
      out[n] = base + ramp * jnp.arange(c)
    return out, {}


@pytest.mark.parametrize('name', ['synthetic_cihp', 'atr', 'lip', 'pascal_person_part'])
def test_flip_tta_swaps_the_right_channels(name):
  d = domains_lib.get_domain(name)
  model = PixelModel({name: d.num_classes})
  image = jax.random.normal(jax.random.key(0), (2, 12, 14, 3))
  variables = model.init(jax.random.key(1), image)
  got = steps.predict_logits(variables, image, model=model, heads=(name,),
                             flip_perms={name: d.flip_permutation})[name]
  plain = model.apply(variables, image)[0][name]
  flipped = model.apply(variables, image[:, :, ::-1])[0][name]
  unflipped = flipped[:, :, ::-1][..., d.flip_permutation]
  expected = jnp.log((jax.nn.softmax(plain) + jax.nn.softmax(unflipped)) / 2)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  if d.flip_pairs:  # Without the swap the result must differ.
    wrong = jnp.log((jax.nn.softmax(plain) +
                     jax.nn.softmax(flipped[:, :, ::-1])) / 2)
    assert not np.allclose(got, wrong, atol=1e-3)
  # SCHP's rule: the mean of the two views' logits.
  mean_logits = steps.predict_logits(
      variables, image, model=model, heads=(name,),
      flip_perms={name: d.flip_permutation}, average='logits')[name]
  np.testing.assert_allclose(mean_logits, (plain + unflipped) / 2, atol=1e-5)
  assert not np.allclose(mean_logits, got, atol=1e-3)


class StrideFourModel(nn.Module):
  """A fake parser whose logits, like the real one's, are at stride 4."""
  num_classes: dict

  @nn.compact
  def __call__(self, image, train=False, heads=None):
    x = nn.avg_pool(image, (4, 4), (4, 4))
    ramp = jnp.linspace(-1, 1, x.shape[2])[None, None, :, None]
    return {n: nn.Conv(self.num_classes[n], (3, 3), name=f'head_{n}')(x) +
               ramp * jnp.arange(self.num_classes[n])
            for n in heads or list(self.num_classes)}, {}


def test_label_grid_logits_compose_the_two_resizes_exactly():
  """One view: the composed [L, h] matrices equal upsample-then-map."""
  names = ('pascal_person_part', 'lip')
  model = StrideFourModel({n: domains_lib.get_domain(n).num_classes
                           for n in names})
  rng = np.random.default_rng(5)
  # Originals smaller and larger than the 32x32 input, non-square, padded
  # into a 56x56 label grid: the resize matrices are far from the identity.
  records = [helpers.random_record(rng, 37, 50),
             helpers.random_record(rng, 50, 29),
             helpers.random_record(rng, 20, 24)]
  examples = [transforms.eval_transform(r, 32, 56) for r in records]
  batch = {k: jnp.asarray(np.stack([e[k] for e in examples]))
           for k in examples[0]}
  batch['domain'] = jnp.asarray([0, 1, 1], jnp.int32)
  variables = model.init(jax.random.key(0), steps.normalize_images(
      batch['image'], batch['image_hw']))
  got = steps.label_grid_logits(variables, batch, model=model,
                                domain_names=names)
  logits = steps.predict_logits(variables, batch['image'], model=model,
                                heads=names, image_hw=batch['image_hw'])
  assert logits['lip'].shape[1:3] == (32, 32)
  own = steps.own_domain_logits(logits, batch['domain'], names)
  want = jnp.einsum('bmw,blwc->blmc', batch['resize_w'],
                    jnp.einsum('blh,bhwc->blwc', batch['resize_h'], own))
  assert got.shape == (3, 56, 56, 20)
  # Sample 0 is PASCAL (7 classes): its padding channels stay out of argmax.
  assert (got[0, :37, :50, 7:] < -1e8).all()
  valid = np.asarray(want) > -1e8
  np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(
      steps.eval_predictions(variables, batch, model=model,
                             domain_names=names), jnp.argmax(want, -1))
