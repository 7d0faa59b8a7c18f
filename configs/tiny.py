"""A seconds-long run for tests and smoke checks.

    python -m sst_jax.main --config=configs/tiny.py --workdir=/tmp/sst_tiny

Tiny ResNet at 32x32 on two synthetic domains; same variants as
``configs/synthetic.py`` (``--config=configs/tiny.py:baseline`` ...).
"""

from sst_jax import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.domains = ['synthetic_pascal', 'synthetic_cihp']
  config.total_steps = 6
  config.batch_size = 8
  config.log_every = 2
  config.eval_every = 6
  config.checkpoint_every = 3
  config.model.backbone = 'resnet_tiny'
  config.model.width = 8
  config.model.context_features = 16
  config.model.decoder_features = 16
  config.model.psp_bins = (1, 2)
  config.optim.warmup_steps = 2
  config.data.synthetic_size = 32
  config.data.crop_size = 32
  config.data.eval_input_size = 32
  config.data.eval_label_size = 32
  config.data.synthetic_examples = {
      'synthetic_pascal:train': 16, 'synthetic_cihp:train': 16,
      'synthetic_pascal:validation': 8, 'synthetic_cihp:validation': 8}
  config.data.num_threads = 1
  config.eval.batch_size = 8
  config.eval.num_vis = 2
  config.sst.dim = 16
  config.sst.dedicated_aux_batch = 8
  args = config_lib.parse_arg(
      arg, {**config_lib.VARIANTS, **config_lib.MODIFIERS},
      'configs/tiny.py', config.domains)
  return config_lib.apply_variant(config, args)
