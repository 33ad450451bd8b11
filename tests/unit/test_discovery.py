"""Pattern grammar, listing through obstore, and sorting objects against the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib.discovery import classify_objects, compile_pattern, head_sources, list_sources
from lib.errors import SpecError
from lib.ledger import LedgerRow
from lib.storage import object_store


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("polygon_{polygon:d}/month_{month:d}/*.nc", "polygon_007/month_3/step_1.nc", {"polygon": 7, "month": 3}),
        ("polygon_{polygon:d}/month_{month:d}/*.nc", "polygon_007/month_3/sub/step_1.nc", None),
        ("polygon_{polygon:d}/*.nc", "polygon_x/a.nc", None),
        ("{model}/{member}/*.nc", "cesm/r1i1p1/tas.nc", {"model": "cesm", "member": "r1i1p1"}),
        ("{model}/*.nc", "a/b/tas.nc", None),  # a field stays within one segment
        ("**/*.nc", "a/b/c/tas.nc", {}),
        ("**/*.nc", "tas.nc", {}),
        ("data_??.nc", "data_01.nc", {}),
        ("data_??.nc", "data_001.nc", None),
        ("*.nc", "tas.nc.bak", None),
        ("{b}/x_{a:d}/**", "q/x_0012/y/z.nc", {"b": "q", "a": 12}),
        ("**/{run}/m_{member:d}_?.nc", "a/b/r1/m_3_q.nc", {"run": "r1", "member": 3}),
        ("**/{run}/m_{member:d}_?.nc", "r1/m_-3_q.nc", None),
    ],
)
def test_pattern_matching(pattern: str, path: str, expected: dict | None) -> None:
    compiled = compile_pattern(pattern)
    assert compiled.match(path) == expected
    # what parse itself makes of the match, converters and all (icefloe converts the fields itself)
    full = compiled.parser.parse(path)
    assert (None if full is None else dict(full.named)) == expected
    if expected is not None:
        assert list(compiled.match(path) or {}) == list(compiled.fields)  # the fields in pattern order


def test_pattern_fields_and_listing_prefix() -> None:
    p = compile_pattern("runs/polygon_{polygon:d}/{tag}/*.nc")
    assert p.fields == {"polygon": "int", "tag": "str"}
    assert p.prefix == "runs/"
    assert compile_pattern("*.nc").prefix == ""


def test_listing_matches_sorts_and_ignores_the_rest(tmp_path: Path) -> None:
    for rel in ["polygon_10/a.nc", "polygon_2/b.nc", "polygon_2/a.nc", "polygon_2/notes.txt", "other/x.nc"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * 3)
    url = f"file://{tmp_path}/"
    found, unsafe, listed = list_sources(url, object_store(url), compile_pattern("polygon_{polygon:d}/*.nc"))
    assert listed == 5  # every object under the source, matching or not
    assert [o.url.removeprefix(url) for o in found] == ["polygon_2/a.nc", "polygon_2/b.nc", "polygon_10/a.nc"]
    assert [o.field_values for o in found] == [{"polygon": 2}, {"polygon": 2}, {"polygon": 10}]
    assert all(o.size == 3 and o.etag for o in found)
    assert unsafe == []


def test_named_objects_are_looked_up_like_the_listing_finds_them(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for rel in ["polygon_10/a.nc", "polygon_2/b.nc", "polygon_2/a.nc", "polygon_2/notes.txt"]:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(b"x" * 3)
    (tmp_path / "secret.nc").write_bytes(b"s")
    (source / "polygon_2" / "link.nc").symlink_to(tmp_path / "secret.nc")  # leads out of the source
    url = f"file://{source}/"
    store, pattern = object_store(url), compile_pattern("polygon_{polygon:d}/*.nc")
    listed, listed_unsafe, _ = list_sources(url, store, pattern)
    named = [url + "polygon_10/a.nc", url + "polygon_2/a.nc", url + "polygon_2/link.nc"]
    outside = [url + "polygon_2/gone.nc", url + "polygon_2/notes.txt", f"file://{tmp_path}/secret.nc"]
    found, unsafe, missing = head_sources(url, store, pattern, named + outside)
    assert found == [o for o in listed if o.url in named]  # same etag, size, time, fields, order
    assert unsafe == listed_unsafe == [url + "polygon_2/link.nc"]
    assert missing == sorted(outside)


def test_a_missing_source_directory_is_a_usage_error_naming_the_key(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/missing/"
    with pytest.raises(SpecError, match=r"missing/ does not exist .*check source.url") as error:
        list_sources(url, object_store(url), compile_pattern("*.nc"))
    assert error.value.key == "source.url"


def test_classify_against_the_ledger(tmp_path: Path) -> None:
    for name in "abcde":
        (tmp_path / f"{name}.nc").write_bytes(name.encode())
    url = f"file://{tmp_path}/"
    found = list_sources(url, object_store(url), compile_pattern("*.nc")).objects
    etag = {o.url: o.etag for o in found}
    ledger = {
        url + "a.nc": LedgerRow(url + "a.nc", etag[url + "a.nc"], "ingested"),
        url + "b.nc": LedgerRow(url + "b.nc", "old-etag", "ingested"),
        url + "c.nc": LedgerRow(url + "c.nc", etag[url + "c.nc"], "quarantined", reason="bad"),
        url + "d.nc": LedgerRow(url + "d.nc", "old-etag", "quarantined", reason="bad"),
    }
    d = classify_objects(found, ledger)
    assert [o.url for o in d.unchanged] == [url + "a.nc"]
    assert [o.url for o in d.changed] == [url + "b.nc"]
    assert [o.url for o in d.known_bad] == [url + "c.nc"]
    assert sorted(o.url for o in d.pending) == [url + "d.nc", url + "e.nc"]  # new, and bad-but-changed
    assert d.discovered == 5
    replaced = classify_objects(found, ledger, replace=True)
    assert url + "b.nc" in {o.url for o in replaced.pending} and not replaced.changed
    only = classify_objects(found, ledger, only={url + "e.nc"})
    assert [o.url for o in only.pending] == [url + "e.nc"] and only.discovered == 1


def test_a_retried_discovery_starts_from_an_empty_spool(workdir: Path) -> None:
    """A discovery retried in the same run (Prefect retries the step on a store error) lists afresh,
    even while the failed attempt's spool is still held: nothing it found stays behind."""
    import uuid

    from lib.pipeline import Step, run_steps
    from lib.runs import CubeRun
    from tests.helpers import dataset, make_spec, run_cube, write_nc4

    def day(n: int) -> Path:
        return write_nc4(workdir / "archive" / f"day_{n:03d}.nc", dataset(n))  # type: ignore[arg-type]

    day(0)
    spec = make_spec(workdir, "day_*.nc")
    assert run_cube(spec).exit_code == 0
    gone = day(1)
    day(2)
    run = CubeRun(spec, "ingest", str(uuid.uuid4()))
    try:
        run_steps(run, until=Step.OPEN)
        run.discover()
        first = run.discovery  # as a failed attempt's traceback would hold it
        assert first is not None and len(first.pending) == 2
        gone.unlink()  # gone before the retry lists again
        run.discover()
        assert run.discovery is not None
        assert [o.url.rsplit("/", 1)[1] for o in run.discovery.pending] == ["day_002.nc"]
        assert len(run.discovery.unchanged) == 1 and len(first.pending) == 2
    finally:
        run.close()
