"""Tell gateways that the models changed: PUBLISH on ``caravan:models`` after a manifest is written or deleted.

Gateways cache resolved model records (``gateway.registry_client``) and drop them when this arrives, so a
create, copy, pull, push to /v2/ or delete through any gateway or registry endpoint shows at once everywhere.
Best effort: Redis being down never fails a model change (gateways then fall back to a short cache lifetime).
"""

from __future__ import annotations

import contextlib

from redis import Redis
from redis.exceptions import RedisError

from caravan import keys


class ModelNotifier:
    """``Store.on_change`` for the registry service (synchronous: the store writes from worker threads too)."""

    def __init__(self, redis_url: str) -> None:
        self.redis = Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)

    def __call__(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            self.redis.publish(keys.MODELS_CHANNEL, b"changed")
