"""cogkit: package ML models with Cog so they boot fast and run the same everywhere."""

__version__ = "0.1.0"
