"""Where a store, cache, run or study lives: a local path or an fsspec URL (``s3://``, ``gs://``,
``memory://``), and whether something is there. One type for both, so code that handles locations
needs no branches for where they are."""

from __future__ import annotations

from pathlib import Path

LOCAL_SCHEMES = ("", "file")


class StoreURL(str):
    """A store on fsspec storage (``s3://``, ``gs://``, ``memory://``...).

    Offers the few :class:`~pathlib.Path` members the library uses on a store's location, so that
    code handling stores needs no branches for where a store lives.
    """

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name else self.name

    def with_name(self, name: str) -> StoreURL:
        return StoreURL(self.rstrip("/").rsplit("/", 1)[0] + "/" + name)

    def filesystem(self):
        """``(fsspec filesystem, path inside it)``."""
        import fsspec

        return fsspec.core.url_to_fs(str(self))


def store_location(path: str | Path) -> Path | StoreURL:
    """A local :class:`Path` for plain paths and ``file://`` URLs, a :class:`StoreURL` for any other
    fsspec URL (the store is then read and written through fsspec, e.g. on object storage)."""
    if isinstance(path, (Path, StoreURL)):
        return path
    text = str(path)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in LOCAL_SCHEMES:
        return Path(text[len("file://") :] if scheme == "file" else text)
    return StoreURL(text)


def location_exists(path: Path | StoreURL, member: str = "") -> bool:
    """Whether ``path`` (or its ``member`` file) exists, locally or through fsspec."""
    if isinstance(path, Path):
        return (path / member).is_file() if member else path.exists()
    fs, root = path.filesystem()
    return fs.exists(f"{root}/{member}" if member else root)
