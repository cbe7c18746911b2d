"""Huey's storage classes, named here so that the app layer's backend classes
(``VersionedRedisHuey`` and the others) need not import ``huey.storage`` themselves."""

from huey.storage import (
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    PriorityRedisExpireStorage,
    PriorityRedisStorage,
    RedisExpireStorage,
    RedisStorage,
    SqliteStorage,
)

__all__ = [
    "FileStorage",
    "MemoryStorage",
    "PostgresStorage",
    "PriorityRedisExpireStorage",
    "PriorityRedisStorage",
    "RedisExpireStorage",
    "RedisStorage",
    "SqliteStorage",
]
