"""Old home of the collapse figure, kept for code that imports `resjax.plots`.

The figure lives in `resjax.plotting.collapse`.
"""
from resjax.plotting.collapse import collapse_figure, focus_activation

__all__ = ["collapse_figure", "focus_activation"]
