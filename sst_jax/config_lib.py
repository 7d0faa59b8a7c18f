"""The training config: its fields, their checks and what they imply.

``base_config`` is the config every ``configs/*.py`` file starts from; each
field is documented there once and experiment files only change values.
``validate_config`` checks the fields against each other, and the functions
below it derive what training reads from them (batch composition).
Training, evaluation and the benchmarks all read configs
through this module.
"""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from sst_jax import domains as domains_lib


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # What sst_jax.main runs: 'train' (train.train_and_evaluate) or 'eval'
  # (evaluate.score_latest_checkpoint: score the workdir's latest checkpoint).
  c.mode = 'train'
  c.domains = []              # label-domain names (sst_jax.domains), in order
  # 'universal' (one network, a head per domain) or 'dedicated' (a network
  # for config.target, trained from the source model in config.init_from).
  c.parsing = 'universal'
  c.target = ''               # dedicated parsing: the target domain
  c.init_from = ''            # workdir of a trained model to start from
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 16           # global batch, split over all devices
  c.num_devices = 0           # 0 = all visible devices
  # Entry points: split a CPU-only host into this many devices
  # (parallel.split_cpu; 0 = JAX's default, one device).
  c.cpu_devices = 0
  c.dtype = 'float32'         # compute dtype: 'float32' | 'bfloat16'
  c.log_every = 50
  c.eval_every = 500          # 0 = only at the end
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.async_checkpoints = True
  # jax.transfer_guard over the training steps (train.train_and_evaluate):
  # 'disallow' stops the run at any implicit host<->device transfer (a hidden
  # sync); the batch placement and the metrics fetch are explicit, and
  # checkpoints and evaluations allow theirs. 'log' reports transfers
  # instead, 'allow' checks nothing.
  c.transfer_guard = 'disallow'

  # Multi-process runs (jax.distributed): how long each process waits for
  # the slowest one, in seconds. Hosts compile, load data and write at
  # different speeds (a compilation-cache hit on one, a miss on another).
  c.multihost = ml_collections.ConfigDict()
  c.multihost.init_timeout_s = 300      # to connect to the coordinator
  c.multihost.sync_timeout_s = 1800     # at the start, evaluations and end
  c.multihost.shutdown_timeout_s = 600  # to finish and disconnect

  c.model = ml_collections.ConfigDict()
  c.model.backbone = 'resnet101'
  c.model.width = 64
  c.model.output_stride = 8
  c.model.deep_stem = False
  c.model.dilate_first_block = False  # SCHP's dilation layout
  c.model.context_features = 512
  c.model.decoder_features = 256
  c.model.psp_bins = (1, 2, 3, 6)
  c.model.edge = False

  c.init = ml_collections.ConfigDict()
  c.init.backbone = ''        # ImageNet ResNet or SCHP weights (.pth/.safetensors/.npz)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'sgd'        # 'sgd' | 'adamw'
  c.optim.lr = 7e-3
  c.optim.momentum = 0.9
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 5e-4  # convolution kernels only
  c.optim.schedule = 'poly'   # 'poly' | 'cosine' | 'constant'
  c.optim.poly_power = 0.9
  c.optim.warmup_steps = 0
  c.optim.warmup_init_factor = 0.1

  c.loss = ml_collections.ConfigDict()
  c.loss.edge_weight = 1.0    # used when model.edge
  c.loss.iou_weight = 0.0     # soft-IoU term: every class weighs the same

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ''        # tfds data_dir of the built benchmarks
  c.data.tfds_names = ml_collections.ConfigDict()  # domain -> tfds name
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  # domain -> sampling weight (MIX_WEIGHT for a domain it leaves out)
  c.data.mix = ml_collections.ConfigDict()
  c.data.crop_size = 473
  c.data.crop_width = 0       # 0: square crops; else crop_size x crop_width
  c.data.scale_range = (0.75, 1.25)
  c.data.rotation = 0.0       # max degrees
  c.data.flip = True
  c.data.color_jitter = 0.0
  c.data.eval_input_size = 473
  c.data.eval_label_size = 512  # labels are padded to this square
  c.data.max_eval_examples = 0  # 0 = whole split
  # Decode + augmentation: threads of the training process, or (for
  # many-core hosts) `num_workers` worker processes with `num_threads`
  # threads each, every worker keeping `worker_buffer` batches ready. The
  # batches are the same for any number of threads or workers.
  c.data.num_threads = 2
  c.data.prefetch = 4         # batches read ahead by the threads
  c.data.num_workers = 0      # 0: no worker processes
  c.data.worker_buffer = 2
  # Batches placed on the devices ahead of the step that uses them (2: the
  # next one is copied while the current step runs).
  c.data.device_prefetch = 2
  c.data.cache = False        # keep decoded examples in memory
  c.data.synthetic_size = 128
  c.data.synthetic_seed = 0
  c.data.synthetic_examples = ml_collections.ConfigDict()  # 'dom:split' -> n

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 16      # rounded up to a multiple of the device count
  c.eval.flip = False
  c.eval.scales = (1.0,)
  c.eval.num_vis = 4          # validation images per domain in the PNG grid

  c.sst = ml_collections.ConfigDict()
  c.sst.enabled = True
  c.sst.dim = 256             # node width D (embeddings, S_t, X_t)
  c.sst.mse = True
  c.sst.mst = True
  c.sst.mse_weight = 0.4
  c.sst.mst_weight = 0.4
  # MSA's three taps, coarse to fine along the decoder.
  c.sst.taps = ('context', 'decoder_fuse1', 'decoder')
  # M_intra: 'adjacency' (EMA of the labels' class adjacency) or 'learned'
  # (a trainable matrix per domain).
  c.sst.intra = 'adjacency'
  c.sst.intra_dilation = 2    # pixels at the last tap
  c.sst.intra_momentum = 0.99
  c.sst.temperature = 0.1     # cosine logits of the X_3 (x) F output
  c.sst.cross_temperature = 0.1  # softmax of the cross-domain matrices
  c.sst.mst_stop_gradient = 'none'  # 'none' | 'mapped' (no grad via M X^j)
  # With SST every batch holds batch_size / K images of each of the K
  # domains, so that every node set and every domain pair exists in every
  # step (config_lib.batch_groups).
  # Dedicated parsing: source-domain rows added to every batch of
  # batch_size target rows, split equally over the source domains; the
  # frozen source reads them for MST (0: the target's images only).
  c.sst.dedicated_aux_batch = 0
  return c


