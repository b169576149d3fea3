"""The oneDNN-versions benchmark: its inputs are checked, its output read and summed per step."""
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import onednn_versions as ov
from resjax import errors

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_installation_named_ends_in_one_line_exit_2():
  env = {k: v for k, v in os.environ.items() if k != ov.ENV}
  done = subprocess.run([sys.executable, "-m", "launch.bench", "onednn_versions"], cwd=_ROOT,
                        env=env, capture_output=True, text=True, check=False, timeout=120)
  assert done.returncode == 2, done.stderr
  errors_said = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert len(errors_said) == 1 and ov.ENV in errors_said[0], done.stderr


def test_an_installation_without_headers_is_named(tmp_path, monkeypatch):
  (tmp_path / "lib").mkdir()
  (tmp_path / "lib" / "libdnnl.so.3").write_bytes(b"")
  monkeypatch.setenv(ov.ENV, str(tmp_path))
  with pytest.raises(errors.ConfigError, match="dnnl.hpp"):
    ov.prefixes()


def _output(version, convs, scale=1.0, checksum_scale=1.0):
  lines = [f"version {version}"]
  lines += [f"{name} {kind} {count} {ms * scale:.4f} {cs * checksum_scale:.6e}"
            for (name, kind), (count, ms, cs) in convs.items()]
  return "\n".join(lines + ["stream_ms 0.0010"])


def test_step_totals_ratios_and_agreement():
  rng = np.random.default_rng(0)
  convs = {(f"c{i}", kind): (int(rng.integers(1, 7)), float(rng.uniform(1, 50)),
                             float(rng.uniform(1e3, 1e5)))
           for i in range(4) for kind in ov.PASSES}
  old = ov.parse(_output("3.2.0", convs))
  new = ov.parse(_output("3.13.2", convs, scale=0.5))
  wrong = ov.parse(_output("3.13.2", convs, checksum_scale=1.01))
  assert old["version"] == "3.2.0" and len(old["convs"]) == len(convs)
  totals = ov.step_ms(old)
  for kind in ov.PASSES:
    want = sum(c * ms for (_, k), (c, ms, _) in convs.items() if k == kind)
    assert totals[kind] == pytest.approx(want, rel=1e-4)
  table = ov.summarize({2: [("old", [old, old]), ("new", [new, new])],
                        1: [("old", [old]), ("wrong", [wrong])]})
  first, second = table["2"]
  assert first["ratio"]["all"] == 1.0 and second["ratio"]["all"] == pytest.approx(0.5, rel=1e-3)
  assert first["agrees"] and second["agrees"] and not table["1"][1]["agrees"]


def test_an_openmp_build_is_also_timed_with_passive_waiting(tmp_path):
  for name, runtime in (("omp", "OMP"), ("tbb", "TBB")):
    (tmp_path / name / "include/oneapi/dnnl").mkdir(parents=True)
    (tmp_path / name / "include/oneapi/dnnl/dnnl_config.h").write_text(
        f"#define DNNL_CPU_THREADING_RUNTIME DNNL_RUNTIME_{runtime}\n")
  todo = ov.variants([str(tmp_path / "omp"), str(tmp_path / "tbb")], ["a", "b"])
  assert [v.label("3.x") for v in todo] == ["3.x omp", "3.x omp passive", "3.x tbb"]
  assert [v.binary for v in todo] == ["a", "a", "b"]


def test_unreadable_output_is_an_error():
  with pytest.raises(errors.ConfigError, match="unreadable"):
    ov.parse("segfault\n")
