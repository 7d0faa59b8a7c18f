"""SST as drawn: MSA pooling, M_intra, cross matrices, SM losses, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from sst_jax import checkpointing
from sst_jax import config_lib
from sst_jax import optim
from sst_jax import parallel
from sst_jax import recipe
from sst_jax import steps
from sst_jax import train
from sst_jax.models import sst as sst_lib


def _numpy_msa(label, feats, domain, num_domains, num_classes):
  """Class means per domain over the batch, ignore (255) excluded."""
  b, h, w, d = feats.shape
  s = np.zeros((num_domains, num_classes, d))
  present = np.zeros((num_domains, num_classes), bool)
  for k in range(num_domains):
    for c in range(num_classes):
      sel = (domain[:, None, None] == k) & (label == c)
      if sel.any():
        s[k, c] = feats[sel].mean(axis=0)
        present[k, c] = True
  return s, present


def test_msa_pooling_equals_numpy_and_is_global_over_devices():
  rng = np.random.default_rng(0)
  b, h, w, d, k, c = 8, 6, 5, 4, 3, 5
  label = rng.integers(0, c, (b, h, w)).astype(np.int32)
  label[:, 0] = 255                       # ignore pixels are excluded
  label[label == 3] = 255                 # class 3 is absent everywhere
  feats = rng.normal(size=(b, h, w, d)).astype(np.float32)
  domain = rng.integers(0, k, (b,)).astype(np.int32)
  domain[:3] = [0, 1, 2]

  def pool(label, feats, domain):
    masks = sst_lib.soft_label_masks(label, c, (h, w))
    return sst_lib.msa_pool(masks.reshape(b, h * w, c),
                            feats.reshape(b, h * w, d), domain, k)

  want_s, want_present = _numpy_msa(label, feats, domain, k, c)
  one_s, one_present = jax.jit(pool)(label, feats, domain)
  np.testing.assert_allclose(one_s, want_s, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(one_present, want_present)
  assert not np.asarray(one_present)[:, 3].any()

  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8
  data = parallel.data_sharding(mesh)
  sharded = jax.jit(pool, in_shardings=(data, data, data),
                    out_shardings=parallel.replicated(mesh))
  eight_s, eight_present = sharded(label, feats, domain)
  np.testing.assert_allclose(eight_s, one_s, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(eight_present, one_present)


def test_mapping_loss_is_zero_for_the_mapped_image():
  rng = np.random.default_rng(1)
  k, c, d = 2, 4, 6
  s = jnp.asarray(rng.normal(size=(k, c, d)), jnp.float32)
  m = sst_lib.cross_matrices(s, jnp.ones((k, c), bool), 0.5)
  x_j = jnp.asarray(rng.normal(size=(c, d)), jnp.float32)
  x_k = m[0, 1] @ x_j                       # domain 0's nodes: M(0<-1) X^(1)
  dist = sst_lib.mapping_distances(jnp.stack([x_k, x_j]), m)
  np.testing.assert_allclose(dist[0, 1], 0.0, atol=1e-6)
  assert float(jnp.min(dist[1, 0])) > 1e-3  # the other direction is not
  noisy = jnp.stack([x_k + 0.5 * jnp.asarray(rng.normal(size=(c, d))), x_j])
  assert float(jnp.min(sst_lib.mapping_distances(noisy, m)[0, 1])) > 1e-4


def test_cross_matrices_rows_are_distributions_over_present_classes():
  rng = np.random.default_rng(2)
  s = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  present = jnp.asarray(rng.random((3, 5)) > 0.3)
  present = present.at[:, 0].set(True)
  m = np.asarray(sst_lib.cross_matrices(s, present, 0.1))
  assert m.shape == (3, 3, 5, 5)
  np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-5)
  absent = ~np.asarray(present)
  for j in range(3):
    assert (m[:, j][..., absent[j]] == 0).all()


def _setup(arg='sst', domain_list=None, **sst_overrides):
  config = tiny.get_config(arg)
  with config.unlocked():
    if domain_list:
      config.domains = domain_list
    for k, v in sst_overrides.items():
      config.sst[k] = v
  domains = config_lib.validate_config(config)
  model, sst_model = recipe.build_models(config, domains)
  tx = optim.make_optimizer(config.optim, 10)
  state = recipe.init_train_state(jax.random.key(0), model=model,
                                 sst_model=sst_model, tx=tx, image_size=32)
  rng = np.random.default_rng(0)
  n = len(domains)
  batch = {
      'image': rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
      'label': rng.integers(0, 7, (4, 32, 32)).astype(np.int32),
      'domain': (np.arange(4) % n).astype(np.int32)}
  batch['label'][:, :4] = 255
  return config, domains, model, sst_model, state, batch


def _apply(sst_model, state, aux, batch, params=None, train_=True,
           method=None):
  return sst_model.apply(
      {'params': state.params['sst'] if params is None else params,
       'sst_memory': state.model_state['sst_memory']},
      aux, batch['label'], batch['domain'], train=train_,
      mutable=['sst_memory'], method=method)


def test_cross_matrices_for_every_ordered_pair_change_with_s():
  config, domains, model, sst_model, state, batch = _setup(
      domain_list=['synthetic_pascal', 'synthetic_atr', 'synthetic_cihp'])
  variables = steps.parser_variables(state.params, state.model_state)
  _, aux = model.apply(variables, batch['image'], train=False)
  sv = {'params': state.params['sst'],
        'sst_memory': state.model_state['sst_memory']}

  def matrices(aux):
    def fn(module):
      sets = module.node_sets(aux, batch['label'], batch['domain'])
      return sets, module.cross(sets['nodes'][0], sets['s'], sets['present'])
    return sst_model.apply(sv, method=fn)

  _, mats = matrices(aux)
  assert len(mats) == 4                     # static + one per tap
  counts = [d.num_classes for d in domains]
  static = sst_model.apply(sv, method=sst_lib.SST.associations)
  assert len(static) == 6                   # every ordered pair
  for (kn, jn), m in static.items():
    zk = counts[[d.name for d in domains].index(kn)]
    zj = counts[[d.name for d in domains].index(jn)]
    assert m.shape == (zk, zj)
    np.testing.assert_allclose(np.asarray(m).sum(-1), 1.0, rtol=1e-5)
  moved = dict(aux, decoder=aux['decoder'] * 1.5 + 0.3)
  sets, again = matrices(moved)
  np.testing.assert_array_equal(again[0], mats[0])  # static: no data
  assert float(jnp.max(jnp.abs(again[3] - mats[3]))) > 1e-4
  # The perturbation also moves X_1..X_3: each dynamic matrix must be the
  # one built from S_t (over domain j's present classes), not from X_t.
  k, c = len(domains), max(counts)
  for t in range(1, 4):
    want = sst_lib.cross_matrices(sets['s'][t - 1], sets['present'][t - 1],
                                  sst_model.cross_temperature)
    np.testing.assert_allclose(again[t], want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(
        again[t], sst_lib.cross_matrices(sets['nodes'][t], sets['present'][
            t - 1], sst_model.cross_temperature), atol=1e-3)
    # Z_k x Z_j for every ordered pair: no weight on columns past Z_j.
    m_t = np.asarray(again[t])
    assert m_t.shape == (k, k, c, c)
    for a in range(k):
      for b in range(k):
        if a == b:
          continue
        block = m_t[a, b, :counts[a], :counts[b]]
        assert block.shape == (counts[a], counts[b])
        assert (m_t[a, b, :, counts[b]:] == 0).all()
        np.testing.assert_allclose(block.sum(-1), 1.0, rtol=1e-5)
  # And the SM losses of the full module use those matrices.
  (_, metrics), _ = _apply(sst_model, state, moved, batch, train_=False)
  pairs = ~np.eye(k, dtype=bool)            # every domain is in the batch
  for t in range(1, 4):
    m_t = sst_lib.cross_matrices(sets['s'][t - 1], sets['present'][t - 1],
                                 sst_model.cross_temperature)
    rows = pairs[:, :, None] & np.asarray(sets['present'][t - 1])[:, None, :]
    want = sst_lib.masked_mean(
        sst_lib.mapping_distances(sets['nodes'][t], m_t), rows)
    np.testing.assert_allclose(metrics[f'sst_sm{t}'], want, rtol=1e-5)


def test_intra_matrix_is_learned_from_labels_and_row_normalized():
  config, domains, model, sst_model, state, batch = _setup(intra_momentum=0.5)
  # Two classes side by side in every domain-0 image, a third never near.
  label = np.zeros((4, 32, 32), np.int32)
  label[:, 8:24, 4:12] = 1
  label[:, 8:24, 12:20] = 2
  batch = dict(batch, label=label, domain=np.zeros((4,), np.int32))
  variables = steps.parser_variables(state.params, state.model_state)
  _, aux = model.apply(variables, batch['image'], train=False)
  before = state.model_state['sst_memory']
  name = domains[0].name
  np.testing.assert_array_equal(before[f'adjacency_{name}'],
                                np.eye(domains[0].num_classes))
  _, updates = _apply(sst_model, state, aux, batch)
  adj = np.asarray(updates['sst_memory'][f'adjacency_{name}'])
  np.testing.assert_allclose(adj.sum(-1), 1.0, rtol=1e-5)
  assert adj[1, 2] > 0.05 and adj[2, 1] > 0.05   # neighbours
  assert adj[1, 1] > adj[1, 2]
  assert adj[3, 1] == 0 and adj[3, 3] == 1       # never seen: unchanged
  other = domains[1].name                        # no images: unchanged
  np.testing.assert_array_equal(updates['sst_memory'][f'adjacency_{other}'],
                                before[f'adjacency_{other}'])


@pytest.mark.parametrize('branch', ['mse', 'mst'])
def test_mse_and_mst_losses_reach_the_backbone_not_the_heads(branch):
  config, domains, model, sst_model, state, batch = _setup(
      mse_weight=float(branch == 'mse'), mst_weight=float(branch == 'mst'))

  def loss(parser_params):
    params = dict(state.params, parser=parser_params)
    total, (metrics, _) = steps.compute_losses(
        params, state.model_state, batch, model=model,
        sst_model=sst_model, domain_names=[d.name for d in domains], cfg=config)
    return total - metrics['ce']

  grads = jax.grad(loss)(state.params['parser'])
  norm = lambda t: float(jnp.sqrt(sum(jnp.sum(x * x)
                                      for x in jax.tree.leaves(t))))
  assert norm(grads['backbone']) > 1e-6
  assert norm({k: v for k, v in grads.items() if k.startswith('head_')}) == 0


def test_all_zero_weights_reproduce_the_baseline_loss_exactly():
  config, domains, model, sst_model, state, batch = _setup(
      mse_weight=0.0, mst_weight=0.0)
  names = [d.name for d in domains]
  common = dict(model=model, domain_names=names, cfg=config)
  with_sst, (m1, _) = steps.compute_losses(
      state.params, state.model_state, batch, sst_model=sst_model, **common)
  baseline, (m2, _) = steps.compute_losses(
      {'parser': state.params['parser']},
      {'batch_stats': state.model_state['batch_stats']}, batch,
      sst_model=None, **common)
  assert float(with_sst) == float(baseline)
  assert m1['sst_mse'] > 0 and m1['sst_mst'] > 0   # computed, weighted 0


def test_every_batch_holds_every_domain():
  config = tiny.get_config('sst')
  groups = config_lib.batch_groups(config, {})
  assert groups == [({'synthetic_pascal': 1.0}, 4),
                    ({'synthetic_cihp': 1.0}, 4)]
  assert config_lib.batch_groups(tiny.get_config('baseline'), {}) is None
  with config.unlocked():
    config.batch_size = 1
  with pytest.raises(ValueError, match='batch_size=1 cannot hold'):
    config_lib.validate_config(config)


def test_taps_and_options_are_checked():
  """By config_lib.validate_config, naming the field; make_sst builds."""
  config = tiny.get_config('sst')
  for field, good in (('intra', 'adjacency'), ('intra', 'learned'),
                      ('mst_stop_gradient', 'none'),
                      ('mst_stop_gradient', 'mapped')):
    with config.unlocked():
      config.sst[field] = good
    domains = config_lib.validate_config(config)
    assert isinstance(sst_lib.make_sst(config, domains), sst_lib.SST)
  for field, bad in (('taps', ('context', 'decoder')),
                     ('taps', ('context', 'res3', 'decoder')),
                     ('intra', 'graph'), ('intra', 'identity'),
                     ('mst_stop_gradient', 'both')):
    with config.unlocked():
      saved = config.sst[field]
      config.sst[field] = bad
    with pytest.raises(ValueError, match=f'config.sst.{field}'):
      config_lib.validate_config(config)
    with config.unlocked():
      config.sst[field] = saved


def test_extending_with_a_new_domain_keeps_old_parameters(tmp_path):
  old = tiny.get_config('sst')
  with old.unlocked():
    old.total_steps = 2
    old.eval_every = 0
    old.checkpoint_every = 2
    old.eval.num_vis = 0
    old.data.max_eval_examples = 8
  workdir = str(tmp_path / 'old')
  train.train_and_evaluate(old, workdir)
  raw = checkpointing.restore(checkpointing.make_manager(workdir), 2)['state']

  new = tiny.get_config('sst')
  with new.unlocked():
    new.domains = list(old.domains) + ['synthetic_atr']
    new.init_from = workdir
  domains = config_lib.validate_config(new)
  model, sst_model = recipe.build_models(new, domains)
  tx = optim.make_optimizer(new.optim, 10)
  state = recipe.init_train_state(jax.random.key(5), model=model,
                                 sst_model=sst_model, tx=tx, image_size=32)
  params, model_state, added = train.load_init_from(new, domains, state)
  assert added == ['synthetic_atr']
  flat_old = dict(jax.tree_util.tree_leaves_with_path(
      {'params': raw['params'], 'model_state': raw['model_state']}))
  flat_new = dict(jax.tree_util.tree_leaves_with_path(
      {'params': params, 'model_state': model_state}))
  for path, value in flat_old.items():
    np.testing.assert_array_equal(np.asarray(flat_new[path]),
                                  np.asarray(value),
                                  err_msg=jax.tree_util.keystr(path))
  # The new domain adds its head, embeddings and adjacency, nothing shared.
  added_paths = {jax.tree_util.keystr(p) for p in set(flat_new) - set(flat_old)}
  assert added_paths and all('synthetic_atr' in p for p in added_paths), (
      added_paths)
