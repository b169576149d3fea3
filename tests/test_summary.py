"""RESULTS.md's summary table is the one the committed study.json files give."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from resjax import errors
from resjax.studies import registry, summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results")
REPORT = os.path.join(ROOT, "RESULTS.md")


def _launch(*args):
  return subprocess.run([sys.executable, "-m", "launch.summary", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_the_committed_table_is_the_generated_one():
  with open(REPORT) as f:
    report = f.read()
  results = summary.load(RESULTS)
  assert results, "docs/results holds no study result"
  assert summary.rewrite(report, summary.table(results, report)) == report, (
      "RESULTS.md's summary table differs from docs/results; run python -m launch.summary")


def test_every_committed_result_has_a_headline_and_a_section():
  with open(REPORT) as f:
    where = summary.sections(f.read())
  for key, result in summary.load(RESULTS).items():
    lines = summary.headlines({key: result})[key]
    assert lines and set(lines) <= set(summary.CLAIMS), key
    assert all(s.strip() and s[-1] == "." for s in lines.values()), lines
    assert result["study"] in where, f"{key}: no RESULTS.md section gives its command"


def test_anchor_is_the_renderers_slug():
  assert summary.anchor("## 5. Convergence speed (C5)") == "5-convergence-speed-c5"
  assert summary.anchor("## 6. Redundancy: n/d or n? (C3)") == "6-redundancy-nd-or-n-c3"


def test_rewrite_replaces_only_between_the_markers():
  report = f"head\n{summary.BEGIN}\nold table\n{summary.END}\ntail\n"
  out = summary.rewrite(report, "new table")
  assert out == f"head\n{summary.BEGIN}\nnew table\n{summary.END}\ntail\n"
  with pytest.raises(errors.ConfigError, match="no summary markers"):
    summary.rewrite("no markers here", "t")


def test_a_table_row_changes_with_its_study_json(tmp_path):
  results = summary.load(RESULTS)
  key = next(iter(results))
  changed = json.loads(json.dumps(results[key]))
  for row in changed["rows"]:  # Any number the headline quotes moves with the file.
    for k, v in row.items():
      if isinstance(v, float):
        row[k] = v + 0.125
  for c in changed["contrasts"].values():
    for k in ("mean", "lo", "hi"):
      c[k] = c[k] + 0.125
  with open(REPORT) as f:
    report = f.read()
  assert summary.table({**results, key: changed}, report) != summary.table(results, report)


def test_load_refuses_a_file_that_is_not_a_study_result(tmp_path):
  (tmp_path / "x.json").write_text(json.dumps({"study": "nope"}))
  with pytest.raises(errors.ConfigError, match="not a study's study.json"):
    summary.load(str(tmp_path))
  (tmp_path / "x.json").write_text("{")
  with pytest.raises(errors.ConfigError, match="not readable JSON"):
    summary.load(str(tmp_path))
  assert "summary" not in registry.names()


def test_launcher_check_and_rewrite(tmp_path):
  shutil.copy(REPORT, tmp_path / "R.md")
  ok = _launch(f"--report={tmp_path / 'R.md'}", f"--results={RESULTS}", "--check")
  assert ok.returncode == 0, ok.stderr
  text = (tmp_path / "R.md").read_text()
  start = text.index(summary.BEGIN) + len(summary.BEGIN)
  (tmp_path / "R.md").write_text(text[:start] + "\nstale\n" + text[text.index(summary.END):])
  stale = _launch(f"--report={tmp_path / 'R.md'}", f"--results={RESULTS}", "--check")
  assert stale.returncode == 1 and "differs" in stale.stderr
  fixed = _launch(f"--report={tmp_path / 'R.md'}", f"--results={RESULTS}")
  assert fixed.returncode == 0, fixed.stderr
  assert (tmp_path / "R.md").read_text() == text
  bad = _launch(f"--report={tmp_path / 'R.md'}", f"--results={tmp_path / 'none'}")
  assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --results=")
  assert len(bad.stderr.strip().splitlines()) == 1


def test_one_verdict_wording_follows_the_numbers():
  from resjax.studies import tables
  base = {"mean": 0.02, "lo": 0.01, "hi": 0.03, "n": 8, "sd": 0.012, "family_size": 3}
  assert tables.verdict({**base, "holm_reject": True, "excludes_zero": True}) == (
      "detected (Holm among 3)")
  # A bootstrap interval that holds 0 outweighs a Holm rejection on its p.
  assert tables.verdict({**base, "holm_reject": True, "excludes_zero": False}).startswith(
      "not detected at this power")
  before = tables.verdict({**base, "holm_reject": False, "excludes_zero": True})
  assert before.startswith("not detected after Holm among 3 (the unadjusted interval")
  # The smallest detectable effect: from the stored value, else from the SD.
  least = tables.detectable_of(base)
  text = tables.verdict({**base, "excludes_zero": False}, scale=100, unit=" points")
  assert text == f"not detected at this power (80% power needs |effect| >= {100 * least:.3g} points)"
  assert "needs |effect| >= 5" in tables.verdict({**base, "excludes_zero": False,
                                                 "detectable": 5.0})
  # The rate rules score a rate with a diverged net as +inf, never on its survivors.
  assert tables.rate_score([0.1, 0.4]) == pytest.approx(0.2)
  assert tables.rate_score([0.01, float("nan")]) == tables.rate_score([0.01, math.inf]) == math.inf
  # A contrast without a p counts in its Holm family (as p = 1) and is never rejected.
  family = tables.holm({"a": {"p": 0.02}, "b": {"p": 0.03}, "c": {"p": float("nan")}})
  assert [family[k]["family_size"] for k in "abc"] == [3, 3, 3]
  assert [family[k]["holm_reject"] for k in "abc"] == [False, False, False]  # 0.06, 0.06
  assert family["a"]["p_holm"] == pytest.approx(0.06) and math.isnan(family["c"]["p_holm"])
  assert tables.verdict({**base, "mean": 0.0, "sd": 0.0}) == (
      "not detected: identical in every pair")
  # One nonzero difference in every pair: the sign test's p, never a detectable effect of 0.
  assert tables.verdict({**base, "sd": 0.0, "p": 2.0 ** -7, "p_holm": 3 * 2.0 ** -7}) == (
      "not detected: the same difference in all 8 pairs (sign test p = 0.00781, 0.0234 "
      "after Holm among 3)")
  assert tables.verdict_text({**base, "holm_reject": True, "excludes_zero": True}, 100, 1) == (
      "+2.0 [1.0, 3.0], detected (Holm among 3)")
