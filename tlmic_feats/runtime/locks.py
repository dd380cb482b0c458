"""Lock files: a process writing a store, a pixel cache, a finetuning run or a study holds
``<path>.lock`` naming itself; a second writer is refused with the holder's name, and
``tlmic cache clean`` leaves a held item alone."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .errors import StoreLockedError
from .locations import store_location


class StoreLock:
    """An exclusive lock file beside the store (``<store>.lock``) naming its holder. Pixel caches,
    finetuning runs and studies are locked the same way while a process writes them.

    A lock left by a dead process on this host is taken over; one held by a live process (or by
    another host) raises :class:`StoreLockedError` naming the holder. Locally the lock file is
    created atomically (``O_EXCL``); on object storage, which has no exclusive create everywhere,
    it is checked and then written, which guards against a second run but not against two runs
    started in the same instant.
    """

    def __init__(self, path: str | Path) -> None:
        self.store = store_location(path)
        self.lock = self.store.with_name(self.store.name + ".lock")
        self._held = False

    def _create(self, me: dict) -> bool:
        """Create the lock file holding ``me``; False when it exists already."""
        if isinstance(self.lock, Path):
            self.lock.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return True
        fs, lock = self.lock.filesystem()
        if fs.exists(lock):
            return False
        fs.pipe(lock, json.dumps(me).encode())
        return True

    def _unlink(self) -> None:
        if isinstance(self.lock, Path):
            self.lock.unlink(missing_ok=True)
        else:
            fs, lock = self.lock.filesystem()
            if fs.exists(lock):
                fs.rm(lock)

    def acquire(self) -> StoreLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(2):
            if self._create(me):
                self._held = True
                return self
            holder = self._holder()
            if holder and holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                self._unlink()  # stale: its process is gone
                continue
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('since', 0)))}"
                if holder
                else "an unknown process"
            )
            raise StoreLockedError(
                f"{self.store} is being written by {who}; wait for it, or remove {self.lock} if that process is gone"
            )
        raise StoreLockedError(f"could not take the lock {self.lock}")

    def _holder(self) -> dict | None:
        try:
            if isinstance(self.lock, Path):
                return json.loads(self.lock.read_text())
            fs, lock = self.lock.filesystem()
            return json.loads(fs.cat(lock))
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._held:
            self._unlink()
            self._held = False

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(path: str | Path) -> dict | None:
    """Who holds the lock of ``path`` (a local store, cache, run or study), or None when nobody does
    (no lock file, or one left by a process of this host that is gone)."""
    lock = Path(path).with_name(Path(path).name + ".lock")
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
        return None
    return holder


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True
