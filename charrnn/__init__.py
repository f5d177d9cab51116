"""charrnn: character-level recurrent language models on JAX.

Importing this package is cheap: the JAX-heavy modules (model, training, sampling) are
imported only when used, so the CLI can answer ``--help`` without loading JAX.
"""

__version__ = "0.1.0"


def load(run=None, checkpoint="best", **kwargs):
    """A trained run as an object with ``.sample()``, ``.score(lines)`` and ``.eval(text)``; see
    `charrnn.trained`. `run` defaults to the run trained most recently under ./runs."""
    from charrnn.trained import load as _load

    return _load(run, checkpoint, **kwargs)
