"""CIKGRec on DBbook2014 with the release's hyper-parameters (docs/method.md §8).

python -m cikg_jax.main --config=configs/dbbook2014.py --workdir=runs/dbbook2014
"""

from configs import base


def get_config():
  return base.get_config()  # base holds the DBbook2014 values
