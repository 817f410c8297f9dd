"""Traffic (862 channels) with iTransformer: 4 layers, d_model = d_ff = 512, batch 16 (docs/method.md §8).
The file is not distributed offline: put traffic.csv (Autoformer bundle) into $MOLA_DATA_DIR or pass
--config.data.path; without it the run stops with a clear error before doing anything.

    python -m mola_jax.lab.reproduce --config configs/traffic.py --workdir runs/repro_traffic
"""

from mola_jax import config_lib


def get_config():
  cfg = config_lib.default()
  cfg.data.name = "traffic"
  cfg.model.itransformer.update(d_model=512, d_ff=512, e_layers=4)
  cfg.pretrain.batch_size = 16
  cfg.adapt.batch_size = 16
  cfg.data.eval_batch_size = 32
  return cfg
