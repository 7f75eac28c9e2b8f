"""Rate limits by key (a source IP, an account) with a bounded table."""

from collections import OrderedDict


class RateLimiter:
    """A token bucket per key, in least recently used order.

    A key whose bucket has refilled (burst / per_second after its last
    token, the bucket is full whatever it held) is forgotten, since a fresh
    bucket is the same: the table holds only the keys seen in that window,
    and past max_keys the least recently used go first. Without forgetting,
    every source that ever drew a 401 stayed until max_keys (the soak's
    churn, a new client address a cycle, grew the relay by ~210 bytes each).
    """

    def __init__(self, burst: float, per_second: float, max_keys: int = 10000) -> None:
        self.burst, self.per_second, self.max_keys = burst, per_second, max_keys
        self.buckets: OrderedDict = OrderedDict()
        self._refill_seconds = burst / per_second if burst > 0 and per_second > 0 else None

    def allow(self, key, now: float) -> bool:
        """Take a token for key; False when its bucket is empty."""
        buckets = self.buckets
        tokens, stamp = buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.per_second)
        allowed = tokens >= 1
        buckets[key] = (tokens - 1 if allowed else tokens, now)
        if self._refill_seconds is not None:
            refilled = now - self._refill_seconds
            while buckets:  # the least recently used first, up to the first not yet full
                oldest = next(iter(buckets))
                if buckets[oldest][1] > refilled:
                    break
                del buckets[oldest]
        if len(buckets) > self.max_keys:
            buckets.popitem(last=False)
        return allowed

    def refund(self, key) -> None:
        """Give back the token of an attempt that turned out fine."""
        if key in self.buckets:
            tokens, stamp = self.buckets[key]
            self.buckets[key] = (min(self.burst, tokens + 1), stamp)
