"""Executors: one interface over threads, processes and Lithops (localhost or AWS Lambda).

Work is sent as calls of a plain, importable function on small arguments (batches of URLs, not
data: Lithops caps a call's payload at 4 MiB). Each call's failure is returned in its place, never
raised, so one broken call never loses the others' results.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor as _FuturesExecutor
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lib.errors import SpecError
from lib.local.faults import hooks_in_effect
from lib.memory import limit_arenas

if TYPE_CHECKING:
    from lib.spec import Execution

__all__ = ["CallFailed", "Executor", "lithops_config", "make_executor"]


@dataclass
class CallFailed:
    """A call that raised or whose worker died: ``error`` says how."""

    error: str
    crashed: bool = False


class Executor:
    """Runs ``fn(*args)`` for each argument tuple and returns the results in order."""

    name = "serial"
    workers = 1

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], timeout: float | None = None) -> list[Any]:
        return list(self.imap(fn, calls, timeout))

    def imap(
        self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], timeout: float | None = None
    ) -> Iterator[Any]:
        """Results in order, each as soon as it (and those before it) are done.

        ``timeout`` bounds each call where the executor can stop a call (worker processes); a call
        that overruns comes back as a crashed ``CallFailed``.
        """
        for args in calls:
            try:
                yield fn(*args)
            except Exception as e:
                yield CallFailed(f"{type(e).__name__}: {e}")

    def close(self) -> None:
        """Release workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


STORE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")


def _worker_env() -> dict[str, str | None]:
    """What a worker takes over from the run that starts it (None: unset there): the object store's
    settings and credentials (``AWS_*``) and the test hooks."""
    names = {*STORE_ENV, *(k for k in os.environ if k.startswith("AWS_"))}
    return {**{k: os.environ.get(k) for k in sorted(names)}, **hooks_in_effect()}


def _init_worker(hooks: dict[str, str | None]) -> None:
    """Set up a parse worker process: cap malloc's arenas, die with the process that started it, and
    take the environment of the run that started it (credentials, test hooks): the forkserver that
    forks workers may be older than the run, and carries the environment it was started with."""
    limit_arenas()
    _exit_with_parent()
    for name, value in hooks.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _exit_with_parent() -> None:
    """Exit this worker when its parent goes, however it goes.

    A killed run (SIGKILL, the OOM killer, a cancelled flow's process) cannot shut its pool down, and
    the pool's workers would wait for work forever, holding memory and the run's stdout and stderr
    (whoever reads those would never see them close). ``parent_process().sentinel`` becomes ready
    when the parent is gone; a daemon thread waits on it and ends the process.
    """
    import multiprocessing
    import threading
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="icefloe-exit-with-parent", daemon=True).start()


@dataclass
class PoolExecutor(Executor):
    """Threads or processes from :mod:`concurrent.futures`; a process pool that breaks is rebuilt."""

    kind: str = "processes"
    workers: int = 2
    _pool: _FuturesExecutor | None = field(default=None, repr=False)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.kind

    def _get_pool(self) -> _FuturesExecutor:
        if self._pool is None:
            if self.kind == "threads":
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="icefloe-parse")
            else:
                import multiprocessing

                # forkserver: workers never inherit the threads of Prefect's client or the event loop
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_init_worker,
                    initargs=(_worker_env(),),
                )
        return self._pool

    def imap(
        self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], timeout: float | None = None
    ) -> Iterator[Any]:
        from concurrent.futures import TimeoutError as FutureTimeout
        from concurrent.futures.process import BrokenProcessPool

        pool = self._get_pool()
        futures = [pool.submit(fn, *args) for args in calls]
        broken = False
        try:
            for future in futures:
                try:
                    yield future.result(timeout=timeout if self.kind == "processes" and not broken else None)
                except FutureTimeout:
                    broken = True
                    self._kill_workers()  # a hung parser cannot be interrupted: its process goes
                    yield CallFailed(f"did not finish within {timeout:.0f} s", crashed=True)
                except BrokenProcessPool as e:
                    broken = True
                    yield CallFailed(f"a worker process died ({e})", crashed=True)
                except Exception as e:
                    yield CallFailed(f"{type(e).__name__}: {e}")
        finally:
            if broken:
                self.close()

    def _kill_workers(self) -> None:
        processes = getattr(self._pool, "_processes", None) or {}
        for process in list(processes.values()):
            process.kill()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def lithops_config(execution: Execution) -> dict[str, Any]:
    """The Lithops configuration a spec's ``execution.lithops`` section stands for."""
    lithops = execution.lithops
    if lithops.backend == "localhost":
        return {
            "lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING"},
            "localhost": {"runtime": sys.executable, "worker_processes": execution.workers, "version": 1},
        }
    aws = lithops.aws_lambda
    assert aws is not None  # the spec guarantees it
    config: dict[str, Any] = {
        "lithops": {"backend": "aws_lambda", "storage": "aws_s3", "log_level": "WARNING"},
        "aws": {"region": aws.region},
        "aws_lambda": {
            "execution_role": aws.execution_role,
            "region": aws.region,
            "runtime": aws.runtime,
            "runtime_memory": aws.runtime_memory,
            "runtime_timeout": aws.runtime_timeout,
        },
        "aws_s3": {"region": aws.region},
    }
    if aws.storage_bucket:
        config["aws_s3"]["storage_bucket"] = aws.storage_bucket
    return config


@dataclass
class LithopsExecutor(Executor):
    """Lithops' FunctionExecutor: the localhost backend here, AWS Lambda by configuration."""

    config: dict[str, Any] = field(default_factory=dict)
    workers: int = 2
    _fexec: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"lithops/{self.config['lithops']['backend']}"

    def imap(
        self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], timeout: float | None = None
    ) -> Iterator[Any]:
        yield from self.map(fn, calls, timeout)

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], timeout: float | None = None) -> list[Any]:
        import lithops

        if self._fexec is None:
            self._fexec = lithops.FunctionExecutor(config=self.config)
        futures = self._fexec.map(
            _call_packed, [((fn, args),) for args in calls], timeout=int(timeout) if timeout else None
        )
        results = self._fexec.get_result(futures, throw_except=False)
        out: list[Any] = []
        for future, result in zip(futures, results, strict=True):
            # a failed call can report success: look at what came back
            if getattr(future, "error", False) or isinstance(result, BaseException) or result is None:
                out.append(CallFailed(f"lithops call failed: {result!r}"))
            else:
                out.append(result)
        return out

    def close(self) -> None:
        if self._fexec is not None:
            with contextlib.suppress(Exception):  # cleaning is best effort: the results are in hand
                self._fexec.clean(clean_cloudobjects=True)
            self._fexec = None


def _call_packed(packed: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    fn, args = packed
    return fn(*args)


def make_executor(execution: Execution) -> Executor:
    """The executor a spec's ``execution`` section asks for."""
    if execution.executor in ("threads", "processes"):
        if execution.executor == "processes" and execution.workers == 1:
            return Executor()
        return PoolExecutor(kind=execution.executor, workers=execution.workers)
    if execution.executor == "lithops":
        return LithopsExecutor(config=lithops_config(execution), workers=execution.workers)
    raise SpecError(f"unknown executor {execution.executor!r}", key="execution.executor")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
