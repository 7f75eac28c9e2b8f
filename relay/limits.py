"""Rate limits by key (a source IP, an account) with a bounded table."""

from collections import OrderedDict


class RateLimiter:
    """A token bucket per key; the least recently used keys are evicted past max_keys."""

    def __init__(self, burst: float, per_second: float, max_keys: int = 10000) -> None:
        self.burst, self.per_second, self.max_keys = burst, per_second, max_keys
        self.buckets: OrderedDict = OrderedDict()

    def allow(self, key, now: float) -> bool:
        """Take a token for key; False when its bucket is empty."""
        tokens, stamp = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.per_second)
        allowed = tokens >= 1
        self.buckets[key] = (tokens - 1 if allowed else tokens, now)
        if len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)
        return allowed

    def refund(self, key) -> None:
        """Give back the token of an attempt that turned out fine."""
        if key in self.buckets:
            tokens, stamp = self.buckets[key]
            self.buckets[key] = (min(self.burst, tokens + 1), stamp)
