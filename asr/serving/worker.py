"""Recognition in worker processes that can always be stopped (``asr serve``).

A thread cannot be killed, so a recognition that hangs or runs far too long (hours of silence
through a slow beam search, a bug) would hold the server for good. Each recognition worker is
therefore a process with its own copy of the recognizer, running one task at a time:

- *spawned* (a fresh interpreter), never forked from the threaded server: a fork copies the
  locks other threads hold and uvicorn's signal handlers (issue 33: the decoding pool's forked
  children kept uvicorn's SIGTERM handler, so ``Pool.terminate()`` could not end one waiting
  for the queue lock the terminating server held, and the server waited for it for ever);
- with default SIGTERM, Ctrl-C left to the server, killed by the kernel when the server ends
  (asr/utils/processes.py), and in a process group of its own, so that killing the group also
  ends the beam search's worker processes it forks (asr/decoding/parallel.py);
- killed when a task outlives ``timeout_s`` and replaced by a fresh one at once (it loads the
  model in the background; the next task waits for it).

A task is a module-level function ``task(recognizer, *args)`` (sent by name, as pickle sends
functions); its arguments and result travel pickled, so pass file paths, not audio.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import numpy as np

from asr.inference.recognizer import SpeechRecognizer
from asr.inference.results import Transcription
from asr.utils.processes import become_worker

T = TypeVar("T")
START_TIMEOUT_S = 600.0  # a new worker loads the model and its LM (a large ARPA file takes minutes)
REAP_TIMEOUT_S = 5.0  # a killed worker's exit status arrives within this
CLOSE_GRACE_S = 2.0  # an idle worker told to leave exits within this (else it is killed)
SHUTTING_DOWN = "the server is shutting down"


class RecognitionTimeout(Exception):
    """A task ran longer than the limit; its worker was killed and a fresh one started."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"the recognition ran longer than the limit of {limit_s:g} s and was stopped")
        self.limit_s = limit_s


class WorkerUnavailable(Exception):
    """No answer from a worker: the workers are stopping, or the worker died (it was replaced)."""


class RemoteError(Exception):
    """An exception a worker raised that cannot travel back as itself: its type and message."""


class WorkerStartError(RuntimeError):
    """A new worker could not load the recognizer that this process holds: a bug (500)."""


def transcribe_upload(recognizer: SpeechRecognizer, upload: Any) -> Transcription:
    """The task of the transcription routes: the uploaded file (``upload.path``) transcribed."""
    return recognizer.transcribe([upload.path])[0]


def _portable(err: Exception) -> Exception:
    """``err`` if it survives pickling (custom __init__ signatures may not), else a RemoteError."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001  (any failure to round-trip: send its text instead)
        return RemoteError(f"{type(err).__name__}: {err}")


def _serve_tasks(recognizer_pickle: bytes, parent: int, conn: Connection) -> None:
    """A worker's life: load the recognizer, say "ready", run tasks until the server closes the pipe."""
    become_worker(parent)
    os.setpgrp()  # its own group: killing the group also ends the decoding processes it forks
    try:
        try:
            with warnings.catch_warnings():  # torch's notices on rebuilding (int8) tensors: nothing to act on
                warnings.filterwarnings("ignore", module=r"torch\._utils")
                recognizer = pickle.loads(recognizer_pickle)  # our own pickle, from the server that started us
            if isinstance(recognizer, SpeechRecognizer):  # its LM loads on first use: now, not in a request's time
                recognizer.transcribe_samples(np.zeros(recognizer.sample_rate, dtype=np.float32), "<warm-up>")
        except Exception as err:  # noqa: BLE001  (told to the server, which reports it per request)
            conn.send(("failed", f"{type(err).__name__}: {err}"))
            return
        conn.send(("ready", None))
        while True:
            task, args = conn.recv()
            try:
                outcome = ("ok", task(recognizer, *args))
            except Exception as err:  # noqa: BLE001  (a failed recognition or a bug: the caller reports it)
                outcome = ("error", _portable(err))
            try:
                conn.send(outcome)
            except (pickle.PicklingError, TypeError, AttributeError) as err:  # a result that does not pickle: a bug
                conn.send(("error", RemoteError(f"the result could not be sent back: {type(err).__name__}: {err}")))
    except (EOFError, BrokenPipeError, ConnectionResetError):  # the server closed the pipe: it is done with us
        return


def _receive(conn: Connection) -> tuple[str, Any]:
    """A worker's answer; one that pickled there but does not unpickle here (an exception with
    its own __init__ arguments) becomes a RemoteError, and the worker stays usable."""
    data = conn.recv_bytes()
    try:
        return pickle.loads(data)  # from our own worker
    except Exception as err:  # noqa: BLE001
        return "error", RemoteError(f"the recognition's answer could not be read: {type(err).__name__}: {err}")


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection  # the server's end of the worker's pipe
    ready: bool = False  # it said "ready": the model is loaded
    busy: bool = False  # a call holds it: only that call's thread touches its pipe


def _kill(workers: list[_Worker]) -> None:
    """SIGKILL the workers' process groups, without locks (a signal handler may call this)."""
    for worker in list(workers):
        pid = worker.process.pid
        if pid is None or worker.process.exitcode is not None:  # never started, or reaped: the pid may be reused
            continue
        for kill in (os.killpg, os.kill):  # the group (before setpgrp has run: the process alone)
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass


