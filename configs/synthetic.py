"""Universal SST training on the four embedded synthetic label domains.

    python -m sst_jax.main --config=configs/synthetic.py --workdir=/tmp/sst_synthetic

The main job: no download needed, finishes in minutes on a 2-core CPU.
Variants (``--config=configs/synthetic.py:<arg>``):
  ``baseline``   plain multi-head training (SST modules and losses off).
  ``drawn``      SST as the paper's figures draw it (``sst.variant='drawn'``,
                 ``sst.dim=32``).
  ``pascal``     synthetic_pascal alone (single-domain reference).
  ``dedicated``  dedicated SST for synthetic_pascal (each step: the 16 images
                 of the ``pascal`` run plus 8 of the other domains).
  ``msa_mse`` / ``msa_mst``  ablations with one of the two SST branches.
"""

from sst_jax import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.domains = ['synthetic_pascal', 'synthetic_atr', 'synthetic_cihp',
                    'synthetic_lip']
  # 3000 steps: with the uint8 input path the 2500-step recipe ended
  # synthetic_lip just under 0.50 and finished well inside the 2-core CPU's
  # ~15 minutes (docs/results.md).
  config.total_steps = 3000
  config.batch_size = 16
  config.log_every = 25
  config.eval_every = 1500
  config.checkpoint_every = 750

  # On a CPU-only host, two devices (data parallel, batch 8 each) run the
  # step 1.18x faster on two cores than one device (parallel.split_cpu).
  config.cpu_devices = 2

  config.model.backbone = 'resnet18'
  config.model.width = 24
  config.model.output_stride = 16
  config.model.context_features = 96
  # A 48-wide decoder: the step costs 0.91x the 64-wide one; with
  # sst.dim=16 below the main job ends higher on every domain than the
  # 64/64 recipe at the same steps (docs/results.md).
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
  # a tall crop more often holds a head together with the body below it, for
  # 1.12x the pixels of an 80x80 crop (2.3x fewer than a full image). Against
  # 80x80 crops for the same time (2800 steps), two seeds ended 0.012-0.027
  # higher on every domain; hat, hair and sunglasses gained most
  # (docs/results.md).
  config.data.crop_size = 112
  config.data.crop_width = 64
  config.data.scale_range = (0.8, 1.25)
  config.data.eval_input_size = 128
  config.data.eval_label_size = 128
  # 100 validation images per domain: two full batches, no padding.
  config.eval.batch_size = 50
  # The main job trains SST's first reconstruction: the method as drawn
  # (`configs/synthetic.py:drawn`, D = 32, the base config's taps, M_intra
  # and weights) ended below 0.50 mIoU on synthetic_lip in its first run
  # (docs/results.md). First reconstruction: D = 16, three MSA scales with
  # the backbone's stride-4 features, the kd/cons ramp, no
  # self-distillation.
  config.sst.variant = 'first'
  config.sst.dim = 16
  config.sst.scales = ('res2', 'context', 'decoder')
  config.sst.rampup_steps = 300
  config.sst.kd_weight = 0.0
  # Dedicated variant: every batch holds 16 synthetic_pascal images (the
  # images the single-domain `pascal` variant reads) plus 8 of the other
  # three domains, sampled equally.
  config.sst.dedicated_other_weight = 1 / 3
  config.sst.dedicated_aux_batch = 8
  config = config_lib.apply_variant(config, arg)
  if config.sst.variant == 'drawn':
    config.sst.dim = 32
  return config
