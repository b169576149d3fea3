"""resjax: measurable claims about why residual networks work."""

__version__ = "0.1.0"