# The arguments of ``apply_variant``: at most one variant (or a domain of
# the config, trained alone), then modifiers. ``str | None``: the key alone,
# or ``key=<str>``.
VARIANTS = {'sst': bool, 'baseline': bool, 'msa_mse': bool,
            'dedicated': str | None, 'finetune': str | None}
MODIFIERS = {'domains': str, 'train_examples': str}


def parse_arg(arg: str | None, known: dict[str, Any], source: str,
              domains: Sequence[str] = ()) -> dict[str, Any]:
  """Parses a config file's argument (``--config=<file>:<arg>``).

  The argument is a comma-separated list of ``key`` and ``key=value``
  tokens, e.g. ``'with_lip,baseline,data_dir=/data'``.

  Args:
    arg: the argument; None or '' for none.
    known: the keys the config file takes, with their types: ``bool`` (a
      flag: ``key`` alone), ``str`` or ``int`` (``key=value``), or
      ``str | None`` (either; ``key`` alone gives None).
    source: the config file, for messages.
    domains: label domains a bare token may name (by name or by the suffix
      after ``_``, e.g. ``pascal`` for ``synthetic_pascal``); it is
      returned under ``'domain'``.

  Returns:
    ``{key: value}`` for the keys given (flags: True), in the order given.

  Raises:
    ValueError: naming the token and the keys that ``source`` takes, for an
      unknown key, a value that is missing or has the wrong type, or a key
      given twice.
  """
  args = {}
  for token in (arg or '').split(','):
    token = token.strip()
    if not token:
      continue
    key, has_value, value = (t.strip() for t in token.partition('='))
    kind = known.get(key)
    if key not in known:
      if has_value or not any(d == key or d.endswith('_' + key)
                              for d in domains):
        raise ValueError(
            f'{source}: unknown argument {token!r} in {arg!r}; it takes '
            f'{", ".join(_describe(k, t) for k, t in known.items())}'
            + (f' or a domain of {list(domains)}' if domains else ''))
      key, kind, has_value, value = 'domain', str, True, token
    elif kind is bool and has_value:
      raise ValueError(f'{source}: {key!r} takes no value, got {token!r}')
    elif kind in (str, int) and not has_value:
      raise ValueError(f'{source}: {key!r} needs a value: '
                       f'{key}=<{kind.__name__}>')
    if key in args:
      raise ValueError(f'{source}: {key!r} given twice in {arg!r}')
    if kind is bool:
      args[key] = True
    elif kind is int:
      try:
        args[key] = int(value)
      except ValueError:
        raise ValueError(f'{source}: {key}={value!r} is not an integer'
                         ) from None
    else:
      args[key] = value if has_value else None
  return args


def _describe(key: str, kind) -> str:
  if kind is bool:
    return key
  if kind in (str, int):
    return f'{key}=<{kind.__name__}>'
  return f'{key}[=<str>]'


