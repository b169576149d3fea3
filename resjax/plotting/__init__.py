"""Figures drawn from result tables: one style (`style`), one module per kind of result."""
