"""The classes a record may name: a file names classes, it never runs code.

A record (a checkpoint's metadata, a model folder's ``config.json``) is built only when
its class is registered here: mmsent's own networks register themselves, users call
:func:`register` or declare a ``mmsent.modules`` entry point. Any other name is refused
before anything is imported.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from torch import nn

from mmsent.errors import ConfigError

ENTRY_POINT_GROUP = "mmsent.modules"
REGISTRY: dict[str, type[nn.Module]] = {}
"""Class path -> class, of every module a record may name (:func:`register`)."""


def register(module_class: type[nn.Module]) -> type[nn.Module]:
    """Lets records name a class; call it before loading a record that names one.

    The alternative is an entry point of the ``mmsent.modules`` group
    (``MyEncoder = "my_package.encoders:MyEncoder"``).

    Args:
        module_class: The class; usable as a decorator.

    Returns:
        The class, unchanged.

    Raises:
        TypeError: If it is not an ``nn.Module`` class.
    """
    if not (isinstance(module_class, type) and issubclass(module_class, nn.Module)):
        raise TypeError(f"register: {module_class!r} is not an nn.Module class")
    REGISTRY[f"{module_class.__module__}.{module_class.__qualname__}"] = module_class
    if module_class.__module__.startswith("mmsent.models."):
        # The public name too (``mmsent.models.TextLSTMEncoder``), as a user would write it.
        REGISTRY.setdefault(f"mmsent.models.{module_class.__qualname__}", module_class)
    return module_class


def registered_class(path: object, what: str) -> type[nn.Module]:
    """The registered class a record names, found without importing anything it names.

    Only an entry point whose target is exactly ``path`` is loaded (installed code).

    Args:
        path: The record's ``class_path``.
        what: The file and key that hold it, for messages.

    Returns:
        The class.

    Raises:
        ConfigError: If the name is not registered, naming ``what`` and how to register.
    """
    if isinstance(path, str):
        if path in REGISTRY:
            return REGISTRY[path]
        for point in entry_points(group=ENTRY_POINT_GROUP):
            if point.value.replace(":", ".") == path:
                return register(point.load())
    raise ConfigError(f"{what}: {path!r} is not a registered mmsent module, so it was not "
                      f"imported (a file names classes, it never runs code); call mmsent.register(YourClass) "
                      f"before loading, or declare it as a {ENTRY_POINT_GROUP!r} entry point")
