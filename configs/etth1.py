"""ETTh1 with iTransformer and the official MoLA recipe (method.md §8): the paper's values, unchanged.

    python -m mola_jax.train --config configs/etth1.py --workdir runs/etth1
    python -m mola_jax.train --config configs/etth1.py --config.method=mtf --workdir runs/etth1_mtf
    python -m mola_jax.train --config configs/etth1.py --config.horizon=336 --config.segment_len=84 ...
"""

from mola_jax import config_lib


def get_config():
  cfg = config_lib.default()
  cfg.data.name = "ETTh1"
  return cfg
