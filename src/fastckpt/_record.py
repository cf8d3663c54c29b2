"""Plain records: fields declared as annotated class attributes, as with dataclasses.

fastckpt's own small stand-in for ``dataclasses``, whose import (it pulls in
``inspect``, ``ast``, ``dis``...) costs several milliseconds at every start of
the command.  A subclass lists its fields as annotated class attributes, the
value being the default (``factory(list)`` for a fresh mutable one); it gets
keyword or positional construction, ``__post_init__``, ``repr``, ``==``,
``replace()``, ``fields()``, and with ``frozen=True`` immutability and a hash.
"""
from __future__ import annotations


class FrozenError(AttributeError):
    """An assignment to a field of a frozen record."""


class factory:
    """A default made afresh for each record: ``files: dict = factory(dict)``."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make

    def __repr__(self) -> str:  # as help() shows the default: a fresh one of these
        return f"{getattr(self.make, '__name__', 'factory')}()"


class _Signature:
    """``Record.__signature__``: the fields as parameters, for help() and inspect.signature().

    Made on access only: ``inspect`` costs milliseconds to import and the command never needs it.
    """

    def __get__(self, obj, cls):
        import inspect

        params = []
        for name in cls._fields:
            default = cls._defaults.get(name, inspect.Parameter.empty)
            annotation = cls._annotations.get(name, inspect.Parameter.empty)
            params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                            annotation=annotation))
        return inspect.Signature(params)


class Record:
    _fields: tuple = ()
    _defaults: dict = {}
    _frozen: bool = False
    _annotations: dict = {}
    __signature__ = _Signature()

    def __init_subclass__(cls, frozen: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        fields = list(cls._fields)
        defaults = dict(cls._defaults)
        annotations = dict(cls._annotations)
        for name, annotation in cls.__dict__.get("__annotations__", {}).items():
            if name.startswith("_"):
                continue
            annotations[name] = annotation
            if name not in fields:
                fields.append(name)
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
        cls._fields, cls._defaults, cls._annotations = tuple(fields), defaults, annotations
        cls._frozen = frozen or cls._frozen
        if not cls._frozen:
            cls.__hash__ = None  # mutable: unhashable, as dataclasses make it

    def __init__(self, *args, **kwargs):
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes at most {len(fields)} positional arguments")
        values = dict(zip(fields, args))
        for name in kwargs:
            if name not in fields:
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {name!r}")
            if name in values:
                raise TypeError(f"{type(self).__name__}() got multiple values for argument {name!r}")
        values.update(kwargs)
        for name in fields:
            if name in values:
                value = values[name]
            elif name in self._defaults:
                value = self._defaults[name]
                if isinstance(value, factory):
                    value = value.make()
            else:
                raise TypeError(f"{type(self).__name__}() missing required argument {name!r}")
            object.__setattr__(self, name, value)
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def __setattr__(self, name, value):
        if self._frozen:
            raise FrozenError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if self._frozen:
            raise FrozenError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")
        object.__delattr__(self, name)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self):
        return hash(tuple(getattr(self, f) for f in self._fields))

    def replace(self, **changes):
        """A copy with CHANGES (validated again by ``__post_init__``)."""
        values = {f: getattr(self, f) for f in self._fields}
        values.update(changes)
        return type(self)(**values)

    @classmethod
    def fields(cls) -> tuple:
        return cls._fields

    def asdict(self) -> dict:
        return {f: getattr(self, f) for f in self._fields}
