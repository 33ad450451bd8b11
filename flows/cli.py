"""The ``icefloe`` command.

Human output (progress bars, tables) goes to stderr; with ``--json`` stdout holds exactly one JSON
object on every exit, with an ``error`` key on exits 1 and 2. Exit codes: 0 success; 1 failure,
nothing published; 2 bad spec or usage, caught before any I/O; 3 published, but objects were
quarantined in this run; 4 (``verify``) drift found.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from flows.tables import Bars, console, copies_lines, coverage_table, plan_lines, runs_table, summary_table
from lib.errors import IcefloeError, PublishBlocked, SpecError, store_failure
from lib.memory import limit_arenas
from lib.report import EXIT_BAD_SPEC, EXIT_DRIFT, EXIT_FAILED, EXIT_OK, EXIT_QUARANTINED

limit_arenas()  # first thing: before Icechunk's and Prefect's threads make malloc arenas of their own

app = typer.Typer(
    name="icefloe",
    help="Turn an archive of netCDF/HDF5/FITS files into one virtual, versioned Zarr cube in Icechunk, "
    "and keep it current.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

SpecArg = Annotated[Path, typer.Argument(help="The cube's spec file (YAML).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (on every exit).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and Prefect's own log lines.")]


class Exit(Exception):
    """Stop with this exit code after printing ``payload`` (the --json object)."""

    def __init__(self, code: int, payload: dict[str, Any]) -> None:
        super().__init__(payload.get("error", ""))
        self.code = code
        self.payload = payload


_json_mode = False
_debug = False


def _quiet_prefect(debug: bool) -> None:
    """Prefect's and Icechunk's settings are read at import: set quiet, offline defaults first."""
    os.environ.setdefault("ICECHUNK_LOG", "error")
    # netCDF char arrays have no Zarr v3 data type spec yet; the cube stores them as VirtualiZarr does
    warnings.filterwarnings("ignore", message=r"The data type .* does not have a Zarr V3 specification")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if not debug:
        # full logs go to the Prefect API (and UI); the terminal shows progress bars and one-line errors
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def _load(spec: Path) -> Any:
    """The validated spec; expectation names are checked too, all before any I/O."""
    from lib.spec import load_spec

    loaded = load_spec(spec)
    if loaded.checks.expectations:
        from lib.expectations import check_expectation_types

        check_expectation_types(loaded.checks.expectations)
    return loaded


def _finish(payload: dict[str, Any], code: int) -> None:
    raise Exit(code, payload)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn icefloe's errors into exit codes and one-line messages."""
    try:
        yield
    except Exit:
        raise
    except SpecError as e:
        raise Exit(EXIT_BAD_SPEC, {"error": str(e), **({"key": e.key} if e.key else {})}) from None
    except PublishBlocked as e:
        raise Exit(EXIT_FAILED, {**e.summary, "error": str(e)}) from None
    except IcefloeError as e:
        raise Exit(EXIT_FAILED, {"error": str(e)}) from None
    except KeyboardInterrupt:
        raise Exit(EXIT_FAILED, {"error": "interrupted"}) from None
    except Exception as e:
        if _debug:
            traceback.print_exc()
        if (failure := store_failure(e)) is not None:
            raise Exit(EXIT_FAILED, {"error": str(failure)}) from None
        raise Exit(
            EXIT_FAILED,
            {
                "error": f"internal error: {type(e).__name__}: {e}"
                + ("" if _debug else " (run with --debug for the traceback)")
            },
        ) from None


def _run_flow(flow: Callable[..., Any], show_progress: bool, **params: Any) -> dict[str, Any]:
    """Run a flow in this process (Prefect's ephemeral API unless PREFECT_API_URL is set)."""
    from flows import progress

    bars = Bars() if show_progress else None
    progress.set_reporter(bars)
    try:
        state = flow(**params, return_state=True)
    finally:
        progress.set_reporter(None)
        if bars is not None:
            bars.stop()
    if state.is_completed():
        return state.result()
    error = state.result(raise_on_failure=False)
    if isinstance(error, BaseException):
        raise error
    raise IcefloeError(f"the flow ended in state {state.type.value}: {state.message}")


