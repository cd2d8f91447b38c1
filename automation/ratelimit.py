"""A token bucket per sending server, in Redis, shared by every worker.

Two buckets: one refilled MAIL_RATE_PER_SECOND tokens a second (holding at
most a second's worth), one refilled MAIL_RATE_PER_HOUR an hour (holding an
hour's worth). A send takes one token from each, atomically, in one Lua
script that reads Redis's own clock, so workers on several machines agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

# KEYS[1]: the bucket hash.  ARGV: tokens wanted, per-second rate, per-hour rate (0: no cap).
# Returns {tokens granted, milliseconds until the next token if none were granted}.
_TAKE = """
local want = tonumber(ARGV[1])
local rates = {tonumber(ARGV[2]), tonumber(ARGV[3]) / 3600.0}
local capacity = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 's', 'h', 'at')
local at = tonumber(state[3]) or now
local tokens = {}
local grant = want
for i = 1, 2 do
  if capacity[i] > 0 then
    local have = tonumber(state[i]) or capacity[i]
    have = math.min(capacity[i], have + math.max(now - at, 0) * rates[i])
    tokens[i] = have
    grant = math.min(grant, math.floor(have))
  end
end
local wait = 0
if grant < 1 then
  grant = 0
  for i = 1, 2 do
    if tokens[i] and tokens[i] < 1 then
      wait = math.max(wait, (1 - tokens[i]) / rates[i])
    end
  end
end
redis.call('HSET', KEYS[1], 's', (tokens[1] or 0) - (tokens[1] and grant or 0),
  'h', (tokens[2] or 0) - (tokens[2] and grant or 0), 'at', now)
redis.call('EXPIRE', KEYS[1], 7200)
return {grant, math.ceil(wait * 1000)}
"""

KEY_PREFIX = "cl:mail:rate:"
"""Redis key of a server's bucket: this prefix and the server's host:port."""


@dataclass(frozen=True)
class Grant:
    """Tokens granted, and how long to wait for the next one when none were."""

    tokens: int
    wait_seconds: float


class RateLimiter:
    """The shared send budget of one SMTP server."""

    def __init__(
        self, client: redis.Redis, server: str, per_second: float, per_hour: float
    ) -> None:
        self.key = KEY_PREFIX + server
        self.per_second = max(per_second, 0)
        self.per_hour = max(per_hour, 0)
        self._take = client.register_script(_TAKE)

    @property
    def unlimited(self) -> bool:
        """True when neither cap is set (MAIL_RATE_PER_SECOND = MAIL_RATE_PER_HOUR = 0)."""
        return not self.per_second and not self.per_hour

    def take(self, wanted: int) -> Grant:
        """Take up to `wanted` tokens now; with none left, say how long until the next."""
        if self.unlimited or wanted <= 0:
            return Grant(max(wanted, 0), 0.0)
        granted, wait_ms = self._take(
            keys=[self.key], args=[wanted, self.per_second, self.per_hour]
        )
        return Grant(int(granted), int(wait_ms) / 1000)
