"""Beam search over many utterances in worker processes (one utterance per core)."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Sequence
from typing import Self

import numpy as np

from asr.decoding.beam import BeamSearchDecoder
from asr.decoding.hypothesis import Decoder, Hypothesis
from asr.utils.processes import become_worker

_worker_decoder: Decoder | None = None


def _init_worker(decoder: Decoder, parent: int) -> None:
    global _worker_decoder
    become_worker(parent)  # terminate() stops it whatever handlers the parent had; it ends with the parent
    _worker_decoder = decoder


def start_method() -> str:
    """fork when this process runs no other Python thread; else spawn.

    A forked child shares the parent's decoder (its LM loaded once, copy-on-write) but has only
    the forking thread: a lock another thread held at that moment stays locked in the child
    for ever. So a threaded parent (a web server, a GUI) spawns fresh interpreters instead,
    which load the LM again (once per worker, not per utterance).
    """
    return "fork" if threading.active_count() == 1 else "spawn"


def _decode_in_worker(log_probs: np.ndarray) -> list[Hypothesis]:
    assert _worker_decoder is not None
    return _worker_decoder.decode_matrix(log_probs)


class ParallelDecoder:
    """Beam search over many utterances in worker processes, one utterance per core.

    The acoustic model used every core for the emissions before, so the two phases do not
    compete. Workers are forked where that is safe (:func:`start_method`): they run only NumPy
    and flashlight code (no torch ops, whose OpenMP pool is not fork-safe), and inherit the
    parent's decoder, so the LM is loaded once and shared copy-on-write. They take default
    signal handlers and die with this process (asr/utils/processes.py). Use as a context
    manager; with ``workers <= 1`` everything runs in this process (any :class:`Decoder`).
    """

    def __init__(self, decoder: Decoder, workers: int) -> None:
        self.decoder = decoder
        self.workers = workers
        self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()  # SIGTERM; the workers' default handler ends them (become_worker)
            self._pool = None

    def decode(self, matrices: Sequence[np.ndarray]) -> list[list[Hypothesis]]:
        """n-best lists for (T, V) log-probability matrices, in input order."""
        if self.workers <= 1 or len(matrices) <= 1:
            return [self.decoder.decode_matrix(m) for m in matrices]
        if self._pool is None:
            context = multiprocessing.get_context(start_method())
            self._pool = context.Pool(self.workers, initializer=_init_worker, initargs=(self.decoder, os.getpid()))
        # Longest first, so that no worker starts a long utterance when the others are done.
        order = sorted(range(len(matrices)), key=lambda i: -len(matrices[i]))
        decoded = self._pool.map(_decode_in_worker, [matrices[i] for i in order], chunksize=2)
        results: list[list[Hypothesis]] = [[] for _ in matrices]
        for index, hypotheses in zip(order, decoded):
            results[index] = hypotheses
        return results


def decode_in_parallel(decoder: BeamSearchDecoder, matrices: Sequence[np.ndarray], workers: int) -> list[list[Hypothesis]]:
    """One-shot :class:`ParallelDecoder`."""
    with ParallelDecoder(decoder, workers) as parallel:
        return parallel.decode(matrices)
