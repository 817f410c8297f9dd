"""ETTh1 with iTransformer and the official MoLA recipe (docs/method.md §8): the paper's values, unchanged.

    python -m mola_jax.train --config configs/etth1.py --workdir runs/etth1
    python -m mola_jax.train --config configs/etth1.py --config.method=mtf --workdir runs/etth1_mtf
    python -m mola_jax.train --config configs/etth1.py --config.horizon=336 --config.segment_len=84 ...

A reproduction study (`python -m mola_jax.lab.reproduce`) adds segment lengths found in the data to the paper's
options unless `--study.segment_options=config`. `--config configs/etth1.py:fixed_s` keeps only the default
(first) segment length per horizon; with `--study.segment_options=config` nothing is added, so a study trains
one S instead of choosing between several on validation. `:cyclenet` and `:cyclenet_mlp`: CycleNet on its own
recipe, W = 24; `:olinear`: OLinear on its own recipe, whole-day segments (configs/_recipes.py).
"""

from mola_jax import config_lib
from mola_jax.configs import _recipes

VARIANTS = ("fixed_s", *_recipes.variants("ETTh1"))


def get_config(variant: str | None = None):
  cfg = config_lib.default()
  cfg.data.name = "ETTh1"
  if variant == "fixed_s":
    cfg.segment_options = {h: options[:1] for h, options in config_lib.SEGMENT_OPTIONS.items()}
    return cfg
  if variant is not None and variant not in VARIANTS:
    raise config_lib.ConfigError(f"unknown variant {variant!r} of configs/etth1.py; use one of {', '.join(VARIANTS)}")
  if variant == "olinear":
    # Whole days, one S per horizon: those ETTh1's validation chose for CycleNet (docs/results.md §13). A stage-2
    # cell of OLinear costs K times its direct model, so its study tries no other option on this CPU.
    cfg.segment_options = {"96": (24,), "192": (48,), "336": (48,), "720": (240,)}
  return _recipes.apply(cfg, variant, name="etth1", cycle=24)
