"""Small runs on the embedded datasets (no download): minutes on a 2-core CPU.

  python -m launch.train --config=configs/embedded.py:digits_resnet20 --workdir=/tmp/d20
  python -m launch.train --config=configs/embedded.py:digits_plain20 --workdir=/tmp/p20
  python -m launch.train --config=configs/embedded.py:spirals_resmlp --workdir=/tmp/sres
  python -m launch.train --config=configs/embedded.py:spirals_mlp --workdir=/tmp/smlp
  python -m launch.train --config=configs/embedded.py:mnist1d_resnet --workdir=/tmp/m1r
  python -m launch.train --config=configs/embedded.py:mnist1d_plain --workdir=/tmp/m1p

Variants:
  spirals_mlp     plain MLP, 24 hidden layers of 16 ReLUs, on 3-arm 2-D spirals
                  (Adam 3e-3, cosine, 2000 steps of 128).
  spirals_resmlp  the same MLP with identity shortcuts (same parameters).
  digits_resnet20 ResNet-20 on scikit-learn's 8x8 digits: He et al.'s SGD
                  recipe shrunk to 400 steps of 128 (lr /10 at 200 and 300),
                  1-pixel crop jitter, no flips.
  digits_plain20  the same without shortcuts.
  manifold_firstlayer  a width-n first layer (relu | linear | identity plus
                  ReLU, models.FirstLayerNet) and a two-layer head of 64 ReLUs on
                  the 'manifold' task: d = 2 latent dimensions embedded in 16,
                  3 classes (Adam 1e-2, constant, 2000 steps of 64).
  digits_table6   He et al.'s comparison on digits: {ResNet, plain} x depth
                  {8, 14, 20} x seeds {0, 1, 2}, 18 nets of the digits_resnet20
                  recipe at batch 64 for 240 steps (lr /10 at 120 and 180) in
                  one run, one compiled call per depth.
  mnist1d_resnet  the CIFAR ResNet-20 in 1-D (models.ResNet1D: width-3 convs,
                  16/32/64 channels, option-A shortcuts, BatchNorm; 91,162
                  parameters) on MNIST-1D (Greydanus 2020; 40-sample
                  sequences, 10 classes, 4000 train / 1000 test, generated
                  offline by the `mnist1d` package), the spirals recipe
                  (Adam 3e-3, cosine, 2000 steps of 128).
  mnist1d_plain   the same without shortcuts (same parameters).
  tiny            a 4-step ResNet-8 (widths 4, 8, 8) on digits, for tests.
  tiny_mlp        a 4-step residual MLP (2 x 8 units) on spirals, for tests.

Measured (seed 0, one run each, on the current code, 2026-12-05, 2-core
Intel Xeon at load 0.8-3.8: about 6 s per spirals run and 30 s per digits run
with a warm compilation cache):
  spirals_resmlp  test accuracy 99.53%; train loss 0.0027 at step 1000
  spirals_mlp     test accuracy 97.40%; train loss 0.21 at step 1000
  digits_resnet20 test accuracy 99.44%; 96.94% at step 200, 99.44% at step 300
  digits_plain20  test accuracy 99.17%; 91.39% at step 200, 98.89% at step 300
(train loss: the mean over the log window ending at that step.)
On MNIST-1D (seed 0, 2026-12-05, the same CPU at load 5.5-11.3, shared:
about 2 min per run, the first step with compilation 5-15 s of it):
  mnist1d_resnet  test accuracy 98.80%; 97.80% at step 500, train loss 0.0005 at step 900
  mnist1d_plain   test accuracy 98.30%; 95.70% at step 500, train loss 0.0167 at step 900
The package's README gives 32% (logistic regression), 68% (MLP), 94% (a
3-layer CNN) and 91% (GRU) on MNIST-1D.
The shortcuts speed up training at equal parameters; the gap in final
accuracy is small on data this easy (the depth penalty of plain nets shows on
CIFAR-10, configs/cifar10.py). At width 8 and depth 32 the plain MLP stays at
chance (loss ln 3) while the residual one still learns a little.
"""
import ml_collections
from ml_collections import config_dict

from configs import cifar10
from resjax import errors

VARIANTS = ("spirals_mlp", "spirals_resmlp", "digits_resnet20", "digits_plain20",
            "digits_table6", "manifold_firstlayer", "mnist1d_resnet", "mnist1d_plain", "tiny",
            "tiny_mlp")


