"""The registry of adapter methods: `adapter.method` names one entry of METHODS.

Each method lives in its own module and exposes `METHOD`, an `AdapterMethod`. Adding a method
means writing its module and listing it in `_MODULES` below; nothing else changes.
"""

from models.methods import delta_lora, dora, lora, lora_fa, lora_plus, qlora, rslora, vera
from models.methods.base import AdapterMethod, AdapterSpec

_MODULES = (lora, lora_fa, vera, delta_lora, lora_plus, dora, rslora, qlora)

METHODS: dict[str, AdapterMethod] = {m.METHOD.name: m.METHOD for m in _MODULES}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> AdapterMethod:
    """Look a method up by its `adapter.method` name."""
    try:
        return METHODS[name]
    except KeyError:
        choices = ", ".join(METHODS)
        raise ValueError(f"unknown adapter method {name!r}; choose one of {choices}") from None


__all__ = ["METHODS", "METHOD_NAMES", "AdapterMethod", "AdapterSpec", "get_method"]
