"""Exchange rate (8 daily series). OUTSIDE THE PAPER: MoLA's scripts do not cover it; the sizes are
TSLib's iTransformer exchange script (2 layers, d_model = d_ff = 128). At T = 720 it has only 41 validation
windows, so early stopping there is noisy.

    python -m mola_jax.lab.reproduce --config configs/exchange_rate.py --workdir runs/repro_exchange

`:cyclenet` / `:cyclenet_mlp`: CycleNet on its own recipe, W = 7 (configs/_recipes.py).
"""

from mola_jax import config_lib
from mola_jax.configs import _recipes

VARIANTS = _recipes.variants("exchange_rate")


def get_config(variant: str | None = None):
  cfg = config_lib.default()
  cfg.data.name = "exchange_rate"
  return _recipes.apply(cfg, variant, name="exchange_rate", cycle=7)
