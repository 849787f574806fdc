"""causalshift: measure and mitigate the causal shift in autoregressive Transformers."""

from causalshift import hf_auto as _hf_auto

__version__ = "0.1.0"


def register_auto_classes() -> None:
    """Register exported models (`causalshift_gpt`) with transformers' Auto classes now.

    Not needed in normal use: `import causalshift` already arranges it lazily (see
    `causalshift.hf_auto`) without importing torch or transformers itself.
    """
    _hf_auto.register_auto_classes()


_hf_auto.install()
