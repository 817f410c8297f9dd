"""ETTm2 with iTransformer and the official MoLA recipe (docs/method.md §8: the ETT sizes, d_model = d_ff = 128).

python -m mola_jax.train --config configs/ettm2.py --workdir runs/ettm2
python -m mola_jax.lab.reproduce --config configs/ettm2.py --workdir runs/repro_ettm2
"""

from mola_jax import config_lib


def get_config():
  cfg = config_lib.default()
  cfg.data.name = "ETTm2"
  return cfg
