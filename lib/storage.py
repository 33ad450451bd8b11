"""Object stores, the Icechunk storage of the cube, virtual chunk containers and credentials.

Everything that knows the difference between ``file://`` and ``s3://`` lives here, so the rest of
icefloe treats both the same way. Credentials are read from the environment / AWS credential chain
by obstore and Icechunk themselves; they are never passed through icefloe's values, logs or commits.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lib.errors import SpecError

if TYPE_CHECKING:
    import icechunk
    from obspec_utils.registry import ObjectStoreRegistry

    from lib.spec import Spec, StorageOptions

__all__ = [
    "Location",
    "checksum_for",
    "container_credentials",
    "object_store",
    "parse_location",
    "ref_location",
    "repo_storage",
    "source_registry",
    "virtual_containers",
]


@dataclass(frozen=True)
class Location:
    """A ``file://`` or ``s3://`` URL split into scheme, bucket (empty for files) and key/path."""

    scheme: str
    bucket: str
    key: str

    @property
    def url(self) -> str:
        if self.scheme == "file":
            return f"file://{self.key}"
        return f"s3://{self.bucket}/{self.key}"


def parse_location(url: str) -> Location:
    """Split a URL; file paths keep their leading slash, S3 keys have none."""
    if url.startswith("file://"):
        return Location("file", "", url.removeprefix("file://"))
    if url.startswith("s3://"):
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return Location("s3", bucket, key)
    raise SpecError(f"unsupported URL {url!r}: use file:// or s3://")


def _s3_config(options: StorageOptions | None) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if options is None:
        return config
    if options.endpoint:
        config["endpoint"] = options.endpoint
    if options.region:
        config["region"] = options.region
    if options.path_style:
        config["virtual_hosted_style_request"] = False
    if options.anonymous:
        config["skip_signature"] = True
    return config


def object_store(url: str, options: StorageOptions | None = None, *, rooted: bool = True) -> Any:
    """An obstore store for a directory URL.

    With ``rooted`` the store's paths are relative to the URL (used for listing the source);
    without it the store covers the whole bucket (or filesystem), as a parser registry needs.
    """
    from obstore.store import LocalStore, S3Store

    loc = parse_location(url)
    if loc.scheme == "file":
        if not rooted:
            return LocalStore()
        from lib.discovery import check_source

        check_source(url)
        return LocalStore(prefix=loc.key if loc.key else "/")
    client_options: dict[str, Any] = {"timeout": "120s", "connect_timeout": "10s"}
    if options is not None and options.allow_http:
        client_options["allow_http"] = True
    prefix = loc.key.rstrip("/") or None if rooted else None
    return S3Store(
        loc.bucket,
        prefix=prefix,
        config=_s3_config(options),  # type: ignore[arg-type]  # obstore's TypedDicts, built key by key
        client_options=client_options,  # type: ignore[arg-type]
        retry_config={
            "max_retries": 4,
            "backoff": {"init_backoff": dt.timedelta(milliseconds=200)},
            "retry_timeout": dt.timedelta(seconds=60),
        },
    )


def source_registry(source_url: str, options: StorageOptions | None = None) -> ObjectStoreRegistry:
    """The registry VirtualiZarr's parsers resolve object URLs with."""
    from obspec_utils.registry import ObjectStoreRegistry

    loc = parse_location(source_url)
    if loc.scheme == "file":
        return ObjectStoreRegistry({"file://": object_store(source_url, rooted=False)})
    return ObjectStoreRegistry({f"s3://{loc.bucket}": object_store(source_url, options, rooted=False)})


def repo_storage(spec: Spec) -> icechunk.Storage:
    """The Icechunk storage that holds the cube's repository."""
    import icechunk

    loc = parse_location(spec.repo.url)
    if loc.scheme == "file":
        return icechunk.local_filesystem_storage(loc.key)
    options = spec.repo_storage
    return icechunk.s3_storage(
        bucket=loc.bucket,
        prefix=loc.key.strip("/"),
        region=options.region if options else None,
        endpoint_url=options.endpoint if options else None,
        allow_http=options.allow_http if options else False,
        force_path_style=options.path_style if options else False,
        anonymous=True if options and options.anonymous else None,
        from_env=None if options and options.anonymous else True,
    )


def container_prefix(spec: Spec) -> str:
    """The virtual chunk container prefix: the source URL, resolved, with a trailing slash."""
    loc = parse_location(spec.source.url)
    if loc.scheme == "file":
        return "file://" + os.path.realpath(loc.key).rstrip("/") + "/"
    return spec.source.url


def virtual_containers(spec: Spec) -> list[icechunk.VirtualChunkContainer]:
    """The containers refs may point into: exactly the spec's source prefix, nothing wider."""
    import icechunk

    prefix = container_prefix(spec)
    loc = parse_location(prefix)
    store: icechunk.AnyObjectStoreConfig
    if loc.scheme == "file":
        store = icechunk.local_filesystem_store(loc.key)
    else:
        options = spec.source.storage
        store = icechunk.s3_store(
            region=options.region if options else None,
            endpoint_url=options.endpoint if options else None,
            allow_http=options.allow_http if options else False,
            anonymous=options.anonymous if options else False,
            s3_compatible=bool(options and options.endpoint),
            force_path_style=options.path_style if options else False,
        )
    return [icechunk.VirtualChunkContainer(prefix, store)]


def container_credentials(spec: Spec) -> dict[str, Any]:
    """Credentials to read the source through the cube's refs: from the environment, never stored."""
    import icechunk

    prefix = container_prefix(spec)
    if prefix.startswith("file://"):
        credential: Any = icechunk.credentials.LocalFileSystemAccess
    elif spec.source.storage and spec.source.storage.anonymous:
        credential = icechunk.s3_anonymous_credentials()
    else:
        credential = icechunk.s3_from_env_credentials()
    return icechunk.containers_credentials({prefix: credential})


_SAFE = "/!$&'()*+,;=:@ ~-._"  # kept as they are in a ref's location; everything else is percent-encoded
_PLAIN_URL = re.compile(f"(?:file|s3)://[A-Za-z0-9{re.escape(_SAFE)}]*")  # nothing to encode (no '%' either)


def ref_location(url: str) -> str:
    """A chunk ref's location: the object URL with the characters URLs reserve percent-encoded."""
    if _PLAIN_URL.fullmatch(url):  # the common case, on a build's per-file hot path
        return url
    return _encoded(url)


def _encoded(url: str) -> str:
    loc = parse_location(url)
    return url[: len(url) - len(loc.key)] + quote(loc.key, safe=_SAFE)


def checksum_for(url: str, etag: str | None, last_modified: dt.datetime | None) -> str | dt.datetime | None:
    """The checksum stored with an object's refs, so a changed source fails loudly on read.

    S3 objects carry their ETag. Local files carry their mtime rounded up to the next whole second
    (Icechunk keeps whole seconds; the exact mtime, truncated, would fail every read).
    """
    if url.startswith("s3://"):
        return etag
    if last_modified is None:
        return None
    seconds = math.floor(last_modified.timestamp()) + 1
    return dt.datetime.fromtimestamp(seconds, dt.UTC)
