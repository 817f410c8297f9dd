"""A generated multi-seasonal series (daily and weekly cycles, trend, noise): no data file at all.
For smoke tests and scaling work; small model and few epochs so it finishes in seconds on a CPU.

    python -m mola_jax.train --config configs/synthetic.py --workdir runs/synthetic
"""

from mola_jax import config_lib


def get_config():
  cfg = config_lib.default()
  cfg.data.name = "synthetic"
  cfg.data.synthetic_rows = 2000
  cfg.data.synthetic_channels = 7
  cfg.horizon = 48
  cfg.segment_len = 24
  cfg.model.itransformer.update(d_model=32, d_ff=32, n_heads=4, e_layers=1)
  cfg.pretrain.epochs = 2
  cfg.adapt.epochs = 2
  cfg.technique.mola.update(num_experts=2, rank=2)
  return cfg
