"""P5, the ingest side: what an update into a large cube holds for the objects already in it.

    python -m benchmarks.p5_ledger [--rows 100000 500000]

Every ingest (an event-triggered one for a single new object too) starts by reading the cube's ledger,
to sort the listed objects against it and to know which places are taken. This writes a ledger of N
rows shaped like a build's (one per object: URL, ETag, pattern fields, time range, checksum, parser,
layout, cell digests, run, time) into a local repository, then loads it in a fresh process each way and
measures that process's peak RSS and the time of the load:

* ``full`` -- ``lib.ledger.read_ledger``: every column of every current row (what runs held before);
* ``index`` -- ``lib.ledger.read_ledger_index``: only what planning needs, with shared dicts (what
  ``lib.state.read_cube_state`` reads now).

The process's RSS before the load (imports, an empty dict) is measured the same way and subtracted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap

from benchmarks.common import WORK, log, python, run_measured, save

WRITE = textwrap.dedent("""
    import sys, uuid, icechunk
    from lib.ledger import INGESTED, LedgerRow, append_rows
    path, n = sys.argv[1], int(sys.argv[2])
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(path))
    session = repo.writable_session("main")
    run = str(uuid.uuid4())
    for lo in range(0, n, 100_000):
        rows = []
        for i in range(lo, min(n, lo + 100_000)):
            polygon, rest = divmod(i, 10_000)
            month, step = divmod(rest, 100)
            rows.append(LedgerRow(
                url=f"s3://archive/ensemble/polygon_{polygon:03d}/month_{month + 1:02d}/step_{step:04d}.nc",
                etag=f'"{uuid.uuid4().hex}"', status=INGESTED, size=25747,
                fields={"polygon": polygon, "month": month + 1}, ranges={"time": [step, step + 1]},
                checksum=f'"{uuid.uuid4().hex}"', parser="fast", format="hdf5", refs=8,
                layout="3e62cb34de7831e207f0", digests={"injection_rate": "99b5e0d25edfb8ebb661"},
                run=run, at="2026-11-29T20:26:26Z"))
        append_rows(session.store, rows)
    session.commit(f"{n} ledger rows")
""")

LOAD = textwrap.dedent("""
    import sys, time, icechunk
    from lib.memory import limit_arenas
    limit_arenas()  # as the icefloe command does first thing
    from lib.ledger import read_ledger, read_ledger_index
    path, how = sys.argv[1], sys.argv[2]
    store = icechunk.Repository.open(icechunk.local_filesystem_storage(path)).readonly_session("main").store
    start = time.perf_counter()
    ledger = {"full": read_ledger, "index": read_ledger_index, "none": lambda s: {}}[how](store)
    seconds = time.perf_counter() - start
    print(len(ledger), seconds)
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 500_000])
    a = ap.parse_args()
    results = {}
    for n in a.rows:
        repo = (WORK / f"ledger{n // 1000}k").resolve()
        shutil.rmtree(repo, ignore_errors=True)
        log(f"writing a ledger of {n} rows at {repo}")
        m = run_measured([*python(WRITE), str(repo), str(n)], env={"ICECHUNK_LOG": "error"})
        assert m.returncode == 0, m.stderr[-3000:]
        loads = {}
        for how in ("none", "full", "index"):
            m = run_measured([*python(LOAD), str(repo), how], env={"ICECHUNK_LOG": "error"})
            assert m.returncode == 0, m.stderr[-3000:]
            rows, seconds = m.stdout.split()
            loads[how] = {"rows": int(rows), "load_seconds": float(seconds), "peak_rss_mb": m.peak_rss_mb}
        base = loads["none"]["peak_rss_mb"]
        for how in ("full", "index"):
            loads[how]["held_mb"] = loads[how]["peak_rss_mb"] - base
            loads[how]["bytes_per_object"] = loads[how]["held_mb"] * 2**20 / n
        results[str(n)] = loads
        log(f"  {json.dumps(loads)}")
        shutil.rmtree(repo, ignore_errors=True)
    out = save(
        "p5_ledger",
        {"results": results, "command": f"python -m benchmarks.p5_ledger --rows {' '.join(map(str, a.rows))}"},
    )
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
