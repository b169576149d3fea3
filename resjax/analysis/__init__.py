"""Analysis of trained runs: probe them, write tables, figures and report.md.

Modules: `runs` (restore each run or grid net, check that runs compare, probe
them and write one result set), `tables` (probes.csv rows, the numbers per
claim, the summary and per-condition tables), `markdown` (report.md),
`trajectories` (probes.jsonl of the probes during training, per condition). The
figures are `resjax.plotting.analysis`, drawn from the same runs.

  from resjax import analysis
  out = analysis.analyze("runs/d20", compare=["runs/p20"])  # -> out["dir"], out["runs"]
"""
from resjax.analysis.markdown import FIGURES, report_markdown
from resjax.analysis.runs import analyze, check_args, describe, write
from resjax.analysis.tables import (CONDITION_NUMBERS, claim_numbers, condition_rows,
                                    condition_table, rows, summary_table)

__all__ = ["CONDITION_NUMBERS", "FIGURES", "analyze", "check_args", "claim_numbers",
           "condition_rows", "condition_table", "describe", "report_markdown", "rows", "summary_table", "write"]
