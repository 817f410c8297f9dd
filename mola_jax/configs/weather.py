"""Weather (21 channels, 10-minute steps) with iTransformer: 3 layers, d_model = d_ff = 512, batch 32
(docs/method.md §8). Like every dataset in the field's scripts, it gets the 4 hourly time features.

    python -m mola_jax.lab.reproduce --config configs/weather.py --workdir runs/repro_weather

`:cyclenet` / `:cyclenet_mlp`: CycleNet on its own recipe, W = 144 (configs/_recipes.py).
"""

from mola_jax import config_lib
from mola_jax.configs import _recipes

VARIANTS = _recipes.variants("weather")


def get_config(variant: str | None = None):
  cfg = config_lib.default()
  cfg.data.name = "weather"
  cfg.model.itransformer.update(d_model=512, d_ff=512, e_layers=3)
  return _recipes.apply(cfg, variant, name="weather", cycle=144)
