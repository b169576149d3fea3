"""Small runs on the embedded datasets (no download): minutes on a 2-core CPU.

  python -m launch.train --config=configs/embedded.py:digits_resnet20 --workdir=/tmp/d20
  python -m launch.train --config=configs/embedded.py:digits_plain20 --workdir=/tmp/p20
  python -m launch.train --config=configs/embedded.py:spirals_resmlp --workdir=/tmp/sres
  python -m launch.train --config=configs/embedded.py:spirals_mlp --workdir=/tmp/smlp

Variants:
  spirals_mlp     plain MLP, 8 hidden layers of 32 ReLUs, on 2-D spirals (Adam).
  spirals_resmlp  the same MLP with identity shortcuts (same parameters).
  digits_resnet20 ResNet-20 on scikit-learn's 8x8 digits (SGD, He et al. recipe
                  shrunk to 1500 steps; 1-pixel crop jitter, no flips).
  digits_plain20  the same without shortcuts.
  tiny            a 4-step ResNet-8 (widths 4, 8, 8) on digits, for tests.
  tiny_mlp        a 4-step residual MLP on spirals, for tests.

Expected: spirals_resmlp reaches > 99% train and test accuracy; the plain
spirals_mlp trains more slowly from the same initialization. digits_resnet20
and digits_plain20 both reach about 97-99% test accuracy (the digits are easy;
the depth penalty of plain nets shows on CIFAR-10, configs/cifar10.py).
"""
import ml_collections
from ml_collections import config_dict

from configs import cifar10
from resjax import errors

VARIANTS = ("spirals_mlp", "spirals_resmlp", "digits_resnet20", "digits_plain20", "tiny",
            "tiny_mlp")


def _spirals(residual: bool) -> ml_collections.ConfigDict:
  config = cifar10.base_config()
  config.model = ml_collections.ConfigDict(dict(
      name="mlp",
      width=16,  # Units per hidden layer.
      depth=24,  # Hidden layers.
      activation="relu",  # resjax.activations name.
      residual=residual,  # Identity shortcuts around hidden layers 1..depth-1.
      norm=config_dict.placeholder(str),  # None | batch | layer.
  ))
  config.data.name = "spirals"
  config.data.batch_size = 128
  config.data.augment = False
  config.opt.name = "adam"
  config.opt.lr = 3e-3
  config.opt.weight_decay = 0.0
  config.opt.schedule = "cosine"
  config.train.steps = 2000
  config.train.log_every = 100
  config.train.eval_every = 500
  config.train.checkpoint_every = 1000
  return config


def _digits(plain: bool) -> ml_collections.ConfigDict:
  config = cifar10.get_config("plain20" if plain else "resnet20")
  config.data.name = "digits"
  config.data.batch_size = 128
  config.data.pad = 1  # 8x8 images: shift by at most one pixel.
  config.data.flip = False  # Digits are not mirror-symmetric.
  config.opt.boundaries = (200, 300)  # He et al.'s 50% / 75% points.
  config.train.steps = 400  # About 36 epochs of the 1437 training digits.
  config.train.log_every = 50
  config.train.eval_every = 100
  config.train.checkpoint_every = 200
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config for one variant (see the module docstring)."""
  arg = arg or "digits_resnet20"
  errors.choice("config variant", arg, VARIANTS)
  if arg.startswith("spirals"):
    return _spirals(residual=arg == "spirals_resmlp")
  if arg.startswith("digits"):
    return _digits(plain=arg == "digits_plain20")
  if arg == "tiny_mlp":
    config = _spirals(residual=True)
    config.model.width, config.model.depth = 8, 2
    config.data.batch_size = 32
  else:
    config = _digits(plain=False)
    config.model.depth, config.model.widths = 8, (4, 8, 8)
    config.data.batch_size = 32
    config.opt.boundaries = (2, 3)
  config.train.steps = 4
  config.train.log_every = 2
  config.train.eval_every = 0
  config.train.checkpoint_every = 2
  return config
