"""Exchange rate (8 daily series). OUTSIDE THE PAPER: MoLA's scripts do not cover it; the sizes are
TSLib's iTransformer exchange script (2 layers, d_model = d_ff = 128). At T = 720 it has only 41 validation
windows, so early stopping there is noisy.

    python -m mola_jax.lab.reproduce --config configs/exchange_rate.py --workdir runs/repro_exchange
"""

from mola_jax import config_lib


def get_config():
  cfg = config_lib.default()
  cfg.data.name = "exchange_rate"
  return cfg