def _spirals(residual: bool, options: bool = True) -> ml_collections.ConfigDict:
  """`options=False` leaves out the spirals-only data fields, so that
  `--config.data.name` can switch to another dataset."""
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
  if options:
    config.data.num_arms = 3  # Classes = spiral arms.
    config.data.noise = 0.03  # Std of the Gaussian noise added to each point.
    config.data.turns = 1.5  # Turns of each arm.
    config.data.num_train = 1500  # Training points.
    config.data.num_test = 1500  # Test points.
  config.opt.name = "adam"
  config.opt.lr = 3e-3
  config.opt.weight_decay = 0.0
  config.opt.schedule = "cosine"
  config.train.steps = 2000
  config.train.log_every = 100
  config.train.eval_every = 500
  config.train.checkpoint_every = 1000
  return config


def _manifold_firstlayer() -> ml_collections.ConfigDict:
  """A width-n first layer and a fixed head on a d-dim task embedded in 16 dims."""
  config = _spirals(residual=False, options=False)
  config.model = ml_collections.ConfigDict(dict(
      name="firstlayer",
      width=8,  # First-layer width n.
      first="relu",  # relu(z) | linear z | residual z + relu(Uz + c).
      head_width=64,  # The fixed head: head_depth layers of head_width ReLUs.
      head_depth=2,
      activation="relu",
  ))
  config.data.name = "manifold"
  config.data.d = 2  # Intrinsic dimension of the inputs.
  config.data.ambient = 16  # Input dimension (x = Q u, Q orthonormal [ambient, d]).
  config.data.num_classes = 3  # Quantile bins of sum_j cos(pi u_j).
  config.data.num_train = 1500
  config.data.num_test = 1500
  config.data.batch_size = 64
  config.opt.lr = 1e-2
  config.opt.schedule = "constant"
  return config


def _digits(plain: bool) -> ml_collections.ConfigDict:
  config = cifar10.get_config("plain20" if plain else "resnet20")
  config.data.name = "digits"
  del config.data["normalize"]  # Per-channel statistics, as the digits runs were measured.
  # XLA's convolution, as the digits runs were measured: the oneDNN speed-up was
  # measured on 32x32 CIFAR ResNets, not on 8x8 images and tiny grids.
  config.model.conv_impl = "xla"
  config.data.batch_size = 128
  config.data.pad = 1  # 8x8 images: shift by at most one pixel.
  config.data.flip = False  # Digits are not mirror-symmetric.
  config.opt.boundaries = (200, 300)  # He et al.'s 50% / 75% points.
  config.train.steps = 400  # About 36 epochs of the 1437 training digits.
  config.train.log_every = 50
  config.train.eval_every = 100
  config.train.checkpoint_every = 200
  return config


def _mnist1d(residual: bool) -> ml_collections.ConfigDict:
  """The 1-D ResNet-20 (or plain-20) on MNIST-1D's 4,000 training sequences."""
  config = _spirals(residual=residual, options=False)
  config.model = ml_collections.ConfigDict(dict(
      name="resnet1d",
      depth=20,  # 6n+2: the stem, 3 stages of n blocks of 2 convs, the classifier.
      width=16,  # Channels of the first stage; then 2x and 4x.
      residual=residual,  # Option-A identity shortcuts around every block.
      activation="relu",
  ))
  config.data.name = "mnist1d"  # data.seed 0: the published dataset (resjax/data/embedded.py).
  return config  # The spirals recipe: Adam 3e-3, cosine, 2000 steps of 128.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config for one variant (see the module docstring)."""
  arg = arg or "digits_resnet20"
  errors.choice("config variant", arg, VARIANTS)
  if arg == "manifold_firstlayer":
    return _manifold_firstlayer()
  if arg.startswith("mnist1d"):
    return _mnist1d(residual=arg == "mnist1d_resnet")
  if arg.startswith("spirals"):
    return _spirals(residual=arg == "spirals_resmlp")
  if arg == "digits_table6":
    config = _digits(plain=False)
    cifar10.table6(config, depths=(8, 14, 20))
    config.data.batch_size = 64  # 18 nets: minutes, not half an hour, on 2 cores.
    config.train.steps = 240  # About 11 epochs.
    config.opt.boundaries = (120, 180)
    config.train.eval_every = config.train.checkpoint_every = 80
    config.train.log_every = 20
    return config
  if arg.startswith("digits"):
    return _digits(plain=arg == "digits_plain20")
  if arg == "tiny_mlp":
    config = _spirals(residual=True, options=False)
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
  config.train.eval_batch_size = 256  # The test split in two batches, not twelve.
  config.train.checkpoint_every = 2
  return config
