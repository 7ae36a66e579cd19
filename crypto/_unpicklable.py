"""A base for objects that hold key bytes."""

from __future__ import annotations

from typing import NoReturn, SupportsIndex


class Unpicklable:
    """Refuses pickling and copying, so that a key cannot slip into a cache, a job argument or a process pool.

    ``pickle``, ``copy.copy`` and ``copy.deepcopy`` all go through ``__reduce_ex__``; ``__getstate__`` is
    refused too, for code that calls it directly.
    """

    __slots__ = ()

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds key material and cannot be pickled or copied")

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds key material and cannot be pickled or copied")

    def __getstate__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds key material and cannot be pickled or copied")
