"""ETTh2 with iTransformer and the official MoLA recipe (docs/method.md §8: the ETT sizes, d_model = d_ff = 128).

python -m mola_jax.train --config configs/etth2.py --workdir runs/etth2
python -m mola_jax.lab.reproduce --config configs/etth2.py --workdir runs/repro_etth2

`:cyclenet` / `:cyclenet_mlp`: CycleNet on its own recipe, W = 24 (configs/_recipes.py).
"""

from mola_jax import config_lib
from mola_jax.configs import _recipes

VARIANTS = _recipes.variants("ETTh2")


def get_config(variant: str | None = None):
  cfg = config_lib.default()
  cfg.data.name = "ETTh2"
  return _recipes.apply(cfg, variant, name="etth2", cycle=24)
