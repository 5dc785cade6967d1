"""Entry point: python -m cikg_jax.main --config=configs/NAME.py --workdir=DIR [--config.x=v]

Without --config it runs the tiny synthetic job (configs/tiny.py)."""

import os

from absl import app, flags, logging
from ml_collections import config_flags

import configs
from cikg_jax import train

_DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "tiny.py")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/tiny", "Directory for config, metrics, results, checkpoints.")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Training configuration file.",
                                lock_config=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