def apply_variant(config: ml_collections.ConfigDict,
                  args: dict[str, Any]) -> ml_collections.ConfigDict:
  """Applies a named ablation variant, then locks the config.

  ``args`` (from :func:`parse_arg` with ``VARIANTS``, optionally
  ``MODIFIERS``, and the config's domains) name at most one variant:
  ``sst`` (default: the config's SST), ``baseline`` (modules and losses
  off), a domain e.g. ``pascal`` (that synthetic/real domain alone,
  baseline), ``dedicated`` / ``dedicated=<domain>`` (dedicated parsing of
  that target from the model in ``config.init_from``), ``finetune`` /
  ``finetune=<domain>`` (the same target started from
  ``config.init_from`` and trained on its own images only, without MST),
  ``msa_mse`` (MST off).

  Modifiers may follow: ``domains=<suffix>+<suffix>...`` trains on those
  domains only (e.g. ``sst,domains=pascal+cihp``, the scalability rows of
  the ablation) and ``train_examples=<suffix>:<n>`` caps a synthetic
  domain's training images (e.g. ``sst,train_examples=pascal:100``, the
  low-data rows).

  Raises:
    ValueError: for two variants, or a modifier or domain that does not
      resolve.
  """
  variants = [k for k in args if k in VARIANTS or k == 'domain']
  if len(variants) > 1:
    raise ValueError(f'one variant at most, got {variants}')
  variant = variants[0] if variants else 'sst'
  if variant == 'baseline':
    disable_sst(config)
  elif variant == 'msa_mse':
    config.sst.mst = False
    config.sst.mst_weight = 0.0
  elif variant in ('dedicated', 'finetune'):
    config.parsing = 'dedicated'
    config.target = _resolve(config, args[variant] or config.domains[0])
    config.data.mix = ml_collections.ConfigDict()
    if variant == 'finetune':
      config.sst.mst = False
      config.sst.mst_weight = 0.0
      config.sst.dedicated_aux_batch = 0
  elif variant == 'domain':
    _keep_domains(config, [_resolve(config, args['domain'])])
    disable_sst(config)
  for key, value in args.items():  # the modifiers, in the order given
    if key == 'domains':
      _keep_domains(config, [_resolve(config, d) for d in value.split('+')])
    elif key == 'train_examples':
      name, sep, count = value.partition(':')
      if not sep or not count.isdigit():
        raise ValueError('train_examples=<domain>:<n> caps a domain\'s '
                         f'training images, got {value!r}')
      config.data.synthetic_examples[
          f'{_resolve(config, name)}:train'] = int(count)
  config.lock()
  return config


def _keep_domains(config, names: list[str]) -> None:
  config.domains = names
  config.data.mix = ml_collections.ConfigDict(
      {k: v for k, v in config.data.mix.items() if k in names})


def disable_sst(config):
  config.sst.enabled = False
  for k in ('mse_weight', 'mst_weight'):
    config.sst[k] = 0.0


def _resolve(config, name: str) -> str:
  for d in config.domains:
    if d == name or d.endswith('_' + name):
      return d
  raise ValueError(f'variant names domain {name!r}, not one of '
                   f'{list(config.domains)}')


# A domain's sampling weight where ``config.data.mix`` leaves it out.
MIX_WEIGHT = 1.0
# The parser features (``aux``) that can serve as SST taps.
SST_TAPS = ('res2', 'res5', 'context', 'decoder_fuse1', 'decoder')


def mix_weights(mix, names: Sequence[str]) -> dict[str, float]:
  """``{name: sampling weight}`` of ``names`` under ``mix`` (``data.mix``)."""
  return {n: float(mix.get(n, MIX_WEIGHT)) for n in names}


def _check_choice(value, field: str, choices: Sequence[str]) -> None:
  if value not in choices:
    *rest, last = [repr(c) for c in choices]
    raise ValueError(f'config.{field} must be {", ".join(rest)} or {last}, '
                     f'got {value!r}')


