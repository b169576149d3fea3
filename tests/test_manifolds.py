"""Point clouds: shapes, where the points lie, seeding, padding, bad input."""
import numpy as np
import pytest

from resjax import errors, manifolds


def test_spiral_turns_radius_and_no_origin():
  x_PxD = manifolds.spiral(600, turns=3.0)
  assert x_PxD.shape == (600, 2) and x_PxD.dtype == np.float32
  r_P = np.linalg.norm(x_PxD, axis=-1)
  assert np.all(np.diff(r_P) > 0)  # radius grows along the curve
  assert 0 < r_P[0] < 0.01 and 0.99 < r_P[-1] <= 1.0
  angle_P = np.unwrap(np.arctan2(x_PxD[:, 1], x_PxD[:, 0]))
  assert (angle_P[-1] - angle_P[0]) / (2 * np.pi) == pytest.approx(3.0, abs=0.01)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_ball_and_sphere(d):
  ball_PxD = manifolds.ball(4000, d, seed=3)
  sphere_PxD = manifolds.sphere(4000, d, seed=3)
  assert ball_PxD.shape == sphere_PxD.shape == (4000, d)
  np.testing.assert_allclose(np.linalg.norm(sphere_PxD, axis=-1), 1.0, rtol=1e-6)
  r_P = np.linalg.norm(ball_PxD, axis=-1)
  assert r_P.max() <= 1.0 + 1e-6
  # Uniform in the ball: r^d is uniform on [0, 1].
  assert np.mean(r_P ** d) == pytest.approx(0.5, abs=0.03)
  # Isotropic: the mean is near the origin.
  assert np.abs(ball_PxD.mean(0)).max() < 0.05


def test_seeded_and_distinct_per_d():
  np.testing.assert_array_equal(manifolds.ball(50, 3, seed=1), manifolds.ball(50, 3, seed=1))
  assert not np.allclose(manifolds.ball(50, 3, seed=1), manifolds.ball(50, 3, seed=2))


def test_padded_stacks_clouds_with_zero_coordinates():
  x_KxPxD = manifolds.padded("sphere", 40, (1, 3, 2), seed=5)
  assert x_KxPxD.shape == (3, 40, 3)
  for k, d in enumerate((1, 3, 2)):
    np.testing.assert_array_equal(x_KxPxD[k, :, :d], manifolds.sample("sphere", 40, d, seed=5))
    assert np.all(x_KxPxD[k, :, d:] == 0)


@pytest.mark.parametrize("name, ds, points, needle", [
    ("torus", (2,), 10, "manifold.name='torus'"),
    ("spiral", (3,), 10, "spiral is 2-D"),
    ("ball", (0,), 10, "manifold.dims"),
    ("ball", (2,), 0, "manifold.points=0"),
])
def test_bad_input_is_one_readable_line(name, ds, points, needle):
  with pytest.raises(errors.ConfigError) as info:
    manifolds.padded(name, points, ds)
  assert needle in str(info.value) and "\n" not in str(info.value)


def test_scale_multiplies_the_points():
  base = manifolds.sample("spiral", 50, 2)
  np.testing.assert_allclose(manifolds.sample("spiral", 50, 2, scale=20.0), 20 * base, rtol=1e-6)
  padded = manifolds.padded("ball", 40, (1, 3), seed=2, scale=3.0)
  np.testing.assert_allclose(padded[1, :, :3], 3 * manifolds.ball(40, 3, seed=2), rtol=1e-6)
  assert padded.dtype == np.float32
