"""Frozen dataclasses that are quick to make and to read (`quick_init`, `once`).

A frozen dataclass's own `__init__` sets each field through
`object.__setattr__` (about 0.35 µs a field on CPython 3.11): an
Observation of 14 fields took 5 µs to make, more than reading its OBX from
the bytes, and the core makes one per result of every message it reads.
`quick_init` gives such a class an `__init__` that takes the same arguments
(positional in field order, or by name; the same defaults; the same
TypeError for a missing, unknown or doubled one) and fills the instance's
`__dict__` at once. Instances stay frozen
(assignment still raises FrozenInstanceError), equal, hashed and shown as
before: only making them is quicker. Classes it cannot make the same way
(default factories, fields outside `__init__`, keyword-only fields,
`__post_init__`, slots) are refused at import. A test holds
every class it is used on equal to the dataclass's own `__init__`
(tests/test_read_differential.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")
V = TypeVar("V")


def quick_init(cls: type[T]) -> type[T]:
    """Replace the frozen dataclass `cls`'s `__init__` (see the module)."""
    if not is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__}: not a frozen dataclass")
    if hasattr(cls, "__post_init__") or "__slots__" in cls.__dict__:
        raise TypeError(f"{cls.__name__}: __post_init__ or slots")
    names: list[str] = []
    defaults: dict[str, object] = {}
    for f in fields(cls):
        if not f.init or f.kw_only or f.default_factory is not MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: a field quick_init cannot make the same way")
        names.append(f.name)
        if f.default is not MISSING:
            defaults[f.name] = f.default
    order = tuple(names)
    known = frozenset(order)
    count = len(order)
    name = cls.__name__

    def __init__(self, *args, **kwargs):
        if not known.issuperset(kwargs):
            raise TypeError(f"{name}() got an unexpected keyword argument: {sorted(set(kwargs) - known)}")
        values = self.__dict__  # (a new instance's: empty)
        values.update(defaults)
        if args:
            if len(args) > count:
                raise TypeError(f"{name}() takes {count} positional arguments but {len(args)} were given")
            if not kwargs.keys().isdisjoint(order[: len(args)]):
                raise TypeError(f"{name}() got multiple values for an argument")
            values.update(zip(order, args, strict=False))
        values.update(kwargs)
        if len(values) != count:
            raise TypeError(f"{name}() missing arguments: {[n for n in order if n not in values]}")

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__doc__ = cls.__init__.__doc__
    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


class once(Generic[V]):
    """functools.cached_property without its lock: Python 3.11's takes an
    RLock on every first access (1 to 2 µs; a message's header has six such
    properties). The value is worked out from the instance alone, so two
    threads working it out at once get the same; it is kept in the
    instance's `__dict__` (as cached_property keeps it, past a frozen
    dataclass's __setattr__), where every later access finds it first."""

    def __init__(self, func: Callable[[Any], V]):
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> once[V]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> V: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> once[V] | V:
        if instance is None:
            return self
        value = self.func(instance)
        instance.__dict__[self.name] = value
        return value
