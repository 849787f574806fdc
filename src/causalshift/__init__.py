"""causalshift: measure and mitigate the causal shift in autoregressive Transformers.

The Python API (docs/python.md): `load_model`, `measure`, `view` and `UserError`, the error
every bad input raises. They are imported on first use: `import causalshift` imports neither
torch nor transformers. It arranges (`hf_auto.install`) that exported models
(`causalshift_gpt`) load with transformers' Auto classes; `register_auto_classes()`
registers them right away (not needed in normal use).
"""

from typing import Any

from causalshift.errors import UserError
from causalshift.hf_auto import install as _install
from causalshift.hf_auto import register_auto_classes

__version__ = "0.1.0"
__all__ = [
    "UserError",
    "__version__",
    "fit_lens",
    "intervene",
    "load_model",
    "measure",
    "sweep",
    "register_auto_classes",
    "view",
]

# Public names served by causalshift.api, imported when first used.
_API = ("fit_lens", "intervene", "load_model", "measure", "sweep", "view")


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module("causalshift.api"), name)
    raise AttributeError(f"module 'causalshift' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


_install()
