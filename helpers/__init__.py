"""Small, readable helpers that the notebooks import (one concept per module).

Importing `helpers` quietens two library log messages that would otherwise greet every learner
(diffusers' "Flax classes are deprecated", transformers' "TensorFlow and JAX classes are deprecated");
set DIFFUSERS_VERBOSITY / TRANSFORMERS_VERBOSITY yourself to see them.
"""

import os

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.3.0"
