"""The oneDNN convolution (resjax/kernels) against lax.conv_general_dilated."""
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import embedded
from resjax import models
from resjax.models import layers
from resjax import sharding
from resjax.kernels import onednn
from tests.conftest import run_steps

if not onednn.available():
  pytest.skip(f"oneDNN convolution not built: {onednn.unavailable_reason()}",
              allow_module_level=True)

DN = ("NHWC", "HWIO", "NHWC")
PAD1, PAD0 = ((1, 1), (1, 1)), ((0, 0), (0, 0))


def _loss(conv, strides, padding):
  """A scalar of the convolution whose gradients weigh every output differently."""
  def loss(x, w):
    y = conv(x, w, strides, padding, dimension_numbers=DN)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)
  return loss


def _inputs(n, h, w, c, o, k, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32),
          jnp.asarray(rng.standard_normal((k, k, c, o)) / np.sqrt(k * k * c), jnp.float32))


# (batch, height, width, in channels, out channels, kernel, stride, padding):
# the ResNets' 3x3 convs at strides 1 and 2 with symmetric padding, the stem's
# 3 input channels, 1x1 convs, batch 1, odd and non-square images, SAME.
SHAPES = [
    (4, 8, 8, 3, 16, 3, 1, PAD1),
    (2, 16, 16, 16, 16, 3, 1, PAD1),
    (3, 16, 16, 16, 32, 3, 2, PAD1),
    (1, 8, 8, 32, 64, 3, 2, PAD1),
    (1, 7, 9, 5, 6, 3, 1, PAD1),
    (2, 9, 7, 8, 4, 3, 2, PAD1),
    (2, 8, 8, 8, 24, 1, 1, PAD0),
    (3, 9, 9, 4, 8, 3, 2, "SAME"),
    (2, 8, 8, 4, 8, 3, 1, "SAME"),
]


@pytest.mark.parametrize("n,h,w,c,o,k,s,padding", SHAPES)
def test_forward_and_both_gradients_match_lax(n, h, w, c, o, k, s, padding):
  x, kernel = _inputs(n, h, w, c, o, k)
  args = ((s, s), padding)
  want_y = lax.conv_general_dilated(x, kernel, *args, dimension_numbers=DN)
  got_y = jax.jit(lambda a, b: onednn.conv_general_dilated(a, b, *args, dimension_numbers=DN))(
      x, kernel)
  np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
  want = jax.jit(jax.grad(_loss(lax.conv_general_dilated, *args), (0, 1)))(x, kernel)
  got = jax.jit(jax.grad(_loss(onednn.conv_general_dilated, *args), (0, 1)))(x, kernel)
  for g, ref in zip(got, want):
    assert g.shape == ref.shape
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(ref))))


def test_what_onednn_does_not_cover_goes_to_lax():
  x, kernel = _inputs(2, 8, 8, 4, 8, 3)
  dn = lax.conv_dimension_numbers(x.shape, kernel.shape, DN)
  assert onednn.covers(x, kernel, (1, 1), PAD1, dimension_numbers=dn)
  assert not onednn.covers(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 1), PAD1,
                           dimension_numbers=dn)
  assert not onednn.covers(x, kernel, (1, 1), PAD1, rhs_dilation=(2, 2), dimension_numbers=dn)
  grouped = kernel[:, :, :2]
  assert not onednn.covers(x, grouped, (1, 1), PAD1, dimension_numbers=dn, feature_group_count=2)
  # A grouped convolution through the wrapper is lax's.
  y = jax.jit(lambda a, b: onednn.conv_general_dilated(a, b, (1, 1), PAD1, dimension_numbers=DN,
                                                      feature_group_count=2))(x, grouped)
  np.testing.assert_array_equal(y, lax.conv_general_dilated(x, grouped, (1, 1), PAD1,
                                                            dimension_numbers=DN,
                                                            feature_group_count=2))


def test_batch_split_over_devices_stays_split_and_matches():
  """On a data mesh each device convolves its own images: no all-gather, and
  the weight gradient is the sum over all devices' images."""
  mesh = sharding.make_mesh(jax.devices()[:8])
  x, kernel = _inputs(16, 8, 8, 4, 8, 3)
  loss = _loss(onednn.conv_general_dilated, (2, 2), PAD1)
  batch, whole = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  step = jax.jit(jax.value_and_grad(loss, (0, 1)), in_shardings=(batch, whole),
                 out_shardings=(whole, (batch, whole)))
  hlo = step.lower(x, kernel).compile().as_text()
  assert "all-gather" not in hlo and "resjax_onednn_conv_bwd_weights" in hlo
  value, (dx, dw) = step(jax.device_put(x, batch), jax.device_put(kernel, whole))
  want_value, (want_dx, want_dw) = jax.jit(jax.value_and_grad(
      _loss(lax.conv_general_dilated, (2, 2), PAD1), (0, 1)))(x, kernel)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-6)
  # The weight gradient sums 8 devices' partial sums in another order than one
  # convolution over the whole batch: an entry that nearly cancels keeps an
  # error of the size of its terms' rounding, so the tolerance scales with the
  # gradient's largest entry (a device's share left out would be off by ~1/8).
  np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-6 * np.abs(want_dw).max())


