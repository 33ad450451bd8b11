"""The cube spec: YAML validated strictly into frozen pydantic models.

Only ``name``, ``source.url``, ``source.pattern`` and ``repo.url`` are required; every other key has a
default. Unknown keys are errors that name the key, so a typo never turns into a silent default.
Credentials never live here: they come from the environment / AWS credential chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lib.errors import SpecError

__all__ = ["NativeCopy", "Spec", "load_spec", "spec_digest"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageOptions(_Frozen):
    """How to reach an S3-compatible object store. Credentials come from the environment."""

    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False
    anonymous: bool = False

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/]+", value):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/") if value else value

    @property
    def allow_http(self) -> bool:
        """Plain HTTP is allowed exactly when the endpoint says so."""
        return bool(self.endpoint and self.endpoint.startswith("http://"))


def _check_url(value: str, *, directory: bool) -> str:
    """Normalise a ``file://`` or ``s3://`` URL; a directory URL gets a trailing slash."""
    if value.startswith("file://"):
        path = value.removeprefix("file://")
        if not path.startswith("/"):
            raise ValueError(f"a file:// URL needs an absolute path (file:///data/...), got {value!r}")
        parts = Path(path).parts
        if ".." in parts:
            raise ValueError(f"must not contain '..', got {value!r}")
    elif value.startswith("s3://"):
        rest = value.removeprefix("s3://")
        bucket = rest.split("/", 1)[0]
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
            raise ValueError(f"{bucket!r} is not a valid S3 bucket name")
        if ".." in rest.split("/"):
            raise ValueError(f"must not contain '..', got {value!r}")
    else:
        hint = f" (did you mean file://{value}?)" if value.startswith("/") else ""
        raise ValueError(f"must be a file:// or s3:// URL, got {value!r}{hint}")
    if directory and not value.endswith("/"):
        value += "/"
    return value


class Source(_Frozen):
    """Where the archive lives and which of its objects belong to the cube."""

    url: str
    pattern: str
    storage: StorageOptions | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value, directory=True)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        from lib.discovery import compile_pattern  # the grammar lives with discovery

        compile_pattern(value)
        return value


class Variables(_Frozen):
    """Which variables to leave out, and which to store as native chunks instead of references.

    ``native: auto`` loads dimension coordinates, scalars and datasets whose bytes cannot be
    referenced (compact or unallocated storage); ``none`` loads only the concat coordinates, which
    are always native because each file may encode them differently. ``nativize`` rewrites the
    small coordinates still referenced after a build or ingest as native chunks (see ``icefloe nativize``).
    """

    drop: tuple[str, ...] = ()
    native: Literal["auto", "none"] | tuple[str, ...] = "auto"
    nativize: bool = False


class Repo(_Frozen):
    """The Icechunk repository that holds the cube."""

    url: str
    storage: StorageOptions | None = None
    branch: str = "main"
    staging: str = "ingest"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value, directory=False).rstrip("/")

    @model_validator(mode="after")
    def _branches_differ(self) -> Repo:
        if self.branch == self.staging:
            raise ValueError(f"branch and staging must differ, both are {self.branch!r}")
        return self


class AwsLambda(_Frozen):
    """Lithops' aws_lambda backend: what `lithops runtime build/deploy` and the executor need."""

    execution_role: str
    region: str
    runtime: str = "icefloe-lambda-runtime"
    runtime_memory: int = 1024
    runtime_timeout: int = 600
    storage_bucket: str | None = None


class Lithops(_Frozen):
    backend: Literal["localhost", "aws_lambda"] = "localhost"
    aws_lambda: AwsLambda | None = None

    @model_validator(mode="after")
    def _lambda_needs_config(self) -> Lithops:
        if self.backend == "aws_lambda" and self.aws_lambda is None:
            raise ValueError("backend aws_lambda needs an aws_lambda: {execution_role, region, ...} section")
        return self


class Execution(_Frozen):
    executor: Literal["threads", "processes", "lithops"] = "processes"
    workers: Annotated[int, Field(ge=1, le=1000)] = Field(default_factory=lambda: os.cpu_count() or 2)
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    lithops: Lithops = Lithops()


class SpotCheck(_Frozen):
    """Sampled chunks read through the cube and, independently, from the source file."""

    files: Literal["all"] | Annotated[int, Field(ge=0)] = 100
    chunks_per_variable: Annotated[int, Field(ge=1)] = 1


class Expectation(_Frozen):
    """A Great Expectations expectation on a variable's values.

    On a coordinate it is checked once on the whole axis (a failure blocks the publish); on a data
    variable it is checked on each spot-checked file's sampled chunks (a failure quarantines the file).
    """

    type: str
    variable: str
    kwargs: dict[str, Any] = {}

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        if not re.fullmatch(r"expect_[a-z0-9_]+", value):
            raise ValueError(f"must name a Great Expectations expectation (expect_...), got {value!r}")
        return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Checks(_Frozen):
    """What a staged snapshot must pass before it may be published.

    ``regular`` axes have no gaps: files beyond a gap wait (deferred) until it fills; ``max_wait``
    (``7d``, ``12h``...) turns a file that has waited longer into a quarantine; a file more than
    ``max_gap`` steps from the axis (default: the axis' length, at least 100) is refused at once.
    """

    monotonic: tuple[str, ...] = ("time",)
    regular: tuple[str, ...] = ("time",)
    max_wait: dt.timedelta | None = None
    max_gap: Annotated[int, Field(ge=1)] | None = None
    spot_check: SpotCheck = SpotCheck()
    expectations: tuple[Expectation, ...] = ()

    @field_validator("max_wait", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str) and (m := _DURATION.match(value)):
            return dt.timedelta(seconds=float(m.group(1)) * _SECONDS[m.group(2)])
        if isinstance(value, str):
            raise ValueError(f"must be a duration like 7d, 12h, 30m or 45s, got {value!r}")
        return value


