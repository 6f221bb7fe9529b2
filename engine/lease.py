"""The run lease: at most one run of a pipeline writes a storage root at a time.

The lease lives in the root itself, as generations `<root>/_meta/leases/<pipeline>/<generation>.json`, each
created only if absent (a hard link locally, a conditional PUT on S3), so of two runs starting together exactly
one holds generation N. The holder rewrites its own generation with a heartbeat; a run finding a newer
generation than its own has lost the lease. A run refuses to start while the newest generation is held by a
live run; it takes the lease over (creating generation N+1, again only if absent) when the holder released it,
stopped beating for `lease_timeout_s`, or was a process of this host that no longer exists.

The lease only keeps runs from stepping on each other; correctness does not rest on it: every table commit is
also conditional on the table's state its inputs and checkpoints were read at (`Runner`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

import psutil

from engine.errors import LeaseHeld, LeaseLost
from engine.layout import Layout
from engine.storage import create_only, delete_file, files_under, read_bytes, write_bytes

log = logging.getLogger(__name__)

TAKE_OVER_HINT = "--take-over"


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) one generation of a lease.

    Attributes:
        run_id: the holding run.
        host: the host name of its process.
        pid: its process id.
        process_started: its process's start time (seconds since the epoch), to tell a reused pid apart.
        started_at: when it took the lease (ISO 8601, UTC).
        heartbeat_at: its last heartbeat (seconds since the epoch).
        released: it finished and let go.
    """

    run_id: str
    host: str
    pid: int
    process_started: float
    started_at: str
    heartbeat_at: float
    released: bool = False

    @classmethod
    def this_process(cls, run_id: str) -> Holder:
        """A holder for this process, beating now."""
        now = time.time()
        return cls(run_id, socket.gethostname(), os.getpid(), psutil.Process().create_time(),
                   datetime.now(UTC).isoformat(timespec="seconds"), now)

    def encoded(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    def gone(self, timeout_s: float, now: float) -> str | None:
        """Why this holder no longer holds the lease, None while it does."""
        if self.released:
            return "it was released"
        if now - self.heartbeat_at > timeout_s:
            return f"no heartbeat for {now - self.heartbeat_at:.0f} s"
        if self.host == socket.gethostname() and not _process_alive(self.pid, self.process_started):
            return f"its process {self.pid} on this host is gone"
        return None

    def is_this_process(self) -> bool:
        """Whether this holder is the calling process."""
        return self.host == socket.gethostname() and self.pid == os.getpid()

    def describe(self, now: float) -> str:
        return (f"run {self.run_id} (host {self.host}, pid {self.pid}, started {self.started_at}, "
                f"last heartbeat {max(now - self.heartbeat_at, 0):.0f} s ago)")


def other_live_holders(layout: Layout, timeout_s: float = 60.0) -> list[tuple[str, Holder]]:
    """Each pipeline whose run lease on the root is held by a live run of another process, with its holder."""
    latest: dict[str, int] = {}
    for name in files_under(layout.leases()):
        pipeline, _, file = name.rpartition("/")
        if pipeline and file.removesuffix(".json").isdigit():
            latest[pipeline] = max(latest.get(pipeline, 0), int(file.removesuffix(".json")))
    now, found = time.time(), []
    for pipeline, generation in sorted(latest.items()):
        lease = RunLease(layout, pipeline, timeout_s=timeout_s)
        holder = lease._read(generation)
        if holder is not None and holder.gone(timeout_s, now) is None and not holder.is_this_process():
            found.append((pipeline, holder))
    return found


def _process_alive(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 1 and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class RunLease:
    """The lease of one pipeline on one root, held from `acquire` until `release`, with a heartbeat thread.

    Args:
        layout: the storage root.
        pipeline: the pipeline's name.
        timeout_s: a holder silent for longer is taken to be dead.
        heartbeat_s: how often the holder beats.
    """

    def __init__(self, layout: Layout, pipeline: str, *, timeout_s: float = 60.0, heartbeat_s: float = 10.0) -> None:
        self.folder = layout.leases(pipeline)
        self.pipeline = pipeline
        self.root = layout.root
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.generation: int | None = None
        self.holder: Holder | None = None
        self.lost_to: Holder | None = None
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def _uri(self, generation: int) -> str:
        return f"{self.folder}/{generation:012d}.json"

    def _generations(self) -> list[int]:
        return sorted(int(name.removesuffix(".json")) for name in files_under(self.folder)
                      if name.endswith(".json") and name.removesuffix(".json").isdigit())

    def _read(self, generation: int) -> Holder | None:
        data = read_bytes(self._uri(generation))
        return Holder(**json.loads(data)) if data else None

    def acquire(self, run_id: str, *, take_over: bool = False) -> None:
        """Hold the lease for `run_id`, and start beating.

        Raises:
            LeaseHeld: a live run holds it (unless `take_over`), or another run took it at the same moment.
        """
        generations = self._generations()
        latest = generations[-1] if generations else 0
        current = self._read(latest) if latest else None
        now = time.time()
        if current is not None and not take_over and current.gone(self.timeout_s, now) is None:
            raise self._held(current, now)
        if current is not None and not current.released:
            log.warning("run lease of `%s`: taking over from %s: %s", self.pipeline, current.describe(now),
                        "asked to" if take_over else current.gone(self.timeout_s, now))
        holder = Holder.this_process(run_id)
        if not create_only(self._uri(latest + 1), holder.encoded()):
            winner = self._read(latest + 1)
            raise self._held(winner, time.time()) if winner else LeaseHeld(
                f"another run of `{self.pipeline}` took the run lease on `{self.root}` at the same moment",
                path=self.folder)
        self.generation, self.holder = latest + 1, holder
        for old in generations[:-1]:
            delete_file(self._uri(old))
        self._beating = threading.Thread(target=self._beat, name=f"lease-{self.pipeline}", daemon=True)
        self._beating.start()

    def _held(self, holder: Holder, now: float) -> LeaseHeld:
        return LeaseHeld(
            f"pipeline `{self.pipeline}` on `{self.root}` is being run by {holder.describe(now)}; wait for it to "
            f"finish, or, if it is gone, run again with {TAKE_OVER_HINT} (a lease without a heartbeat for "
            f"{self.timeout_s:.0f} s is taken over by itself)", run_id=holder.run_id, path=self.folder)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.check()
                self._write(replace(self.holder, heartbeat_at=time.time()))
            except LeaseLost:
                return
            except OSError as err:
                log.warning("run lease of `%s`: heartbeat failed: %s", self.pipeline, err)

    def _write(self, holder: Holder) -> None:
        assert self.generation is not None
        self.holder = holder
        write_bytes(self._uri(self.generation), holder.encoded())

    def check(self) -> None:
        """Raise when another run has taken the lease over since this one acquired it.

        Raises:
            LeaseLost: naming the run that holds it now.
        """
        if self.lost_to is None and self.generation is not None:
            newer = [g for g in self._generations() if g > self.generation]
            if newer:
                self.lost_to = self._read(newer[-1])
        if self.lost_to is not None:
            raise LeaseLost(f"the run lease of `{self.pipeline}` on `{self.root}` was taken over by "
                            f"{self.lost_to.describe(time.time())}; this run stops", path=self.folder)

    def release(self) -> None:
        """Stop beating and let the lease go (unless it was taken over)."""
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        if self.holder is None or self.lost_to is not None:
            return
        try:
            self.check()
        except LeaseLost:
            return
        self._write(replace(self.holder, released=True, heartbeat_at=time.time()))
