"""SST's first reconstruction (sst.variant='first'): references, masking,
stop-gradients, shapes, zero-cost baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from sst_jax import checkpointing
from sst_jax import domains as domains_lib
from sst_jax import optim
from sst_jax import steps
from sst_jax import train
from sst_jax.models import parser as parser_lib
from sst_jax.models import sst_first as sst_lib


def test_masked_pool_matches_numpy():
  rng = np.random.default_rng(0)
  masks = rng.random((2, 30, 4)).astype(np.float32)
  masks[1, :, 2] = 0.0  # an absent class
  feats = rng.normal(size=(2, 30, 5)).astype(np.float32)
  got = np.asarray(sst_lib.masked_pool(masks, feats))
  want = np.zeros((2, 4, 5))
  for b in range(2):
    for c in range(4):
      num = sum(masks[b, p, c] * feats[b, p] for p in range(30))
      want[b, c] = num / (masks[b, :, c].sum() + 1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert not got[1, 2].any()


def test_soft_label_masks_are_area_fractions_without_ignore():
  label = np.zeros((1, 4, 4), np.int32)
  label[0, :2, :2] = 1
  label[0, 0, 0] = 255
  m = np.asarray(sst_lib.soft_label_masks(jnp.asarray(label), 2, (2, 2)))
  np.testing.assert_allclose(m[0, 0, 0], [0.0, 0.75])   # 3 of 4 are class 1
  np.testing.assert_allclose(m[0, 1, 1], [1.0, 0.0])


def test_absent_classes_get_zero_attention():
  module = sst_lib.ClassAttention(8)
  q = jax.random.normal(jax.random.key(0), (3, 5, 8))
  k = jax.random.normal(jax.random.key(1), (3, 6, 8))
  mask = jnp.array([[1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1],
                    [0, 0, 0, 0, 0, 0]], bool)
  params = module.init(jax.random.key(2), q, k, mask)
  out, attn, _ = module.apply(params, q, k, mask)
  attn = np.asarray(attn)
  assert (attn[0][:, [1, 4]] == 0).all()
  np.testing.assert_allclose(attn[0].sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(attn[1][:, 5], 1.0)
  assert (attn[2] == 0).all() and np.isfinite(np.asarray(out)).all()


def test_query_folded_attention_is_class_attention():
  # Same parameter tree and initial values as ClassAttention, and the same
  # outputs and gradients, including rows whose keys are all masked.
  q = jax.random.normal(jax.random.key(0), (3, 40, 8))
  k = jax.random.normal(jax.random.key(1), (3, 6, 8))
  mask = jnp.array([[1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1],
                    [0, 0, 0, 0, 0, 0]], bool)
  plain, folded = sst_lib.ClassAttention(8), sst_lib.QueryFoldedAttention(8)
  params = plain.init(jax.random.key(2), q, k, mask)
  folded_params = folded.init(jax.random.key(2), q, k, mask)
  assert jax.tree.structure(params) == jax.tree.structure(folded_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(folded_params)):
    np.testing.assert_array_equal(a, b)
  # Non-zero biases, so the folded bias terms are exercised.
  params = jax.tree.map(
      lambda x: x + 0.1 * jax.random.normal(jax.random.key(3), x.shape),
      params)

  def outputs(p, q):
    return plain.apply(p, q, k, mask)[0], folded.apply(p, q, k, mask)
  want, got = outputs(params, q)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[2], jnp.broadcast_to(
      params['params']['out']['bias'], got[2].shape), rtol=1e-6)
  grads = [jax.grad(lambda p, q, i=i: jnp.sum(jnp.sin(outputs(p, q)[i])),
                    argnums=(0, 1))(params, q) for i in (0, 1)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_own_classifier_is_every_head_then_the_own_pick():
  module = sst_lib.SST(domain_names=('a', 'b', 'c'), num_classes=(3, 7, 5),
                       dim=8)
  x = jax.random.normal(jax.random.key(0), (4, 5, 6, 8))
  domain = jnp.asarray([1, 0, 2, 1])

  def own(module, x, domain):
    kernel, bias = module._own_classifier(module.mse_cls, domain)
    return jnp.einsum('bhwd,bdc->bhwc', x, kernel) + bias[:, None, None, :]
  variables = module.init(jax.random.key(1), x, domain, method=own)
  params = variables['params']
  # Non-zero biases, so a wrong bias pick shows.
  params = jax.tree.map(
      lambda v: v + jax.random.normal(jax.random.key(2), v.shape), params)
  got = np.asarray(module.apply(dict(variables, params=params), x, domain,
                                method=own))
  assert got.shape == (4, 5, 6, 7)
  for b, k in enumerate(np.asarray(domain)):
    dense = params[f'mse_cls_{"abc"[k]}']
    want = np.asarray(x[b] @ dense['kernel'] + dense['bias'])
    c = module.num_classes[k]
    np.testing.assert_allclose(got[b, ..., :c], want, rtol=1e-5, atol=1e-5)
    assert (got[b, ..., c:] == sst_lib.NEG_INF).all()


def test_multiscale_prototypes_match_per_scale_pooling():
  """MSA prototypes: the softmax-weighted sum over scales of each scale's
  masked average (own domain: area-resized ground truth; other domains:
  their predicted probabilities), computed here scale by scale in numpy."""
  names, counts = ('a', 'b', 'c'), (3, 6, 4)
  module = sst_lib.SST(domain_names=names, num_classes=counts, dim=8,
                       scales=('res2', 'context', 'decoder'))
  rng = np.random.default_rng(0)
  bsz, grid = 3, (8, 4)
  sizes = {'res2': grid, 'context': (2, 1), 'decoder': grid}
  aux = {s: rng.standard_normal((bsz,) + hw + (5,)).astype(np.float32)
         for s, hw in sizes.items()}
  logits = {n: rng.standard_normal((bsz,) + grid + (c,)).astype(np.float32)
            for n, c in zip(names, counts)}
  label = rng.integers(0, 6, (bsz, 32, 16)).astype(np.uint8)
  label[0, :4] = 255
  domain = np.asarray([1, 0, 2])

  def aggregate(module, *args):
    return module.aggregate(*args)
  variables = module.init(jax.random.key(0), logits, aux, label, domain,
                          method=aggregate)
  params = jax.tree.map(lambda v: v + rng.standard_normal(v.shape).astype(
      np.float32), variables['params'])
  _, protos, _, _ = module.apply(dict(variables, params=params), logits, aux,
                                 label, domain, method=aggregate)

  def area(x, hw):  # [H, W, C] -> mean over whole cells
    h, w = hw
    return x.reshape(h, x.shape[0] // h, w, x.shape[1] // w, -1).mean((1, 3))

  weights = np.exp(params['scale_weights']) / np.exp(
      params['scale_weights']).sum()
  want = np.zeros((bsz, 3, 6, 8))
  for b in range(bsz):
    for k, (name, c) in enumerate(zip(names, counts)):
      for w, s in zip(weights, module.scales):
        proj = params[f'proj_{s}']
        f = aux[s][b] @ proj['kernel'] + proj['bias']
        if k == domain[b]:
          onehot = np.eye(256)[label[b]][..., :c]
          m = area(onehot, sizes[s])
        else:
          e = np.exp(logits[name][b] - logits[name][b].max(-1, keepdims=True))
          m = area(e / e.sum(-1, keepdims=True), sizes[s])
        m, f = m.reshape(-1, c), f.reshape(-1, 8)
        want[b, k, :c] += w * (m.T @ f) / (m.sum(0)[:, None] + 1e-6)
  np.testing.assert_allclose(np.asarray(protos), want, rtol=1e-4, atol=1e-4)


def test_cooccurrence_prior_rows():
  masks = np.zeros((1, 6, 6, 3), np.float32)
  masks[0, :, :3, 0] = 1
  masks[0, :, 3:, 1] = 1   # class 2 absent, classes 0 and 1 touch
  prior = np.asarray(sst_lib.cooccurrence_prior(jnp.asarray(masks), 1))
  np.testing.assert_allclose(prior[0, :2].sum(-1), 1.0, rtol=1e-5)
  assert prior[0, 0, 1] > 0 and prior[0, 2].sum() == 0


# ---------------------------------------------------------------------------
# The SST module inside the loss.
# ---------------------------------------------------------------------------


def _setup(arg='first', domain_list=None, **sst_overrides):
  config = tiny.get_config(arg)
  with config.unlocked():
    if domain_list:
      config.domains = domain_list
    for k, v in sst_overrides.items():
      config.sst[k] = v
  domains = train.validate_config(config)
  model, sst_model = train.build_models(config, domains)
  tx = optim.make_optimizer(config.optim, 10)
  state = train.init_train_state(jax.random.key(0), model=model,
                                 sst_model=sst_model, tx=tx, image_size=32)
  rng = np.random.default_rng(0)
  n = len(domains)
  batch = {
      'image': rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
      'label': rng.integers(0, 7, (4, 32, 32)).astype(np.int32),
      'domain': (np.arange(4) % n).astype(np.int32)}
  batch['label'][:, :4] = 255
  return config, domains, model, sst_model, state, batch


def _sst_loss_fn(model, sst_model, state, batch):
  """SST loss as a function of (logits, aux, sst params)."""
  variables = steps.parser_variables(state.params, state.model_state)
  logits, aux = model.apply(variables, batch['image'], train=False)

  def fn(logits, aux, sst_params):
    (loss, _), _ = sst_model.apply(
        {'params': sst_params, 'sst_memory': state.model_state['sst_memory']},
        logits, aux, batch['label'], batch['domain'], train=True,
        rngs={'dropout': jax.random.key(0)}, mutable=['sst_memory'])
    return loss
  return fn, logits, aux


def _norm(tree):
  return float(optax_global_norm(tree))


def optax_global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize('branch', ['mse', 'mst'])
def test_mse_and_mst_losses_reach_the_backbone(branch):
  config, domains, model, sst_model, state, batch = _setup(
      mse_weight=float(branch == 'mse'), mst_weight=float(branch == 'mst'),
      cons_weight=0.0, kd_weight=0.0)

  def loss(parser_params):
    params = dict(state.params, parser=parser_params)
    total, (metrics, _) = steps.compute_losses(
        params, state.model_state, batch, jax.random.key(0), model=model,
        sst_model=sst_model, domain_names=[d.name for d in domains], cfg=config)
    return total - metrics['ce']

  grads = jax.grad(loss)(state.params['parser'])
  assert _norm(grads['backbone']) > 1e-6
  # The heads are not on the path of the auxiliary classifiers.
  assert _norm({k: v for k, v in grads.items() if k.startswith('head_')}) == 0


def test_stop_gradients_sit_where_specified():
  # MSE + MST only: other domains' predictions enter as stop-gradient masks,
  # so no head receives gradient from L_mse / L_mst.
  _, _, model, sst_model, state, batch = _setup(cons_weight=0.0,
                                                kd_weight=0.0)
  fn, logits, aux = _sst_loss_fn(model, sst_model, state, batch)
  g_logits, g_aux, g_sst = jax.grad(fn, argnums=(0, 1, 2))(
      logits, aux, state.params['sst'])
  assert _norm(g_logits) == 0.0
  assert _norm(g_aux['decoder']) > 0 and _norm(g_aux['context']) > 0
  assert _norm(g_sst) > 0

  # Self-distillation only: the teacher is stop-gradient (no gradient into
  # SST parameters or features), the student head gets gradient.
  _, _, model, sst_model, state, batch = _setup(
      mse_weight=0.0, mst_weight=0.0, cons_weight=0.0, kd_weight=1.0)
  fn, logits, aux = _sst_loss_fn(model, sst_model, state, batch)
  g_logits, g_aux, g_sst = jax.grad(fn, argnums=(0, 1, 2))(
      logits, aux, state.params['sst'])
  assert _norm(g_sst) == 0.0 and _norm(g_aux) == 0.0
  assert _norm(g_logits) > 0

  # Consistency only: trains the *other* heads through the transition.
  _, domains, model, sst_model, state, batch = _setup(
      mse_weight=0.0, mst_weight=0.0, cons_weight=1.0, kd_weight=0.0)
  # Fill the memory so transitions exist.
  variables = steps.parser_variables(state.params, state.model_state)
  logits, aux = model.apply(variables, batch['image'], train=False)
  _, updates = sst_model.apply(
      {'params': state.params['sst'],
       'sst_memory': state.model_state['sst_memory']}, logits, aux,
      batch['label'], batch['domain'], train=True, mutable=['sst_memory'])
  state = state.replace(model_state=dict(state.model_state,
                                         sst_memory=updates['sst_memory']))
  fn, logits, aux = _sst_loss_fn(model, sst_model, state, batch)
  g_logits = jax.grad(fn)(logits, aux, state.params['sst'])
  for name in g_logits:
    assert _norm(g_logits[name]) > 0, name


def test_all_zero_weights_reproduce_the_baseline_loss_exactly():
  config, domains, model, sst_model, state, batch = _setup(
      mse_weight=0.0, mst_weight=0.0, cons_weight=0.0, kd_weight=0.0)
  names = [d.name for d in domains]
  common = dict(model=model, domain_names=names, cfg=config)
  with_sst, (m1, _) = steps.compute_losses(
      state.params, state.model_state, batch, jax.random.key(0),
      sst_model=sst_model, **common)
  baseline, (m2, _) = steps.compute_losses(
      {'parser': state.params['parser']},
      {'batch_stats': state.model_state['batch_stats']}, batch,
      jax.random.key(0), sst_model=None, **common)
  assert float(with_sst) == float(baseline) == float(m2['ce'])


def test_rampup_scales_only_the_kd_and_cons_terms():
  config, domains, model, sst_model, state, batch = _setup(rampup_steps=100)
  names = [d.name for d in domains]
  common = dict(model=model, sst_model=sst_model, domain_names=names,
                cfg=config)
  args = (state.params, state.model_state, batch, jax.random.key(0))
  ramped, (m0, _) = steps.compute_losses(*args, step=jnp.asarray(20),
                                         **common)
  full, (m1, _) = steps.compute_losses(*args, **common)
  for key in ('ce', 'sst_mse', 'sst_mst', 'sst_kd', 'sst_cons'):
    np.testing.assert_allclose(m0[key], m1[key], rtol=1e-6)
  s = config.sst
  late = s.kd_weight * m1['sst_kd'] + s.cons_weight * m1['sst_cons']
  assert float(late) > 0
  np.testing.assert_allclose(
      full - ramped, (1 - steps.sst_rampup(20, 100)) * late, rtol=1e-4)


@pytest.mark.parametrize('counts', [(3, 5), (7, 2, 11)])
def test_association_shapes_for_any_class_counts(counts):
  doms = []
  for i, c in enumerate(counts):
    doms.append(domains_lib.register(domains_lib.Domain(
        f'test_assoc_{i}_{c}', tuple(f'c{j}' for j in range(c)))))
  sst_model = sst_lib.SST(domain_names=tuple(d.name for d in doms),
                          num_classes=counts, dim=8, scales=('decoder',))
  model = parser_lib.Parser({d.name: d.num_classes for d in doms},
                            backbone='resnet_tiny', width=8,
                            context_features=8, decoder_features=8,
                            psp_bins=(1,))
  image = jnp.zeros((2, 16, 16, 3))
  v = model.init(jax.random.key(0), image)
  logits, aux = model.apply(v, image)
  label = jnp.zeros((2, 16, 16), jnp.int32)
  dom = jnp.arange(2) % len(doms)
  sv = sst_model.init(jax.random.key(1), logits, aux, label, dom, train=False)
  _, upd = sst_model.apply(sv, logits, aux, label, dom, mutable=['sst_memory'])
  sv = dict(sv, sst_memory=upd['sst_memory'])
  assoc = sst_model.apply(sv, method=sst_lib.SST.associations)
  assert len(assoc) == len(counts) * (len(counts) - 1)
  for (k, j), m in assoc.items():
    ck = counts[[d.name for d in doms].index(k)]
    cj = counts[[d.name for d in doms].index(j)]
    assert m.shape == (ck, cj)
  t = sst_model.apply(sv, doms[0].name, method=sst_lib.SST.transitions)
  for j, m in t.items():
    assert m.shape == (counts[[d.name for d in doms].index(j)], counts[0])


def test_extending_with_a_new_domain_keeps_old_parameters(tmp_path):
  old = tiny.get_config('first')
  with old.unlocked():
    old.total_steps = 2
    old.eval_every = 0
    old.checkpoint_every = 2
    old.eval.num_vis = 0
    old.data.max_eval_examples = 8
  workdir = str(tmp_path / 'old')
  train.train_and_evaluate(old, workdir)
  raw = checkpointing.restore_state(checkpointing.make_manager(workdir), 2)

  new = tiny.get_config('first')
  with new.unlocked():
    new.domains = list(old.domains) + ['synthetic_atr']
    new.init_from = workdir
  domains = train.validate_config(new)
  model, sst_model = train.build_models(new, domains)
  tx = optim.make_optimizer(new.optim, 10)
  state = train.init_train_state(jax.random.key(5), model=model,
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
  assert 'head_synthetic_atr' in params['parser']
  assert 'synthetic_atr' in model_state['sst_memory']
  assert set(flat_new) > set(flat_old)


def test_scales_must_be_parser_features_ending_with_the_decoder():
  config = tiny.get_config('first')
  domains = train.validate_config(config)
  for bad in (('res3', 'decoder'), ('decoder', 'context'), ()):
    with config.unlocked():
      config.sst.scales = bad
    with pytest.raises(ValueError, match='config.sst.scales'):
      sst_lib.make_sst(config, domains)
  with config.unlocked():
    config.sst.scales = ('res2', 'context', 'decoder')
  assert sst_lib.make_sst(config, domains).scales == ('res2', 'context',
                                                      'decoder')