class RecognitionWorkers:
    """``count`` worker processes, each holding a copy of ``recognizer``. :meth:`call` runs a
    task in an idle one, from any thread, and kills and replaces it past ``timeout_s`` (None:
    no limit). At most ``count`` threads may call at once (the server's recognition pool)."""

    def __init__(self, recognizer: SpeechRecognizer, count: int, timeout_s: float | None) -> None:
        self.count, self.timeout_s = count, timeout_s
        try:
            self._recognizer_pickle = pickle.dumps(recognizer)  # each new worker starts from this copy
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            raise TypeError(f"the recognizer cannot be copied into a recognition worker process: {err}") from err
        self._context = multiprocessing.get_context("spawn")
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._workers: list[_Worker] = []  # started and not yet reaped
        self._lock = threading.Lock()  # start() and reaping; never taken by stop()
        self._started = False
        self.stopping = False
        # Killed when this object goes, and at exit before multiprocessing's own exit hook (registered
        # earlier, so run later) joins them: they are not daemons, which may not start processes.
        weakref.finalize(self, _kill, self._workers)
        atexit.register(_kill, self._workers)

    def start(self) -> None:
        """Start the workers; they load in the background (:meth:`call` waits for them)."""
        with self._lock:
            if not self._started and not self.stopping:
                self._started = True
                for _ in range(self.count):
                    self._idle.put(self._spawn())

    def call(self, task: Callable[..., T], *args: Any) -> T:
        """``task(recognizer, *args)`` in a worker, waiting for its answer: its result, or the
        exception it raised; RecognitionTimeout past the limit, WorkerUnavailable when the
        workers are stopping or the worker died."""
        self.start()
        if self.stopping:
            raise WorkerUnavailable(SHUTTING_DOWN)
        worker = self._idle.get()
        worker.busy = True
        try:
            if self.stopping:  # stop() came after the check above: it may not have seen this one busy
                raise WorkerUnavailable(SHUTTING_DOWN)
            self._wait_until_ready(worker)
            worker.conn.send((task, args))
            if not worker.conn.poll(self.timeout_s):
                worker = self._replace(worker)
                raise RecognitionTimeout(self.timeout_s)  # type: ignore[arg-type]  (poll(None) never times out)
            kind, value = _receive(worker.conn)
        except WorkerStartError:
            worker = self._replace(worker)
            raise
        except (EOFError, OSError) as err:  # killed by stop(), or died
            code = worker.process.exitcode
            worker = self._replace(worker)
            if self.stopping:
                raise WorkerUnavailable(f"{SHUTTING_DOWN}; the recognition was stopped") from err
            raise WorkerUnavailable(f"the recognition process died (exit code {code}); a new one was "
                                    "started") from err
        finally:
            worker.busy = False
            self._idle.put(worker)
        if kind == "error":
            raise value
        return value

    def stop(self) -> None:
        """Refuse new tasks and kill the workers running one, now. Takes no lock: a signal
        handler calls it. Idle workers are left to :meth:`close`."""
        self.stopping = True
        _kill([worker for worker in self._workers if worker.busy])

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """:meth:`stop`; idle workers are told to leave (EOF on their pipe: they exit as
        processes normally do, releasing what they hold), killed if still there after
        ``grace_s``; all are reaped (busy ones by the thread that holds them)."""
        self.stop()
        with self._lock:
            for worker in self._workers:
                if not worker.busy and not worker.conn.closed:
                    worker.conn.close()
        deadline = time.monotonic() + grace_s
        for worker in list(self._workers):
            worker.process.join(max(0.0, deadline - time.monotonic()))
        _kill(self._workers)
        for worker in list(self._workers):
            if not worker.busy:
                self._reap(worker)

    def _spawn(self) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=_serve_tasks, name="asr-recognition",
                                        args=(self._recognizer_pickle, os.getpid(), theirs))
        process.start()
        theirs.close()  # the worker holds the only other end: its death reads as EOF here
        worker = _Worker(process, ours)
        self._workers.append(worker)
        return worker

    def _wait_until_ready(self, worker: _Worker) -> None:
        if worker.ready:
            return
        if not worker.conn.poll(START_TIMEOUT_S):
            raise WorkerUnavailable(f"the recognition process did not load the model within {START_TIMEOUT_S:g} s")
        kind, detail = worker.conn.recv()
        if kind == "failed":
            raise WorkerStartError(f"the recognition process could not load the model: {detail}")
        worker.ready = True

    def _replace(self, worker: _Worker) -> _Worker:
        """Kill and reap ``worker``; a fresh one in its place (the dead one when stopping: calls fail fast)."""
        _kill([worker])
        self._reap(worker)
        return worker if self.stopping else self._spawn()

    def _reap(self, worker: _Worker) -> None:
        worker.process.join(REAP_TIMEOUT_S)
        with self._lock:  # close() and a caller may reap the same worker: close its pipe once
            if not worker.conn.closed:
                worker.conn.close()
            if worker.process.exitcode is not None:
                with contextlib.suppress(ValueError):  # already gone from the list
                    self._workers.remove(worker)

