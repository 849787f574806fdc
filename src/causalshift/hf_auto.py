"""Register causalshift's model class with transformers' Auto classes, lazily.

`import causalshift` must stay cheap (no torch, no transformers: they take 5-10 s to import
on a small CPU machine), yet an exported non-baseline model must load with
`AutoModelForCausalLM.from_pretrained(folder)` once `causalshift` has been imported, with no
remote code. The design, in two stages:

1. Config. `install()` (called by `import causalshift`) registers the model type
   `causalshift_gpt` with `AutoConfig` as soon as transformers' `configuration_auto` module is
   loaded: right away if it already is, else from a post-import hook (a `sys.meta_path`
   finder that watches that one module name and runs the registration right after the
   module has executed). The config class needs only `transformers.configuration_utils`,
   which `configuration_auto` has imported by then, so the hook never imports a module
   that may be half-initialised.
2. Model. Every `from_pretrained` / `from_config` of an Auto model class first builds a
   config instance; `CausalShiftGPTConfig.__post_init__` then imports
   `causalshift.evaluate.hf_model` and registers `CausalShiftGPTForCausalLM` with
   `AutoModelForCausalLM` (once). This runs in user code, outside any import.

`causalshift.register_auto_classes()` does both stages eagerly. Registration uses
`exist_ok=True`, so every path is idempotent.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

CONFIG_AUTO = "transformers.models.auto.configuration_auto"


def _is_loaded(name: str) -> bool:
    """`name` is in sys.modules and has finished executing."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


def register_config() -> None:
    """Stage 1: AutoConfig knows `causalshift_gpt` (imports only transformers' config code)."""
    try:
        from causalshift.evaluate.hf_config import register_config as register

        register()
    except Exception as e:  # never break the user's transformers import
        warnings.warn(f"causalshift: could not register with AutoConfig: {e}", stacklevel=2)


def register_auto_classes() -> None:
    """Register `causalshift_gpt` with AutoConfig and AutoModelForCausalLM now (imports torch)."""
    from causalshift.evaluate.hf_model import register_auto_classes as register

    register()


class _Loader(importlib.abc.Loader):
    """Wraps a module's loader: executes the module, then runs the callbacks."""

    def __init__(self, loader: Any, callbacks: list[Callable[[], None]]) -> None:
        self.loader = loader
        self.callbacks = callbacks

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader  # leave no trace of the wrapper
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        for callback in self.callbacks:
            callback()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for watched names it asks the other finders and wraps the loader."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[[], None]]] = {}

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname not in self.callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, self.callbacks.pop(fullname))
        return spec


_FINDER = _PostImportFinder()


def when_imported(name: str, callback: Callable[[], None]) -> None:
    """Run `callback` once module `name` is loaded: now if it is, else right after its import."""
    if _is_loaded(name):
        callback()
        return
    _FINDER.callbacks.setdefault(name, []).append(callback)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def install() -> None:
    """Called by `import causalshift`: cheap (stdlib only)."""
    when_imported(CONFIG_AUTO, register_config)