@pytest.mark.parametrize("in_axes", [(0, 0), (0, None), (None, 0)])
def test_vmap_over_nets_matches_lax(in_axes):
  """Grids vmap the step over stacked nets (batched kernels, maybe batched images)."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, 2, 8, 8, 4)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4, 8)) / 6, jnp.float32)
  x = x if in_axes[0] == 0 else x[0]
  kernel = kernel if in_axes[1] == 0 else kernel[0]
  grads = lambda conv: jax.jit(jax.vmap(jax.grad(_loss(conv, (1, 1), PAD1), (0, 1)),
                                        in_axes=in_axes))(x, kernel)
  for g, ref in zip(grads(onednn.conv_general_dilated), grads(lax.conv_general_dilated)):
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5)


def test_model_field_selects_it():
  model = models.build("resnet", 10, depth=8, widths=(4, 8, 8), conv_impl="onednn")
  x = jnp.zeros((2, 8, 8, 3))
  hlo = jax.jit(lambda v, x: model.apply(v, x)).lower(
      jax.eval_shape(model.init, jax.random.key(0), x), x).as_text()
  assert "resjax_onednn_conv_fwd" in hlo
  with pytest.raises(ValueError, match="conv_impl"):
    models.build("resnet", 10, depth=8, conv_impl="cudnn")


def test_training_losses_match_xla():
  """20 steps of a ResNet-8 on digits, batch split over 8 host devices: the
  same losses with either convolution."""
  losses = {}
  for impl in ("xla", "onednn"):
    config = embedded.get_config("tiny")
    config.model.conv_impl = impl
    losses[impl], _ = run_steps(config, jax.devices()[:8], steps=20)
  np.testing.assert_allclose(losses["onednn"], losses["xla"], rtol=1e-5)


def test_profile_counts_the_ffi_convolutions_like_xlas():
  """`launch.bench profile` classifies oneDNN's custom calls with XLA's FLOPs."""
  from benchmarks import profile  # pylint: disable=import-outside-toplevel
  x = jnp.ones((4, 8, 8, 3))
  ws = (jnp.ones((3, 3, 3, 8)), jnp.ones((3, 3, 8, 8)))

  def flops(conv):
    c = lambda a, b, s: conv(a, b, (s, s), PAD1, dimension_numbers=DN)
    loss = lambda ws: jnp.sum(c(jax.nn.relu(c(x, ws[0], 1)), ws[1], 2) ** 2)
    hlo = profile.parse_hlo(jax.jit(jax.grad(loss)).lower(ws).compile().as_text())
    out = dict.fromkeys(profile.KINDS, 0.0)
    for kind, f in profile.classify(hlo).values():
      out[kind] += f
    return out

  got, want = flops(onednn.conv_general_dilated), flops(lax.conv_general_dilated)
  for kind in ("conv forward", "conv input-grad", "conv weight-grad"):
    assert got[kind] == want[kind] > 0, kind


def test_without_the_library_everything_is_xlas(monkeypatch):
  """Where the library is not built (or not x86-64 Linux) the same call is lax's."""
  monkeypatch.setattr(onednn, "_load", lambda: (None, "not built"))
  assert not onednn.available() and onednn.unavailable_reason() == "not built"
  x, kernel = _inputs(2, 8, 8, 4, 8, 3)
  conv = lambda a, b: onednn.conv_general_dilated(a, b, (2, 2), PAD1, dimension_numbers=DN)
  assert "custom_call" not in jax.jit(conv).lower(x, kernel).as_text()
  np.testing.assert_array_equal(jax.jit(conv)(x, kernel), lax.conv_general_dilated(
      x, kernel, (2, 2), PAD1, dimension_numbers=DN))