_CODECS = re.compile(r"^(zstd|zlib)(?::(\d{1,2}))?$|^none$")


class NativeCopy(_Frozen):
    """Variables rewritten into native chunks of the user's choosing, in the group ``/{name}`` of the
    same repository (``icefloe rechunk``). Dims not named in ``chunks`` keep the virtual chunking."""

    name: str
    variables: Annotated[tuple[str, ...], Field(min_length=1)]
    chunks: dict[str, Annotated[int, Field(ge=1)]] = {}
    codecs: str = "zstd"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,62}", value):
            raise ValueError(f"must start with a letter and hold letters, digits, '-' or '_', got {value!r}")
        return value

    @field_validator("variables")
    @classmethod
    def _root_variables(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        nested = [v for v in value if "/" in v]
        if nested:
            raise ValueError(f"only variables of the root group can be copied, got {nested[0]!r}")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a variable twice: {list(value)}")
        return value

    @field_validator("codecs")
    @classmethod
    def _codecs(cls, value: str) -> str:
        if not _CODECS.match(value):
            raise ValueError(f"must be zstd, zstd:LEVEL, zlib, zlib:LEVEL or none, got {value!r}")
        return value


class Spec(_Frozen):
    """One cube: where its objects come from, how they combine, where the cube lives."""

    name: str
    source: Source
    concat: tuple[str, ...] = ()
    rectilinear: tuple[str, ...] = ()
    native_copies: tuple[NativeCopy, ...] = ()
    variables: Variables = Variables()
    repo: Repo
    execution: Execution = Execution()
    checks: Checks = Checks()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", value):
            raise ValueError(f"must be lowercase letters, digits, '-' or '_' (deployment names use it), got {value!r}")
        return value

    @model_validator(mode="after")
    def _fields_are_not_concat_dims(self) -> Spec:
        from lib.discovery import compile_pattern

        fields = compile_pattern(self.source.pattern).fields
        clash = sorted(set(fields) & set(self.concat))
        if clash:
            raise ValueError(f"pattern fields {clash} are also listed in concat")
        if len(set(self.concat)) != len(self.concat):
            raise ValueError(f"concat lists a dimension twice: {list(self.concat)}")
        stray = sorted(set(self.rectilinear) - set(self.concat))
        if stray:
            raise ValueError(f"rectilinear lists {stray}, which concat does not: only concat dims can be rectilinear")
        names = [c.name for c in self.native_copies]
        if len(set(names)) != len(names):
            raise ValueError(f"native_copies names a copy twice: {names}")
        return self

    def chosen_copies(self, names: list[str] | None = None) -> list[NativeCopy]:
        """The native copies called ``names`` (default: all of them).

        Raises
        ------
        SpecError
            The spec lists no native copies, or none called one of ``names``.
        """
        if not self.native_copies:
            raise SpecError(
                "the spec lists no native_copies: add one, e.g. native_copies: [{name: ts, variables: [VAR], "
                "chunks: {time: 365}}]",
                key="native_copies",
            )
        by_name = {c.name: c for c in self.native_copies}
        for name in names or ():
            if name not in by_name:
                raise SpecError(
                    f"the spec has no native copy {name!r} (its copies: {', '.join(by_name)})", key="native_copies"
                )
        return [by_name[n] for n in names] if names else list(self.native_copies)

    @property
    def repo_storage(self) -> StorageOptions | None:
        """The repository's storage options; they default to the source's."""
        return self.repo.storage or self.source.storage


def _key_of(error: Any) -> str:
    return ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))


def _describe(exc: ValidationError) -> tuple[str, str]:
    """One line per problem, naming the dotted key; returns (message, first key)."""
    lines, first = [], ""
    for error in exc.errors():
        key = _key_of(error)
        first = first or key
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        elif error["type"] == "missing":
            lines.append(f"missing required key '{key}'")
        else:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"'{key}': {message}" if key else message)
    return "; ".join(lines), first


def load_spec(source: str | Path) -> Spec:
    """Read a spec from a YAML file path or from YAML text.

    Parameters
    ----------
    source
        A path to a YAML file, or the YAML text itself (anything containing a newline or a colon
        that is not an existing file).

    Returns
    -------
    Spec
        The validated, frozen spec.

    Raises
    ------
    SpecError
        The file is missing, is not YAML, or does not validate; the message names the key.
    """
    text: str
    where = "spec"
    path = Path(source) if not isinstance(source, str) or "\n" not in source else None
    if path is not None and (path.suffix in (".yaml", ".yml") or path.exists()):
        if not path.is_file():
            raise SpecError(f"spec file {str(path)!r} does not exist")
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        text = str(source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{where} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{where} must be a YAML mapping with at least name, source and repo")
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        message, key = _describe(e)
        raise SpecError(f"{where}: {message}", key=key) from None


def spec_digest(spec: Spec) -> str:
    """A short, stable digest of what decides the cube's shape (source, pattern, concat, variables)."""
    keyed = spec.model_dump(include={"source", "concat", "rectilinear", "variables"}, mode="json")
    return hashlib.sha256(repr(sorted(keyed.items())).encode()).hexdigest()[:16]
