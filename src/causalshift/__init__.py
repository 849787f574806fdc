"""causalshift: measure and mitigate the causal shift in autoregressive Transformers."""

__version__ = "0.1.0"
