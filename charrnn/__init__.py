"""charrnn: character-level recurrent language models on JAX.

Importing this package is cheap: the JAX-heavy modules (model, training, sampling) are
imported only when used, so the CLI can answer ``--help`` without loading JAX.
"""

__version__ = "0.1.0"
