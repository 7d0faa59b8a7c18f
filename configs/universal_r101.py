r"""Universal SST on the real benchmarks with ResNet-101 (the paper's protocol).

    python -m sst_jax.main --config=configs/universal_r101.py:data_dir=DATA_DIR \
        --config.init.backbone=resnet101_imagenet.pth --workdir=/tmp/sst_r101

PASCAL-Person-Part + ATR + CIHP, one head per domain, built with
``python -m datasets.build datasets/<name> --manual_dir=RAW_ROOT/<name>
--data_dir=DATA_DIR --file_format=array_record`` (docs/datasets.md).

The argument is a comma-separated list of
  ``lip`` / ``with_lip``   also train on LIP (a fourth domain and head);
  ``data_dir=DIR``         the tfds data_dir of the built benchmarks (or
                           ``--config.data.data_dir=DIR``; empty = TFDS's
                           default, ``$TFDS_DATA_DIR`` or
                           ``~/tensorflow_datasets``);
  one variant (``config_lib.apply_variant``): ``sst`` (default),
  ``baseline``, ``msa_mse`` or a single domain (e.g.
  ``pascal_person_part``).
e.g. ``--config=configs/universal_r101.py:with_lip,baseline,data_dir=/data``.
Dedicated SST for one target: ``configs/dedicated_r101.py``.
"""

from __future__ import annotations

from sst_jax import config_lib

BENCHMARKS = ('pascal_person_part', 'atr', 'cihp')
SMALLEST_TRAIN_SIZE = 1716  # PASCAL-Person-Part train images.
EPOCHS = 150                # ... of the smallest dataset.
# What the argument takes (config_lib.parse_arg).
ARGS = {'lip': bool, 'with_lip': bool, 'data_dir': str,
        **config_lib.VARIANTS}


def real_config(with_lip: bool = False):
  """The unlocked protocol config (also ``configs/dedicated_r101.py``'s)."""
  config = config_lib.base_config()
  config.domains = list(BENCHMARKS) + (['lip'] if with_lip else [])

  # 16 images per global batch, as "16 per 8 GPUs" (2 per device on 8).
  config.batch_size = 16
  # About 150 epochs of the smallest training set, PASCAL-Person-Part
  # (1716 images): ceil(150 * 1716 / 16) = 16088 steps at batch 16. A
  # FieldReference, so --config.batch_size=32 gives 8044 steps.
  batch = config.get_ref('batch_size')
  config.total_steps = (EPOCHS * SMALLEST_TRAIN_SIZE + batch - 1) // batch
  config.log_every = 50
  config.eval_every = 4000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 2

  # ResNet-101, output stride 8 (dilated stages 4 and 5), CE2P-style parser.
  config.model.backbone = 'resnet101'
  config.model.width = 64
  config.model.output_stride = 8
  config.model.context_features = 512
  config.model.decoder_features = 256
  config.model.psp_bins = (1, 2, 3, 6)
  config.init.backbone = ''  # ImageNet weights: --config.init.backbone=PATH.

  # SGD, lr 7e-3, momentum 0.9, weight decay 5e-4; linear warmup then poly.
  config.optim.name = 'sgd'
  config.optim.lr = 7e-3
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.schedule = 'poly'
  config.optim.poly_power = 0.9
  config.optim.warmup_steps = 500
  config.optim.warmup_init_factor = 0.1

  config.data.tfds_names = {d: d for d in config.domains}  # e.g. 'cihp/skip_bad'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  # config.data.mix is left empty: weight 1.0 per domain, so every batch
  # mixes all domains equally (the small PASCAL set is revisited more often
  # than the large ones). To weight them, set e.g. config.data.mix =
  # {'cihp': 2.0} here (a locked config takes no new keys from flags).
  config.data.crop_size = 473
  config.data.scale_range = (0.5, 1.5)
  config.data.flip = True
  # Options, off by default (CE2P/Graphonomy-style scale + crop + flip only):
  # --config.data.rotation=15 (uniform in [-15, 15] degrees) and
  # --config.data.color_jitter=0.2 (brightness, contrast, saturation in
  # 1 +- 0.2). They cost CPU time per crop (rotation the most): see "Input
  # pipeline throughput" in docs/datasets.md.
  config.data.rotation = 0.0
  config.data.color_jitter = 0.0
  config.data.cache = False
  config.data.num_threads = 8      # decode+augment threads per process
  config.data.prefetch = 4
  # Evaluation: the image is fitted into 473x473; scores are computed on the
  # original label pixels, padded to a 1024 square. PASCAL (VOC) images are at
  # most 500 px a side, ATR's are 400x600; LIP and CIHP are web images of
  # varied size (CIHP "in a wide range of resolutions"). 1024 covers every
  # image we know of; eval_transform raises naming any larger example (then
  # raise --config.data.eval_label_size). Cost: a [B, 1024, 1024, C] float
  # map per eval batch on device.
  config.data.eval_input_size = 473
  config.data.eval_label_size = 1024
  config.data.max_eval_examples = 0

  config.eval.batch_size = 16
  config.eval.flip = True
  config.eval.scales = (1.0,)

  config.sst.enabled = True
  config.sst.dim = 256
  return config


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, ARGS, 'configs/universal_r101.py',
                              BENCHMARKS)
  with_lip = args.pop('lip', False)
  with_lip = args.pop('with_lip', False) or with_lip
  config = real_config(with_lip)
  config.data.data_dir = args.pop('data_dir', config.data.data_dir)
  return config_lib.apply_variant(config, args)
