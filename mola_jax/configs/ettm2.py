"""ETTm2 with iTransformer and the official MoLA recipe (docs/method.md §8: the ETT sizes, d_model = d_ff = 128).

python -m mola_jax.train --config configs/ettm2.py --workdir runs/ettm2
python -m mola_jax.lab.reproduce --config configs/ettm2.py --workdir runs/repro_ettm2

`:cyclenet` / `:cyclenet_mlp`: CycleNet on its own recipe, W = 96 (configs/_recipes.py).
"""

from mola_jax import config_lib
from mola_jax.configs import _recipes

VARIANTS = _recipes.variants("ETTm2")


def get_config(variant: str | None = None):
  cfg = config_lib.default()
  cfg.data.name = "ETTm2"
  return _recipes.apply(cfg, variant, name="ettm2", cycle=96)