def validate_config(config) -> tuple[domains_lib.Domain, ...]:
  """Checks every field's value and the fields against each other.

  The one place config values are checked: the modules that read a config
  afterwards take it as valid. Returns the configured domains.
  """
  if not config.domains:
    raise ValueError('config.domains is empty: name at least one label domain')
  domains = domains_lib.get_domains(list(config.domains))
  _check_choice(config.parsing, 'parsing', ('universal', 'dedicated'))
  if config.parsing == 'dedicated' and config.target not in config.domains:
    raise ValueError(f'dedicated parsing: config.target={config.target!r} '
                     f'is not one of config.domains {list(config.domains)}')
  _check_choice(config.mode, 'mode', ('train', 'eval'))
  _check_choice(config.dtype, 'dtype', ('float32', 'bfloat16'))
  if config.cpu_devices < 0:
    raise ValueError(f'config.cpu_devices must be >= 0, got '
                     f'{config.cpu_devices}')
  _check_choice(config.optim.name, 'optim.name', ('sgd', 'adamw'))
  _check_choice(config.optim.schedule, 'optim.schedule',
                ('poly', 'cosine', 'constant'))
  data = config.data
  if data.crop_size <= 0 or data.crop_width < 0:
    raise ValueError('config.data.crop_size must be > 0 and '
                     'config.data.crop_width >= 0 (0: square), got '
                     f'{data.crop_size} and {data.crop_width}')
  mix = dict(data.mix) if data.mix else {}
  unknown = set(mix) - set(config.domains)
  if unknown:
    raise ValueError(f'config.data.mix names domains not in config.domains: '
                     f'{sorted(unknown)}')
  if not any(w > 0 for w in mix_weights(mix, config.domains).values()):
    raise ValueError('config.data.mix gives every domain weight 0')
  sst = config.sst
  unknown = [t for t in sst.taps if t not in SST_TAPS]
  if unknown or len(sst.taps) != 3:
    raise ValueError(f'config.sst.taps must be three features of the parser '
                     f'{SST_TAPS}, got {tuple(sst.taps)}')
  _check_choice(sst.intra, 'sst.intra', ('adjacency', 'learned'))
  _check_choice(sst.mst_stop_gradient, 'sst.mst_stop_gradient',
                ('none', 'mapped'))
  aux = config.sst.dedicated_aux_batch
  if config.sst.enabled and config.parsing == 'dedicated':
    if not config.init_from:
      raise ValueError(
          "config.parsing='dedicated' starts from a trained source model: "
          'set config.init_from to its workdir')
    if bool(config.sst.mst) != bool(aux):
      raise ValueError(
          'dedicated parsing: the frozen source reads '
          'config.sst.dedicated_aux_batch rows of source images for MST; '
          'set both (sst.mst=True and dedicated_aux_batch > 0) or neither, '
          f'got sst.mst={config.sst.mst} and dedicated_aux_batch={aux}')
  if (config.sst.enabled and config.parsing == 'universal'
      and config.batch_size < len(config.domains)):
    raise ValueError(
        f'config.batch_size={config.batch_size} cannot hold an image of each '
        f'of the {len(config.domains)} domains, as every SST batch does')
  if not isinstance(aux, int) or aux < 0:
    raise ValueError('config.sst.dedicated_aux_batch must be an integer >= 0, '
                     f'got {aux!r}')
  if aux and config.parsing == 'dedicated' and len(config.domains) < 2:
    raise ValueError('config.sst.dedicated_aux_batch needs at least one '
                     'domain besides the target in config.domains')
  return domains


def dedicated_aux_batch(config) -> int:
  """Other-domain rows added to each dedicated batch (0: none added)."""
  if config.parsing != 'dedicated':
    return 0
  return int(config.sst.dedicated_aux_batch)


def dedicated_source(config) -> bool:
  """Whether training keeps a frozen source (dedicated parsing as drawn).

  The frozen copy of the ``config.init_from`` model lives in
  ``model_state['frozen']`` (saved with every checkpoint, so a resumed run
  needs nothing else) and reads the source rows of every batch for MST.
  """
  return (config.parsing == 'dedicated' and config.sst.enabled
          and bool(config.sst.mst)
          and dedicated_aux_batch(config) > 0)


def global_batch_size(config) -> int:
  """Rows of every training batch: ``batch_size`` plus dedicated aux rows."""
  return config.batch_size + dedicated_aux_batch(config)


def batch_groups(config, mix):
  """Fixed batch composition for ``pipeline.train_dataset`` (None: mixed).

  Universal SST: every batch holds every domain that ``mix`` gives a weight
  > 0, in equal shares. Dedicated training with ``sst.dedicated_aux_batch = A > 0``: every batch
  holds ``batch_size`` target samples and ``A`` samples of the other
  domains, mixed with ``mix``; so the target sees as many images per step
  as a single-domain run with the same ``batch_size``.
  """
  aux = dedicated_aux_batch(config)
  weights = mix_weights(mix, config.domains)
  if aux:
    others = {n: w for n, w in mix.items() if n != config.target}
    if dedicated_source(config):
      # Every source domain in every step, in equal shares.
      used = [n for n in config.domains
              if n != config.target and weights[n] > 0]
      rows, extra = divmod(aux, len(used))
      return [({config.target: 1.0}, config.batch_size)] + [
          ({n: 1.0}, rows + (i < extra)) for i, n in enumerate(used)
          if rows + (i < extra)]
    return [({config.target: 1.0}, config.batch_size), (others, aux)]
  if config.sst.enabled:
    # SST as drawn: every step holds every domain in use (its node sets and
    # every domain pair exist in each step), in equal shares.
    used = [n for n in config.domains if weights[n] > 0]
    rows, extra = divmod(config.batch_size, len(used))
    return [({n: 1.0}, rows + (i < extra)) for i, n in enumerate(used)]
  return None
