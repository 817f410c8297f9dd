"""National illness (ILI, 7 weekly series). OUTSIDE THE PAPER: look-back 36, horizons 24/36/48/60 as in the
field's ILI protocol (docs/protocol.md §1); the segment options are ours (two divisors of each horizon). A
study runs every horizon that has options.

    python -m mola_jax.lab.reproduce --config configs/national_illness.py --workdir runs/repro_ili

`:cyclenet` / `:cyclenet_mlp`: CycleNet on its own recipe, W = 52 (configs/_recipes.py).
"""

from mola_jax import config_lib
from mola_jax.configs import _recipes

VARIANTS = _recipes.variants("national_illness")


def get_config(variant: str | None = None):
  cfg = config_lib.default()
  cfg.data.name = "national_illness"
  cfg.data.seq_len = 36
  cfg.data.label_len = 18
  cfg.horizon = 24
  cfg.segment_options = {"24": (12, 6), "36": (12, 18), "48": (24, 12), "60": (12, 30)}
  # Batch 32 (the field's ILI batch; CycleNet has no ILI script): 256 would leave 2 steps an epoch.
  return _recipes.apply(cfg, variant, name="national_illness", cycle=52, batch_size=32)
