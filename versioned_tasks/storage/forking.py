"""Locks and connections that survive the consumer's fork.

``huey_consumer -k process`` forks its workers (and restarts a dead one by
forking again) while other threads of the main process may be using the
app's storage: the Prometheus ``/metrics`` server reads the dead-letter counts
and queue length at scrape time, the fleet heartbeat publishes a record. A
fork copies a lock held by such a thread as held, with no thread left to
release it: the worker process then waits on it forever at its first dequeue,
and the consumer's graceful shutdown waits forever for that worker. A child
must also not use an SQL connection it inherited (SQLite and libpq both forbid
it).

So each guarded lock is taken before the fork (waiting for a storage call in
flight to end) and released after it on both sides, the child drops the SQL
connection it inherited (its first query opens its own), and state that
belonged to the parent's threads is reset in the child.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from huey.storage import BaseSqlStorage

__all__ = ["guard_across_fork", "guard_storage_across_fork", "reset_in_child"]

_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))

#: (rank, owner, attribute): locks of lower rank are taken first, in the order
#: the code nests them (an app's locks around its storage's).
_guarded: list[tuple[int, weakref.ref[Any], str]] = []
_storages: weakref.WeakSet[Any] = weakref.WeakSet()
#: (owner, method): called in a forked child once the locks are released.
_resets: list[tuple[weakref.ref[Any], str]] = []
_held: list[Any] = []
#: Connections inherited by a child: kept, never closed, never used.
_inherited: list[Any] = []
_registry_lock = threading.Lock()
_installed = False


def guard_across_fork(owner: object, attribute: str, *, rank: int = 0) -> None:
    """Hold ``owner.<attribute>`` (a threading lock) across every fork of this process."""
    with _registry_lock:
        _install()
        _guarded[:] = [g for g in _guarded if g[1]() is not None]
        if any(g[1]() is owner and g[2] == attribute for g in _guarded):
            return
        _guarded.append((rank, weakref.ref(owner), attribute))
        _guarded.sort(key=lambda g: g[0])


def guard_storage_across_fork(storage: object) -> None:
    """Hold a Huey storage's lock across forks; a child drops its SQL connection."""
    if isinstance(getattr(storage, "lock", None), _LOCK_TYPES):
        guard_across_fork(storage, "lock", rank=1)
    if isinstance(storage, BaseSqlStorage):
        with _registry_lock:
            _storages.add(storage)


def reset_in_child(owner: object, method: str) -> None:
    """Call ``owner.<method>()`` in every forked child of this process, after the
    guarded locks are released there (for state of the parent's threads)."""
    with _registry_lock:
        _install()
        _resets[:] = [r for r in _resets if r[0]() is not None]
        _resets.append((weakref.ref(owner), method))


def _install() -> None:
    global _installed
    if not _installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before, after_in_parent=_release, after_in_child=_child)
        _installed = True


def _before() -> None:
    _registry_lock.acquire()
    for _rank, ref, attribute in _guarded:
        owner = ref()
        lock = getattr(owner, attribute, None) if owner is not None else None
        if isinstance(lock, _LOCK_TYPES):
            lock.acquire()
            _held.append(lock)


def _release() -> None:
    while _held:
        _held.pop().release()
    _registry_lock.release()


def _child() -> None:
    for storage in list(_storages):
        conn = storage.__dict__.get("_conn")
        if conn is not None:
            _inherited.append(conn)
            storage._conn = None
    _release()
    for ref, method in list(_resets):
        owner = ref()
        if owner is not None:
            getattr(owner, method)()
