"""pecker: reproducible pipeline for PECKER / SFD machine unlearning in diffusion models.

Every step of the Snakemake workflow is a function of this package, reachable through the
``pecker`` command-line interface (``pecker --help``).
"""

__version__ = "0.1.0"
