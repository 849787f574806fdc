"""Register causalshift's model class with transformers' Auto classes, lazily.

`import causalshift` must stay cheap (no torch, no transformers: they are slow to import),
yet an exported non-baseline model must load with `AutoModelForCausalLM.from_pretrained(folder)`
once `causalshift` has been imported, with no remote code. The design, in two stages:

1. Config. `install()` (called by `import causalshift`) registers the model type
   `causalshift_gpt` with `AutoConfig` as soon as transformers' `configuration_auto` module is
   loaded: right away if it already is, else from a post-import hook (a `sys.meta_path`
   finder that watches that one module name and runs the registration right after the
   module has executed). The config class needs only `transformers.configuration_utils`,
   which `configuration_auto` has imported by then, so the hook never imports a module
   that may be half-initialised.
2. Model. Every `from_pretrained` / `from_config` of an Auto model class first builds a
   config instance; stage 1 left a hook with the config module (`hf_config.on_new_config`)
   that then imports `causalshift.evaluate.hf_model` and registers
   `CausalShiftGPTForCausalLM` with `AutoModelForCausalLM` (once). This runs in user code,
   outside any import.

`register_auto_classes()` (also `causalshift.register_auto_classes`) is the one registration
function: it does both stages now, or only the first with `model=False`. This module owns the
state (`_model_registered`); registration uses `exist_ok=True`, so every path is idempotent.
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
MODELING_UTILS = "transformers.modeling_utils"

_model_registered = False


def _is_loaded(name: str) -> bool:
    """`name` is in sys.modules and has finished executing."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


def register_auto_classes(model: bool = True) -> None:
    """Register `causalshift_gpt` with AutoConfig and, with `model`, AutoModelForCausalLM.

    `model=False` imports only transformers' config code (safe inside transformers' own
    import) and leaves the model class to the first config instance. Idempotent."""
    global _model_registered
    from transformers.models.auto.configuration_auto import AutoConfig

    from causalshift.evaluate.hf_config import MODEL_TYPE, CausalShiftGPTConfig, on_new_config

    AutoConfig.register(MODEL_TYPE, CausalShiftGPTConfig, exist_ok=True)
    if _model_registered:
        return
    if not model:
        on_new_config(_register_model_when_possible)
        return
    from transformers import AutoModelForCausalLM

    from causalshift.evaluate.hf_model import CausalShiftGPTForCausalLM

    AutoModelForCausalLM.register(CausalShiftGPTConfig, CausalShiftGPTForCausalLM, exist_ok=True)
    _model_registered = True


def _register_config() -> None:
    """Stage 1, from the import hook: never break the user's transformers import."""
    try:
        register_auto_classes(model=False)
    except Exception as e:
        warnings.warn(f"causalshift: could not register with AutoConfig: {e}", stacklevel=2)


def _register_model_when_possible() -> bool:
    """Stage 2, after a new config: True once the model class is registered."""
    if not _is_loaded(MODELING_UTILS) and MODELING_UTILS in sys.modules:
        return False  # inside transformers' own import: try again with the next config
    try:
        register_auto_classes()
    except Exception as e:
        warnings.warn(
            f"causalshift: could not register with AutoModelForCausalLM: {e}", stacklevel=2
        )
    return _model_registered


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
    when_imported(CONFIG_AUTO, _register_config)
