"""One vocabulary for LoRA settings: peft's argument names, with the older names accepted for one release.

peft's ``LoraConfig`` names the LoRA settings ``r``, ``lora_alpha``, ``lora_dropout`` and ``target_modules``.
Every function of this library that takes a LoRA setting uses those names. The names it used before
(``alpha``, ``dropout``, ``targets``, ``lora_r``, ``lora_targets``) still work until the next release: the
call goes through unchanged and a ``DeprecationWarning`` names the new argument.

- ``renamed_arguments(**old_to_new)``: a decorator that maps old keyword names to new ones.
- ``rename_settings(settings, old_to_new, where)``: the same for a dict of settings (``**knobs``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])

# The old name -> peft's name, for every function that takes LoRA settings.
LORA_RENAMES = {"alpha": "lora_alpha", "dropout": "lora_dropout", "targets": "target_modules", "lora_r": "r",
                "lora_targets": "target_modules"}


def rename_settings(settings: Mapping[str, Any], old_to_new: Mapping[str, str], where: str,
                    stacklevel: int = 3) -> dict[str, Any]:
    """A copy of ``settings`` with each old key renamed to its new one, warning once per old key used.

    Raises TypeError when both an old name and its new name are given. Example:
    ``rename_settings({"lora_r": 8}, {"lora_r": "r"}, "estimate_training_memory")`` -> ``{"r": 8}``
    and a DeprecationWarning "estimate_training_memory(lora_r=...) is deprecated; use r=...".
    """
    renamed = dict(settings)
    for old, new in old_to_new.items():
        if old not in renamed:
            continue
        if new in renamed:
            raise TypeError(f"{where}() got both {old}= (the old name) and {new}=; pass only {new}=")
        warnings.warn(f"{where}({old}=...) is deprecated; use {new}=... (peft's name). The old name will be "
                      f"removed in the next release.", DeprecationWarning, stacklevel=stacklevel)
        renamed[new] = renamed.pop(old)
    return renamed


def renamed_arguments(**old_to_new: str) -> Callable[[F], F]:
    """Decorator: accept the old keyword names ``old_to_new`` for one release, with a DeprecationWarning.

    Example::

        @renamed_arguments(alpha="lora_alpha")
        def add_lora(model, r=8, lora_alpha=16): ...

        add_lora(model, alpha=8)  # runs as lora_alpha=8, warns "add_lora(alpha=...) is deprecated; use lora_alpha"
    """
    for old, new in old_to_new.items():
        if not (isinstance(new, str) and new.isidentifier()) or old == new:
            raise ValueError(f"renamed_arguments needs old=new identifier pairs, got {old}={new!r}")

    def decorate(function: F) -> F:
        name = function.__qualname__.replace(".__init__", "")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if any(old in kwargs for old in old_to_new):
                kwargs = rename_settings(kwargs, old_to_new, name, stacklevel=3)
            return function(*args, **kwargs)

        wrapper.__doc__ = (function.__doc__ or "") + (
            "\n\n    Deprecated argument names (accepted until the next release): "
            + ", ".join(f"``{old}`` -> ``{new}``" for old, new in old_to_new.items()) + ".")
        return cast(F, wrapper)

    return decorate
