"""A least-recently-used cache bounded in number of items and in bytes."""
from collections import OrderedDict


class LRUCache:
    """Keep the most recently used values, within two optional bounds.

    Parameters
    ----------
    max_items : int or None
        At most this many values; None for no bound on the count, 0 to
        cache nothing.
    max_bytes : int or None
        At most this many bytes in total (as given to :meth:`put`); None
        for no bound. A value bigger than the bound alone is not kept.

    Notes
    -----
    The cache is emptied when pickled, so that a spawned ``DataLoader``
    worker does not receive a copy of the parent's volumes.
    """

    def __init__(self, max_items=None, max_bytes=None):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._values = OrderedDict()
        self._sizes = {}
        self.nbytes = 0

    def __len__(self):
        return len(self._values)

    def __contains__(self, key):
        return key in self._values

    def get(self, key):
        """Return the value of ``key`` (now the most recent) or None."""
        if key not in self._values:
            return None
        self._values.move_to_end(key)
        return self._values[key]

    def put(self, key, value, nbytes):
        """Store ``value``, then evict the least recently used over bounds."""
        if key in self._values:
            self._remove(key)
        if self.max_items == 0 or (self.max_bytes is not None
                                   and nbytes > self.max_bytes):
            return
        self._values[key] = value
        self._sizes[key] = nbytes
        self.nbytes += nbytes
        while self._over_bounds():
            self._remove(next(iter(self._values)))

    def clear(self):
        """Forget every value."""
        self._values.clear()
        self._sizes.clear()
        self.nbytes = 0

    def _over_bounds(self):
        too_many = (self.max_items is not None
                    and len(self._values) > self.max_items)
        too_big = self.max_bytes is not None and self.nbytes > self.max_bytes
        return too_many or too_big

    def _remove(self, key):
        del self._values[key]
        self.nbytes -= self._sizes.pop(key)

    def __getstate__(self):
        return {"max_items": self.max_items, "max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["max_items"], state["max_bytes"])
