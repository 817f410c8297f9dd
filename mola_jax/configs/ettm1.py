"""ETTm1 with iTransformer and the official MoLA recipe (docs/method.md §8: the ETT sizes, d_model = d_ff = 128).

python -m mola_jax.train --config configs/ettm1.py --workdir runs/ettm1
python -m mola_jax.lab.reproduce --config configs/ettm1.py --workdir runs/repro_ettm1
"""

from mola_jax import config_lib


def get_config():
  cfg = config_lib.default()
  cfg.data.name = "ETTm1"
  return cfg