def _update(spec: Path, operation: str, as_json: bool, urls: list[str] | None = None, keep: bool = False) -> None:
    loaded = _load(spec)
    from lib.discovery import check_named_urls, check_source, compile_pattern

    check_source(loaded.source.url)
    if urls:
        check_named_urls(loaded.source.url, compile_pattern(loaded.source.pattern), urls)
    _quiet_prefect(_debug)
    from flows.build_cube import build_cube
    from flows.ingest_objects import ingest_objects

    text = spec.read_text(encoding="utf-8")
    if operation == "build":
        summary = _run_flow(build_cube, not as_json, spec=text)
    else:
        summary = _run_flow(ingest_objects, not as_json, spec=text, urls=urls, keep=keep)
    if not as_json:
        summary_table(summary, f"{operation} of {loaded.name}")
    kept = summary.get("quarantined") or summary.get("changed")  # refused, or changed objects left as they are
    _finish(summary, EXIT_QUARANTINED if kept else EXIT_OK)


@app.command()
def build(spec: SpecArg, as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Full build: parse every object into a new snapshot on main's history (history is kept)."""
    with _errors():
        _update(spec, "build", as_json)


@app.command()
def ingest(
    spec: SpecArg,
    urls: Annotated[
        list[str] | None, typer.Argument(help="Only these objects (default: everything pending).", show_default=False)
    ] = None,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Leave objects that changed since ingest as they are and report them (exit 3); by default "
            "they are re-ingested.",
        ),
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Re-ingest objects that changed since ingest (the default).")
    ] = True,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Incremental: pending objects (or the named ones) through staging and checks to main."""
    with _errors():
        _update(spec, "ingest", as_json, urls=urls or None, keep=keep)


@app.command()
def plan(spec: SpecArg, as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Dry run, writes nothing: pending and changed objects, the resulting dims, what would be quarantined."""
    with _errors():
        from lib.pipeline import Step, run_steps
        from lib.runs import CubeRun

        loaded = _load(spec)
        run = CubeRun(loaded, "ingest", "plan", write=False)
        try:
            run_steps(run, until=Step.PLAN)
            summary = run.finish()
            pending = [o.url for o in run.discovery.pending]  # read from the run's spool, before it closes
        finally:
            run.close()
        placed = run.plan_.placements if run.plan_ else {}
        payload: dict[str, Any] = {
            "discovered": summary.discovered,
            "pending": pending,
            "would_ingest": sorted(placed),
            "unchanged": summary.unchanged,
            "changed": summary.changed,
            "deferred": summary.deferred,
            "quarantined": summary.quarantined,
            "skipped": summary.skipped,
            "findings": summary.findings,
            "dims": summary.dims,
            "snapshot": summary.snapshot,
        }
        if not as_json:
            plan_lines(payload, loaded.name)
        _finish(payload, EXIT_OK)


