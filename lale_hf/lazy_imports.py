"""Public names that load their module on first use, so importing a package stays light."""

import importlib
import sys


def lazy_attributes(package: str, names: dict[str, str]):
    """Module `__getattr__` and `__dir__` for `package`: `names` maps a public name to the submodule defining it.

    A name is imported on first access and then cached in the package's namespace.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str):
        if name in names:
            value = getattr(importlib.import_module(names[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
