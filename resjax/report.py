"""The former name of `resjax.analysis` (and its figures, `resjax.plotting.analysis`).

Kept so that `from resjax import report; report.analyze(...)` goes on working;
new code imports `resjax.analysis`.
"""
from resjax.analysis import (CONDITION_NUMBERS, FIGURES, analyze, claim_numbers,
                             condition_rows, condition_table, describe, report_markdown, rows,
                             summary_table, write)
from resjax.plotting.analysis import plot_energy, plot_gradients, plot_rank, plot_units
from resjax.plotting.layers import alignment_note, display_name, split_of

__all__ = ["CONDITION_NUMBERS", "FIGURES", "alignment_note", "analyze", "claim_numbers",
           "condition_rows", "condition_table", "describe", "display_name", "plot_energy",
           "plot_gradients", "plot_rank", "plot_units", "report_markdown", "rows", "split_of",
           "summary_table", "write"]