@app.command()
def log(
    spec: SpecArg,
    limit: Annotated[int, typer.Option(help="Read at most this many snapshots.")] = 200,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """History of main: each run (build, ingest, ...) with its flow run, counts, wall time and snapshot.

    Runs are told from the cube's own log of runs, so they stay listed after `icefloe maintain` has
    expired their snapshots (shown as "(expired)").
    """
    with _errors():
        from lib.ledger import read_schema
        from lib.repository import history, open_repository, run_log

        loaded = _load(spec)
        repo = open_repository(loaded)
        if repo is None:
            raise IcefloeError(f"no cube at {loaded.repo.url} yet: run `icefloe build {spec}` first")
        entries = history(repo, loaded.repo.branch, limit)
        runs = run_log(repo, loaded.repo.branch, limit)
        schema = read_schema(repo.readonly_session(branch=loaded.repo.branch).store)
        rectilinear = list(schema.rectilinear) if schema else []
        if not as_json:
            runs_table(runs, f"{loaded.name}: history of {loaded.repo.branch}", rectilinear)
        _finish({"branch": loaded.repo.branch, "rectilinear": rectilinear, "runs": runs, "snapshots": entries}, EXIT_OK)


@app.command()
def status(
    spec: SpecArg,
    png: Annotated[Path | None, typer.Option("--png", help="Also draw the coverage map into this PNG file.")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Coverage of the cube: per pattern cell the share of the axis present, what is missing, what was refused."""
    with _errors():
        from lib.copies import copy_status
        from lib.coverage import coverage_png, measure_coverage
        from lib.repository import open_repository

        loaded = _load(spec)
        repo = open_repository(loaded)
        if repo is None:
            raise IcefloeError(f"no cube at {loaded.repo.url} yet: run `icefloe build {spec}` first")
        cov = measure_coverage(repo, loaded)
        payload = cov.to_json()
        payload["copies"] = copy_status(repo.readonly_session(branch=loaded.repo.branch).store, loaded)
        if png is not None:
            png.write_bytes(coverage_png(cov, f"{loaded.name}: share of the axis present"))
            payload["png"] = str(png)
        if not as_json:
            coverage_table(cov, loaded.name)
            copies_lines(payload["copies"], spec)
        _finish(payload, EXIT_OK)


@app.command()
def verify(spec: SpecArg, as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Drift check: objects whose source changed or disappeared since ingest (exit 4 if any)."""
    with _errors():
        from lib.maintenance import verify_sources
        from lib.repository import open_repository

        loaded = _load(spec)
        repo = open_repository(loaded)
        if repo is None:
            raise IcefloeError(f"no cube at {loaded.repo.url} yet: run `icefloe build {spec}` first")
        drift = verify_sources(repo, loaded)
        if not as_json:
            console.print(
                f"checked {drift.checked} object(s): "
                + ("no drift" if drift.clean else f"{len(drift.changed)} changed, {len(drift.gone)} gone")
            )
            for item in drift.changed:
                console.print(f"[yellow]changed[/] {item['url']} (`icefloe ingest` re-ingests it)")
            for url in drift.gone:
                console.print(f"[red]gone[/] {url}")
        _finish(drift.to_json(), EXIT_OK if drift.clean else EXIT_DRIFT)


@app.command()
def maintain(
    spec: SpecArg,
    older_than: Annotated[
        float, typer.Option("--older-than", help="Expire snapshots older than this many days.")
    ] = 30.0,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Expire old snapshots and garbage-collect (main's tip, tags and the ledger are kept)."""
    with _errors():
        _load(spec)
        from flows.maintain_repository import maintain_repository

        done = _run_flow(maintain_repository, False, spec=spec.read_text(encoding="utf-8"), older_than_days=older_than)
        if not as_json:
            console.print(
                f"expired {done['expired_snapshots']} snapshot(s), deleted {done['deleted_chunks']} "
                f"chunk(s) and {done['deleted_bytes']} byte(s); history of main: "
                f"{done['history_before']} -> {done['history_after']} snapshot(s)"
            )
        _finish(done, EXIT_OK)


@app.command()
def nativize(
    spec: SpecArg,
    variable: Annotated[list[str] | None, typer.Option("--variable", "-v", help="Only these variables.")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Rewrite small referenced coordinate variables as native chunks (opening then reads no source file)."""
    with _errors():
        _load(spec)
        from flows.nativize_coords import nativize_coords

        done = _run_flow(nativize_coords, False, spec=spec.read_text(encoding="utf-8"), variables=variable or None)
        if not as_json:
            console.print("stored natively: " + (", ".join(done["nativized"]) or "nothing to do"))
        _finish(done, EXIT_OK)


@app.command()
def rechunk(
    spec: SpecArg,
    name: Annotated[list[str] | None, typer.Argument(help="Only these copies (default: all the spec lists).")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Create or bring up to date the spec's native copies: variables rewritten into native chunks of
    the spec's choosing (native_copies), in the same repository, as the group /NAME.

    Only what changed since a copy was written is rewritten; a rerun after a crash continues where it
    stopped. Sampled chunks are compared bit for bit with the virtual data before main moves. Open a
    copy with xr.open_zarr(store, group=NAME).
    """
    with _errors():
        _load(spec).chosen_copies(name)  # no copies, or an unknown name: a usage error, before any I/O
        _quiet_prefect(_debug)
        from flows.rechunk_variables import rechunk_variables

        done = _run_flow(rechunk_variables, not as_json, spec=spec.read_text(encoding="utf-8"), names=name or None)
        if not as_json:
            copies_lines(done["copies"])
        _finish(done, EXIT_OK)


@app.command("export-kerchunk")
def export_kerchunk(
    spec: SpecArg,
    out: Annotated[Path, typer.Argument(help="OUT.json, or OUT.parquet (a directory) for large cubes.")],
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Kerchunk references of main, for readers without Icechunk (fsspec's ReferenceFileSystem)."""
    with _errors():
        from lib.export import export_kerchunk as export
        from lib.repository import open_repository

        loaded = _load(spec)
        repo = open_repository(loaded)
        if repo is None:
            raise IcefloeError(f"no cube at {loaded.repo.url} yet: run `icefloe build {spec}` first")
        done = export(repo, loaded, out)
        if not as_json:
            console.print(
                f"wrote Kerchunk references of {done['snapshot']} to {out}; open them with\n"
                f"  xr.open_dataset('reference://', engine='zarr', backend_kwargs={{'consolidated': False, "
                f"'storage_options': {{'fo': '{out}'}}}})"
            )
        _finish(done, EXIT_OK)


@app.command()
def serve(
    spec: SpecArg,
    sweep_cron: Annotated[str, typer.Option(help="When the sweep (reconciling ingest) runs.")] = "*/15 * * * *",
    maintain_cron: Annotated[str, typer.Option(help="When old snapshots are expired.")] = "0 3 * * 0",
    older_than: Annotated[float, typer.Option(help="Days of history maintenance keeps.")] = 30.0,
    threshold: Annotated[int, typer.Option(help="Events that start an ingest run.")] = 1,
    within: Annotated[int, typer.Option(help="Seconds over which --threshold events are counted.")] = 0,
    poll: Annotated[
        float,
        typer.Option(
            help="Seconds between the runner's looks for flow runs to start (runs created by events or "
            "by hand start on their creation's event, without waiting for a look; see --wake)."
        ),
    ] = 10.0,
    wake: Annotated[
        bool,
        typer.Option(
            help="Start a flow run as soon as the Prefect event of its creation arrives; --no-wake "
            "leaves it to the runner's next look (--poll)."
        ),
    ] = True,
    warm: Annotated[
        bool,
        typer.Option(
            help="Start flow runs from a fork server that imported everything once (each run still its own "
            "process); --no-warm spawns a fresh interpreter per run."
        ),
    ] = True,
    debug: DebugOpt = False,
) -> None:
    """Serve the cube's deployments (build, event-triggered ingest, sweep, maintain) against PREFECT_API_URL.

    Flow runs start in processes forked from a warm fork server, as soon as their creation's event
    arrives (and at the runner's looks, every --poll seconds).
    """
    with _errors():
        loaded = _load(spec)
        if not os.environ.get("PREFECT_API_URL"):
            raise SpecError(
                "set PREFECT_API_URL to a Prefect server (e.g. run `prefect server start`): served "
                "deployments need one that outlives this command",
                key="PREFECT_API_URL",
            )
        from flows.deployments import deployment_plans, serve_deployments

        plans = deployment_plans(
            loaded,
            spec.resolve(),
            sweep_cron=sweep_cron,
            maintain_cron=maintain_cron,
            older_than_days=older_than,
            threshold=threshold,
            within=within,
        )
        for plan in plans:
            console.print(
                f"serving {plan.name}"
                + (f" on {plan.cron}" if plan.cron else "")
                + (
                    " on icefloe.object.created under " + plan.trigger["match"]["prefect.resource.id"]
                    if plan.trigger
                    else ""
                )
            )
        if warm:
            from flows.services.warm import use_warm_processes

            use_warm_processes(expectations=bool(loaded.checks.expectations))
        serve_deployments(plans, poll=poll, wake=wake)


bridge_app = typer.Typer(
    help="Turn object-store notifications into Prefect events (icefloe.object.created).", no_args_is_help=True
)
app.add_typer(bridge_app, name="bridge")
DeadLetterOpt = Annotated[
    Path | None, typer.Option("--dead-letter", help="Append unreadable messages here (JSON lines).")
]


@bridge_app.command("webhook")
def bridge_webhook(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    dead_letter: DeadLetterOpt = None,
    debug: DebugOpt = False,
) -> None:
    """HTTP endpoint for the SeaweedFS filer webhook; needs the bearer token in ICEFLOE_WEBHOOK_TOKEN."""
    with _errors():
        import logging

        from flows.services.bridge import serve_webhook

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        serve_webhook(host, port, dead_letter)


@bridge_app.command("sqs")
def bridge_sqs(
    queue_url: Annotated[str, typer.Argument(help="The SQS queue S3 (or EventBridge) sends notifications to.")],
    dead_letter_queue: Annotated[str | None, typer.Option(help="Send unreadable messages here.")] = None,
    region: Annotated[str | None, typer.Option(help="AWS region (default: from the environment).")] = None,
    endpoint: Annotated[str | None, typer.Option(help="SQS endpoint, for SQS-compatible services.")] = None,
    wait: Annotated[int, typer.Option(help="Long-poll wait in seconds.")] = 20,
    dead_letter: DeadLetterOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Long-poll an SQS queue of S3 event notifications; messages are deleted only once emitted."""
    with _errors():
        import logging

        from flows.services.bridge import poll_sqs

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        poll_sqs(
            queue_url,
            dead_letter_queue=dead_letter_queue,
            region=region,
            endpoint=endpoint,
            wait=wait,
            dead_letter=dead_letter,
        )


@bridge_app.command("replay")
def bridge_replay(
    source: Annotated[str, typer.Argument(help="A JSON or JSON-lines file of notifications, or - for stdin.")],
    dead_letter: DeadLetterOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Emit the events of recorded notifications (S3 event records, EventBridge, SeaweedFS)."""
    with _errors():
        from flows.services.bridge import replay

        counts = replay(source, dead_letter)
        if not as_json:
            console.print(f"emitted {counts['events']} event(s); {counts['dead_lettered']} message(s) dead-lettered")
        _finish(counts, EXIT_OK)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the demo archive and cube.")] = Path(
        "icefloe-demo"
    ),
    s3: Annotated[
        bool, typer.Option("--s3", help="Run it all on a local S3 (SeaweedFS) through the event path.")
    ] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Make a small 6-D archive, build its cube (one bad file is quarantined), show how to open it.

    With --s3: a local SeaweedFS, a Prefect server, the event bridge and served deployments; new
    objects reach main through S3 notifications → Prefect events → the ingest deployment.
    """
    with _errors():
        _quiet_prefect(_debug)
        if s3:
            from flows.local.demo import run_s3_demo

            payload = run_s3_demo(directory.resolve(), console=None if as_json else console)
        else:
            from flows.local.demo import run_demo

            payload = run_demo(directory.resolve(), console=None if as_json else console, run_flow=_run_flow)
        _finish(payload, EXIT_OK)


def main(argv: list[str] | None = None) -> None:
    """Entry point: parses the command line, maps errors and usage mistakes to exit codes."""
    from typer._click import exceptions as click  # typer vendors its own click

    global _json_mode, _debug
    args = list(sys.argv[1:] if argv is None else argv)
    _json_mode = "--json" in args
    _debug = "--debug" in args
    _quiet_prefect(_debug)
    try:
        app(args=args, standalone_mode=False)
        code = EXIT_OK
    except Exit as e:
        code = e.code
        if _json_mode:
            print(json.dumps(e.payload, default=str))
        elif "error" in e.payload:
            console.print(f"[red]error:[/] {escape(str(e.payload['error']))}")
    except click.NoArgsIsHelpError:
        code = EXIT_OK
    except click.UsageError as e:
        code = EXIT_BAD_SPEC
        if _json_mode:
            print(json.dumps({"error": e.format_message()}))
        else:
            e.show(file=sys.stderr)
    except typer.Abort:
        code = EXIT_FAILED
    except typer.Exit as e:
        code = e.exit_code
    sys.stdout.flush()
    # Drop Icechunk's objects (repositories, sessions, stores kept alive by reference cycles) while the
    # interpreter is whole: dropped during its teardown, they crash it now and then (SIGSEGV after
    # the command's output), which would turn a finished command's exit code into -11.
    gc.collect()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
