"""Universal SST training on the four embedded synthetic label domains.

    python -m sst_jax.main --config=configs/synthetic.py --workdir=/tmp/sst_synthetic

The main job: no download needed, finishes in minutes on a 2-core CPU.
Variants (``--config=configs/synthetic.py:<arg>``):
  ``baseline``   plain multi-head training (SST modules and losses off).
  ``pascal``     synthetic_pascal alone (single-domain reference).
  ``dedicated``  dedicated SST for synthetic_pascal from the source model in
                 ``--config.init_from`` (each step: the 16 images of the
                 ``pascal`` run plus 8 of the source domains).
  ``finetune``   synthetic_pascal started from ``--config.init_from``, its own
                 images only, no MST.
  ``msa_mse``    ablation: SST without MST (MSA + MSE only).
"""

from sst_jax import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.domains = ['synthetic_pascal', 'synthetic_atr', 'synthetic_cihp',
                    'synthetic_lip']
  # 3000 steps: minutes on a 2-core CPU, with every synthetic domain above
  # 0.50 mIoU (docs/results.md, "The main job").
  config.total_steps = 3000
  config.batch_size = 16
  config.log_every = 25
  config.eval_every = 1500
  config.checkpoint_every = 750

  # On a CPU-only host, two devices (data parallel, batch 8 each) keep both
  # cores busy through the step's serial parts (parallel.split_cpu).
  config.cpu_devices = 2

  config.model.backbone = 'resnet18'
  config.model.width = 24
  config.model.output_stride = 16
  config.model.context_features = 96
  # A 48-wide decoder: cheaper than 64 and no worse for this small model
  # (docs/history.md).
  config.model.decoder_features = 48

  config.optim.name = 'adamw'
  config.optim.lr = 6e-3
  config.optim.weight_decay = 1e-4
  config.optim.warmup_steps = 50
  config.optim.schedule = 'cosine'
  config.loss.iou_weight = 5.0

  config.data.synthetic_size = 128
  config.data.cache = True
  # Train on 112x64 (height x width) crops of the 128x128 images (objects
  # keep their size; evaluation is on the full images). People are upright:
  # a tall crop more often holds a head together with the body below it,
  # which square crops of the same area cut apart (docs/history.md).
  config.data.crop_size = 112
  config.data.crop_width = 64
  config.data.scale_range = (0.8, 1.25)
  config.data.eval_input_size = 128
  config.data.eval_label_size = 128
  # 100 validation images per domain: two full batches, no padding.
  config.eval.batch_size = 50
  # SST as drawn with 32-wide node sets (the base config's taps, M_intra
  # and loss weights).
  config.sst.dim = 32
  # Dedicated parsing (`dedicated`): every batch holds 16 synthetic_pascal
  # images (the images the single-domain `pascal` variant reads) plus 8 of
  # the source domains for the frozen source.
  config.sst.dedicated_aux_batch = 8
  args = config_lib.parse_arg(
      arg, {**config_lib.VARIANTS, **config_lib.MODIFIERS},
      'configs/synthetic.py', config.domains)
  return config_lib.apply_variant(config, args)
