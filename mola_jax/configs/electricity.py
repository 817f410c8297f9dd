"""Electricity (ECL, 321 channels) with iTransformer: 3 layers, d_model = d_ff = 512, batch 16 (docs/method.md §8).
The file is not distributed offline: put electricity.csv (Autoformer bundle) into $MOLA_DATA_DIR or pass
--config.data.path; without it the run stops with a clear error before doing anything.

    python -m mola_jax.lab.reproduce --config configs/electricity.py --workdir runs/repro_electricity

`:cyclenet` / `:cyclenet_mlp`: CycleNet on its own recipe, W = 168 (configs/_recipes.py).
"""

from mola_jax import config_lib
from mola_jax.configs import _recipes

VARIANTS = _recipes.variants("electricity")


def get_config(variant: str | None = None):
  cfg = config_lib.default()
  cfg.data.name = "electricity"
  cfg.model.itransformer.update(d_model=512, d_ff=512, e_layers=3)
  cfg.pretrain.batch_size = 16
  cfg.adapt.batch_size = 16
  cfg.data.eval_batch_size = 64
  return _recipes.apply(cfg, variant, name="electricity", cycle=168, batch_size=64)
