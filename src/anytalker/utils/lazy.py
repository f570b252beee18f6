"""Package namespaces whose names are imported on first use.

`anytalker --help` and the CLI's argument parsing read registries (detector orders, landmark
backends, metric names) from packages whose heavier modules import torch (seconds of start-up);
a lazy namespace keeps `from anytalker.faces import FaceBox` working without that cost.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable[[str], object], list[str]]:
    """(`__getattr__`, `__all__`) for `package`: each name of `exports[module]` is resolved from
    `package.module` when first asked for."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__, sorted(module_of)
