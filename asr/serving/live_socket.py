"""Live mode of ``asr serve``: microphone PCM in over a WebSocket, interim and final text out.

Protocol on ``/api/live`` (the page in asr/serving/web/ speaks it; so can any client):

- client: ``{"type": "start", "sample_rate": 48000}``, then binary frames of little-endian
  int16 mono PCM at that rate (any size), then ``{"type": "stop"}``;
- server: ``{"type": "ready", "streaming": ...}`` (whether the model streams), then ``interim``
  and ``final`` updates (asr/inference/live.py, :meth:`LiveUpdate.record`): a final only for a
  segment with words, an interim with empty text where one that showed text turned out to have
  none; ``{"type": "done"}`` after the stop, or ``{"type": "error", "message", "code"}`` before it closes.

A server with an API key wants it as ``Authorization: Bearer KEY`` on the upgrade request or,
as browsers cannot set that header, as ``"api_key"`` in the start message (not in the URL,
which access logs keep); such a socket takes no stream slot until its key is right. A session
that sends nothing for ``live_idle_s``, or more audio than ``max_audio_seconds``, is closed;
uvicorn pings every socket (asr/serving/app.py:serve), so a vanished peer is noticed too.

Decoding runs in the server's recognition pool, never on the event loop. Audio that arrives
while a decode runs is queued and given to the next one, so a slow machine decodes less
often instead of falling behind; a client that sends far faster than that is refused.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from asr.inference.live import LiveOptions, LiveTranscriber
from asr.serving.access import key_matches
from asr.serving.context import ServerContext, Slots

START_TIMEOUT_S = 30.0  # a socket that never says "start" is closed
MAX_QUEUED_SECONDS = 30.0  # audio waiting for the decoder; more means the client sends far faster than real time
RATE_RANGE = (8000, 192000)  # sample rates a client may announce


class LiveProtocolError(Exception):
    """The client broke the protocol or a limit: told in an error message, then the socket closes."""

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code


async def _receive_start(websocket: WebSocket) -> dict:
    """The start message, parsed; LiveProtocolError if it is not one or does not come in time."""
    try:
        message = await asyncio.wait_for(websocket.receive(), START_TIMEOUT_S)
    except TimeoutError as err:
        raise LiveProtocolError(f"no start message within {START_TIMEOUT_S:g} s", "timeout") from err
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is None:
        raise LiveProtocolError('the first message must be {"type": "start", "sample_rate": N} as text')
    try:
        start = json.loads(message["text"])
    except json.JSONDecodeError as err:
        raise LiveProtocolError(f"the start message is not JSON: {err}") from err
    if not isinstance(start, dict) or start.get("type") != "start":
        raise LiveProtocolError('the first message must be {"type": "start", "sample_rate": N}')
    return start


def _start_rate(start: dict) -> int:
    rate = start.get("sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool) or not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
        raise LiveProtocolError(f"sample_rate must be an integer from {RATE_RANGE[0]} to {RATE_RANGE[1]}, not {rate!r}")
    return rate


def _samples(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise LiveProtocolError(f"a binary frame must hold int16 samples (an even number of bytes), not {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


async def live_session(websocket: WebSocket, context: ServerContext, options: LiveOptions,
                       start: dict | None = None) -> None:
    """One stream, from the start message (``start`` if it was read already) to "done";
    raises WebSocketDisconnect or LiveProtocolError."""
    loop = asyncio.get_running_loop()
    rate = _start_rate(start if start is not None else await _receive_start(websocket))
    idle_s, max_samples = context.options.live_idle_s, context.options.max_audio_seconds * rate
    transcriber = LiveTranscriber(context.recognizer, rate, options)
    await websocket.send_json({"type": "ready", "sample_rate": rate, "streaming": transcriber.streaming,
                               "interim_interval_s": options.interim_interval_s,
                               "pause_seconds": options.pause_seconds})
    queued: list[np.ndarray] = []
    state = {"queued_samples": 0, "total_samples": 0, "stopped": False}
    arrived = asyncio.Event()

    async def read() -> None:
        while not state["stopped"]:
            try:
                message = await asyncio.wait_for(websocket.receive(), idle_s)
            except TimeoutError as err:  # a silent client would hold its stream slot for ever
                raise LiveProtocolError(f"nothing received for {idle_s:g} s: the session is closed", "timeout") from err
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("bytes") is not None:
                samples = _samples(message["bytes"])
                queued.append(samples)
                state["queued_samples"] += len(samples)
                state["total_samples"] += len(samples)
                if state["total_samples"] > max_samples:
                    raise LiveProtocolError(f"the session is longer than the limit of {max_samples / rate:g} s of "
                                            "audio; start a new one", "audio_too_long")
                if state["queued_samples"] > MAX_QUEUED_SECONDS * rate:
                    raise LiveProtocolError(f"more than {MAX_QUEUED_SECONDS:g} s of audio waiting to be decoded: "
                                            "send audio at real-time pace")
            else:
                try:
                    kind = json.loads(message.get("text") or "null")
                except json.JSONDecodeError as err:
                    raise LiveProtocolError(f"a text message is not JSON: {err}") from err
                if not isinstance(kind, dict) or kind.get("type") != "stop":
                    raise LiveProtocolError('text messages after the start must be {"type": "stop"}')
                state["stopped"] = True
            arrived.set()

    reader = asyncio.create_task(read())
    try:
        while True:
            if not queued and not state["stopped"]:
                waiter = asyncio.create_task(arrived.wait())
                await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if reader.done() and reader.exception() is not None:
                    raise reader.exception()  # type: ignore[misc]
            arrived.clear()
            if queued:
                chunk = np.concatenate(queued)
                queued.clear()
                state["queued_samples"] = 0
                for update in await loop.run_in_executor(context.pool, transcriber.accept, chunk):
                    await websocket.send_json(update.record())
            elif state["stopped"]:
                for update in await loop.run_in_executor(context.pool, transcriber.finish):
                    await websocket.send_json(update.record())
                await websocket.send_json({"type": "done"})
                await websocket.close()
                return
    finally:
        reader.cancel()


async def _authenticated_start(websocket: WebSocket, key: str) -> dict:
    """The start message of a socket whose key comes in it; LiveProtocolError without the key."""
    start = await _receive_start(websocket)
    if not key_matches(key, start.get("api_key")):
        raise LiveProtocolError("this server needs its API key: send it as \"api_key\" in the start message "
                                "(or as 'Authorization: Bearer KEY')", "invalid_api_key")
    return start


def add_live_route(app: FastAPI, context: ServerContext, options: LiveOptions) -> None:
    streams = Slots(context.options.max_live)
    key = context.options.api_key

    @app.websocket("/api/live")
    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        acquired = False
        try:
            start = None
            if key is not None and "authorization" not in websocket.headers:  # the header was checked in access.py
                start = await _authenticated_start(websocket, key)  # before a slot: strangers hold none
            if not streams.try_acquire():
                message = (f"the server already serves {streams.capacity} live streams; try again later"
                           if streams.capacity else "live mode is off on this server (asr serve --max-live 0)")
                await _close_with_error(websocket, message, 1013, "server_busy")  # 1013: try again later
                return
            acquired = True
            await live_session(websocket, context, options, start)
        except WebSocketDisconnect:
            pass  # the client left: nothing to tell
        except LiveProtocolError as err:
            await _close_with_error(websocket, str(err), 1008, err.code)
        except Exception as err:  # noqa: BLE001  (a bug or a failed recognition: tell this client, serve the others)
            await _close_with_error(websocket, f"live recognition failed: {type(err).__name__}: {err}", 1011,
                                    "internal_error")
        finally:
            if acquired:
                streams.release()


async def _close_with_error(websocket: WebSocket, message: str, close_code: int, code: str) -> None:
    try:
        await websocket.send_json({"type": "error", "message": message, "code": code})
        await websocket.close(code=close_code)
    except Exception:  # noqa: BLE001, S110  (the socket is already gone)
        pass
