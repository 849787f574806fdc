"""causalshift: measure and mitigate the causal shift in autoregressive Transformers.

`import causalshift` imports neither torch nor transformers; it arranges (`hf_auto.install`)
that exported models (`causalshift_gpt`) load with transformers' Auto classes.
`register_auto_classes()` registers them right away (not needed in normal use).
"""

from causalshift.hf_auto import install as _install
from causalshift.hf_auto import register_auto_classes

__version__ = "0.1.0"
__all__ = ["__version__", "register_auto_classes"]

_install()