def test_grid_of_nets_under_shard_map_matches_lax():
  """Grids split over devices run vmap inside shard_map: the gradients keep
  their 'varying over the grid axis' type and equal lax's."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("grid",))
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 3, 8, 8, 4)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((2, 3, 3, 4, 8)) / 6, jnp.float32)
  spec = jax.sharding.PartitionSpec("grid")

  def grads(conv):
    per_net = jax.vmap(jax.grad(_loss(conv, (2, 2), PAD1), (0, 1)))
    return jax.jit(jax.shard_map(per_net, mesh=mesh, in_specs=(spec, spec),
                                 out_specs=(spec, spec)))(x, kernel)

  for g, ref in zip(grads(onednn.conv_general_dilated), grads(lax.conv_general_dilated)):
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5)


def test_materialize_is_the_identity_wherever_a_step_runs():
  """`materialize` returns x and passes the gradient through unchanged: under
  jit, vmap, a batch split over 8 devices (kept split) and shard_map."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((8, 4, 4, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  loss = lambda a, w: jnp.sum(jnp.sin(onednn.materialize(jnp.cos(a))) * w)
  want_loss = lambda a, w: jnp.sum(jnp.sin(jnp.cos(a)) * w)
  assert "resjax_materialize" in jax.jit(loss).lower(x, w).as_text()
  np.testing.assert_array_equal(jax.jit(onednn.materialize)(x), x)
  stacked = jnp.stack([x, 2 * x])
  np.testing.assert_array_equal(jax.jit(jax.vmap(onednn.materialize))(stacked), stacked)
  want = jax.jit(jax.value_and_grad(want_loss))(x, w)
  for got in (jax.jit(jax.value_and_grad(loss))(x, w),
              jax.jit(jax.vmap(jax.value_and_grad(loss)))(stacked[:1], w[None])):
    np.testing.assert_allclose(np.reshape(got[0], ()), want[0], rtol=1e-6)
    np.testing.assert_allclose(np.reshape(got[1], x.shape), want[1], rtol=1e-6, atol=1e-7)
  mesh = sharding.make_mesh(jax.devices()[:8])
  batch = sharding.batch_sharding(mesh)
  split = jax.jit(jax.grad(loss), in_shardings=(batch, batch), out_shardings=batch)
  assert "all-gather" not in split.lower(x, w).compile().as_text()
  np.testing.assert_allclose(split(jax.device_put(x, batch), jax.device_put(w, batch)),
                             want[1], rtol=1e-6, atol=1e-7)
  grid = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("grid",))
  spec = jax.sharding.PartitionSpec("grid")
  per_net = jax.jit(jax.shard_map(jax.vmap(jax.grad(loss)), mesh=grid, in_specs=(spec, spec),
                                  out_specs=spec))
  np.testing.assert_allclose(per_net(jnp.stack([x, x]), jnp.stack([w, w]))[1], want[1],
                             rtol=1e-6, atol=1e-7)


def _compiled_step(plain: bool) -> tuple:
  """(the compiled train step, its initial state, the batches of 20 steps) of
  a ResNet-14 on digits with oneDNN's convolutions, on one device."""
  from resjax import train  # pylint: disable=import-outside-toplevel
  config = embedded.get_config("tiny")
  config.model.conv_impl, config.model.depth, config.model.plain = "onednn", 14, plain
  ds = train.load_data(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train.create_train_state(config, mesh, ds.input_shape, ds.num_classes)
  p_train, _ = train.jit_steps(state, mesh)
  batches = [sharding.to_global(train.host_batch(ds.train, step, seed=config.seed,
                                                 global_batch=config.data.batch_size), mesh)
             for step in range(20)]
  return p_train.lower(state, batches[0]).compile(), state, batches


def _relu_elements(compiled) -> int:
  """Elements the compiled step takes the maximum of: the forward ReLUs,
  wherever XLA's fusions evaluate them."""
  import re  # pylint: disable=import-outside-toplevel
  shapes = re.findall(r"= f32\[([\d,]*)\]\S* maximum\(", compiled.as_text())
  return sum(int(np.prod([int(d) for d in s.split(",") if d])) for s in shapes)


def _losses(compiled, state, batches) -> np.ndarray:
  losses = []
  for batch in batches:
    state, m = compiled(state, batch)
    losses.append(m["loss"])
  return np.asarray(jax.device_get(losses))


def test_resnet_step_computes_its_residual_stream_once(monkeypatch):
  """With oneDNN's convolutions the residual step takes as many ReLUs as its
  plain twin: each block's output is written once (`layers.stream`). Without
  it XLA fused a stage's whole stream, from its first block on, into each
  block's shortcut add. Over 20 steps the losses are the unchanged step's to
  float32 rounding (XLA fuses the backward pass's sums differently: 2.1e-7
  apart at most)."""
  kept = _compiled_step(False)
  assert _relu_elements(kept[0]) == _relu_elements(_compiled_step(True)[0])
  monkeypatch.setattr(layers, "stream", lambda h, conv_impl: h)
  fused = _compiled_step(False)
  assert _relu_elements(fused[0]) > 1.3 * _relu_elements(kept[0])
  np.testing.assert_allclose(_losses(*kept), _losses(*fused), rtol=1e-6, atol=0)
