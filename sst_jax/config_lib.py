"""The base training config every ``configs/*.py`` file starts from.

Each field is documented here once; experiment files only change values.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'train'            # 'train' | 'eval'
  c.domains = []              # label-domain names (sst_jax.domains), in order
  c.mode_sst = 'universal'    # 'universal' | 'dedicated'
  c.target = ''               # dedicated mode: the target domain
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
  # 3x3 convs over concatenations with upsampled inputs (PSP bottleneck,
  # decoder fuse1) mix the small inputs before upsampling them: same
  # parameters and outputs as the literal concatenation (False).
  c.model.factored_convs = True
  c.model.edge = False
  # KxK convolutions' kernel gradient: 'auto' (matrix products per kernel
  # tap on CPU, XLA's convolution elsewhere), 'xla' or 'matmul'.
  c.model.conv_kernel_grad = 'auto'
  c.model.residual_relu = 'select'  # 'select' | 'max' (layers.relu)

  c.init = ml_collections.ConfigDict()
  c.init.backbone = ''        # ImageNet ResNet or SCHP weights (.pth/.safetensors/.npz)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'sgd'        # 'sgd' | 'adamw'
  c.optim.lr = 7e-3
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 5e-4
  c.optim.decay_all = False   # also decay BatchNorm scales and biases
  c.optim.schedule = 'poly'   # 'poly' | 'cosine' | 'constant'
  c.optim.poly_power = 0.9
  c.optim.end_lr_factor = 0.0
  c.optim.warmup_steps = 0
  c.optim.warmup_init_factor = 0.1
  c.optim.grad_clip_norm = 0.0
  # Optional restart: the last `restart_steps` steps warm up again (linearly
  # from 0 over `restart_warmup_steps`) to `restart_lr`, then decay (cosine)
  # to 0, e.g. over a final phase of larger crops (data.final_crop_steps).
  c.optim.restart_steps = 0
  c.optim.restart_lr = 0.0
  c.optim.restart_warmup_steps = 0

  c.loss = ml_collections.ConfigDict()
  c.loss.edge_weight = 1.0    # used when model.edge
  c.loss.iou_weight = 0.0     # soft-IoU term: every class weighs the same

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ''        # tfds data_dir of the built benchmarks
  c.data.tfds_names = ml_collections.ConfigDict()  # domain -> tfds name
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.mix = ml_collections.ConfigDict()  # domain -> sampling weight (1.0)
  c.data.batching = 'mixed'   # 'mixed' | 'per_domain'
  c.data.crop_size = 473
  c.data.crop_width = 0       # 0: square crops; else crop_size x crop_width
  c.data.scale_range = (0.75, 1.25)
  # Optional last phase: the final `final_crop_steps` steps train on square
  # `final_crop_size` crops (0: off), e.g. whole images after small crops.
  c.data.final_crop_size = 0
  c.data.final_crop_steps = 0
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
  # 'drawn': MSA, the SP chain and the SM chain as the paper's figures draw
  # them (sst_jax/models/sst.py); 'first': the first reconstruction
  # (sst_jax/models/sst_first.py), kept for the ablation.
  c.sst.variant = 'drawn'
  c.sst.dim = 256             # node / prototype width D
  c.sst.mse = True
  c.sst.mst = True
  c.sst.mse_weight = 0.4
  c.sst.mst_weight = 0.4
  # variant='drawn'. MSA's three taps, coarse to fine along the decoder.
  c.sst.taps = ('context', 'decoder_fuse1', 'decoder')
  # M_intra: 'adjacency' (EMA of the labels' class adjacency), 'learned' (a
  # trainable matrix per domain) or 'identity'.
  c.sst.intra = 'adjacency'
  c.sst.intra_dilation = 2    # pixels at the finest tap
  c.sst.intra_momentum = 0.99
  c.sst.temperature = 0.1     # cosine logits of the X_3 (x) F output
  c.sst.cross_temperature = 0.1  # softmax of the cross-domain matrices
  c.sst.mst_stop_gradient = 'none'  # 'none' | 'mapped' (no grad via M X^j)
  # Every batch holds batch_size / K images of each of the K domains, so
  # that every node set and every domain pair exists in every step.
  c.sst.fixed_batch = True
  # variant='first'.
  c.sst.scales = ('context', 'decoder')  # aux features used as scales
  c.sst.memory_momentum = 0.9
  c.sst.prior = 'bias'        # 'bias' | 'kl' | 'none'
  c.sst.prior_dilation = 2    # pixels, at the prior's scale
  c.sst.prior_weight = 0.1    # weight of the KL prior loss (prior='kl')
  c.sst.other_prototypes = 'predicted'  # 'predicted' | 'memory'
  c.sst.cons_weight = 0.1
  c.sst.kd_weight = 0.5
  c.sst.kd_temperature = 2.0
  c.sst.rampup_steps = 0      # kd/cons weights ramp up over these steps
  c.sst.dedicated_other_weight = 1.0  # dedicated: mix weight of other domains
  # Dedicated: rows of other-domain samples added to every batch of
  # batch_size target samples (0: the target and the others share the batch
  # by their mix weights).
  c.sst.dedicated_aux_batch = 0
  return c


def apply_variant(config: ml_collections.ConfigDict,
                  arg: str | None) -> ml_collections.ConfigDict:
  """Applies a named ablation variant, then locks the config.

  Variants: ``sst`` (default: the config's SST), ``drawn`` / ``first``
  (SST as the paper draws it / its first reconstruction, i.e.
  ``sst.variant``), ``baseline`` (modules and losses off),
  ``<domain-suffix>`` e.g. ``pascal`` (that synthetic/real domain alone,
  baseline), ``dedicated`` / ``dedicated=<domain>`` (the target sampled
  with weight 1, the others with ``sst.dedicated_other_weight``; replaces
  ``data.mix``), ``msa_mse``, ``msa_mst``.

  Modifiers may follow the variant, comma-separated:
  ``domains=<suffix>+<suffix>...`` trains on those domains only (e.g.
  ``sst,domains=pascal+cihp``, the scalability rows of the ablation),
  ``sst=<variant>`` sets ``sst.variant`` (e.g. ``msa_mse,sst=drawn``) and
  ``train_examples=<suffix>:<n>`` caps a synthetic domain's training images
  (e.g. ``sst,train_examples=pascal:100``, the low-data rows).
  """
  arg, *modifiers = (arg or 'sst').split(',')
  arg = arg or 'sst'
  if arg == 'sst':
    pass
  elif arg == 'baseline':
    disable_sst(config)
  elif arg in ('drawn', 'first'):
    config.sst.variant = arg
  elif arg in ('msa_mse', 'msa_mst'):
    config.sst.mst = arg == 'msa_mst'
    config.sst.mse = arg == 'msa_mse'
    if arg == 'msa_mse':
      config.sst.mst_weight = 0.0
      config.sst.cons_weight = 0.0
    else:
      config.sst.mse_weight = 0.0
  elif arg.startswith('dedicated'):
    target = arg.split('=', 1)[1] if '=' in arg else config.domains[0]
    config.mode_sst = 'dedicated'
    config.target = _resolve(config, target)
    # Dedicated parsing from a frozen source is built for the first
    # reconstruction only so far.
    config.sst.variant = 'first'
    # The target is sampled with weight 1, every other domain with
    # sst.dedicated_other_weight, whatever the universal recipe's mix.
    config.data.mix = ml_collections.ConfigDict()
  else:
    config.domains = [_resolve(config, arg)]
    config.data.mix = ml_collections.ConfigDict(
        {k: v for k, v in config.data.mix.items() if k in config.domains})
    disable_sst(config)
  for modifier in modifiers:
    key, _, value = modifier.partition('=')
    if key == 'domains' and value:
      config.domains = [_resolve(config, d) for d in value.split('+')]
      config.data.mix = ml_collections.ConfigDict(
          {k: v for k, v in config.data.mix.items() if k in config.domains})
    elif key == 'sst' and value:
      config.sst.variant = value
    elif key == 'train_examples' and value.count(':') == 1:
      name, count = value.split(':')
      config.data.synthetic_examples[
          f'{_resolve(config, name)}:train'] = int(count)
    else:
      raise ValueError(
          f'unknown config modifier {modifier!r}: use domains=<a>+<b>, '
          'sst=<variant> or train_examples=<domain>:<n>')
  config.lock()
  return config


def disable_sst(config):
  config.sst.enabled = False
  for k in ('mse_weight', 'mst_weight', 'cons_weight', 'kd_weight'):
    config.sst[k] = 0.0


def _resolve(config, name: str) -> str:
  for d in config.domains:
    if d == name or d.endswith('_' + name):
      return d
  raise ValueError(f'variant names domain {name!r}, not one of '
                   f'{list(config.domains)}')
