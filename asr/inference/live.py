"""Live transcription of a stream of samples (the microphone on ``asr serve``'s page).

Samples arrive in pieces of any size. The open segment (audio since the last pause) is
re-decoded at most every ``interim_interval_s`` of audio, giving interim text; when a pause
of ``pause_seconds`` follows speech, the segment is decoded a last time and becomes final.
Pauses are found with the power measure long audio is cut with (:func:`smoothed_power`),
relative to the segment's own loudness and the stream's noise floor, so a quiet microphone
and a loud one both work. A segment that reaches the model's window length without a pause
is cut at its quietest point, as long files are.

A bidirectional model needs the whole segment, so each interim decodes the segment again.
A model that streams (latency-controlled or unidirectional, asr/inference/streaming.py) instead feeds
each segment's audio into a :class:`~asr.inference.streaming.RecognitionStream` as it arrives: every
call's new audio is computed once, interim text follows the audio within the model's
look-ahead (sent whenever it changes), and the final is the stream's own result. The
segmentation is the same for both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import soxr

from asr.data.audio import AUDIBLE_POWER
from asr.inference.recognizer import SpeechRecognizer
from asr.inference.results import TimedWord
from asr.inference.streaming import RecognitionStream
from asr.inference.windows import plan_windows, smoothed_power
from asr.inference.writers import word_record

FRAME_SECONDS = 0.01  # smoothed_power's frame hop
EDGE_FRAMES = 5  # smoothed_power's frames this close to the buffer's ends are averaged with zeros: not judged
STREAM_SEGMENT_SECONDS = 60.0  # a streaming model's longest live segment (see LiveOptions.max_segment_seconds)


@dataclass(frozen=True)
class LiveOptions:
    interim_interval_s: float = 0.5  # bidirectional: re-decode the open segment after at most this much new audio
    pause_seconds: float = 0.6  # this much quiet after speech ends a segment
    quiet_ratio: float = 0.03  # quiet: 100 ms power below this share of the segment's loudest (about -15 dB) ...
    noise_margin: float = 10.0  # ... or below this multiple of the stream's noise floor (10 dB)
    lead_in_seconds: float = 0.3  # audio kept before speech as the segment's start (models saw pauses in training)
    # Longest segment: None = the recognizer's window_seconds (bidirectional: what it was trained
    # on), or STREAM_SEGMENT_SECONDS for a streaming model, which has no window but must not grow
    # without bound on speech, music or noise that never pauses.
    max_segment_seconds: float | None = None


@dataclass(frozen=True)
class LiveUpdate:
    kind: str  # "interim": the open segment so far (replaces the previous interim); "final": a closed segment
    segment: int  # segments are numbered from 0 in stream order
    text: str
    start: float  # seconds of stream audio where the segment starts
    end: float  # seconds of stream audio the text covers
    words: tuple[TimedWord, ...] = ()  # with times in stream seconds (finals only)
    speech_end: float | None = None  # where speech ended in the stream (finals only)
    decode_seconds: float = 0.0  # wall time this decode took

    def record(self) -> dict:
        """The update as the WebSocket sends it (see asr/serving/web/ and the README)."""
        body: dict = {"type": self.kind, "segment": self.segment, "text": self.text,
                      "start": round(self.start, 3), "end": round(self.end, 3)}
        if self.kind == "final":
            body.update(words=[word_record(w) for w in self.words],
                        speech_end=None if self.speech_end is None else round(self.speech_end, 3),
                        decode_seconds=round(self.decode_seconds, 4))
        return body


@dataclass
class _Segment:
    samples: list[np.ndarray] = field(default_factory=list)  # pieces of the open segment, lead-in included
    length: int = 0  # samples in ``samples``
    interims: int = 0  # interim texts sent for this segment


class LiveTranscriber:
    """Turns a stream of samples into interim and final text. Not thread-safe: one stream each."""

    def __init__(self, recognizer: SpeechRecognizer, input_rate: int | None = None,
                 options: LiveOptions = LiveOptions()) -> None:
        self.recognizer = recognizer
        self.options = options
        self.rate = recognizer.sample_rate
        self.input_rate = input_rate or self.rate
        if self.input_rate <= 0:
            raise ValueError(f"sample rate must be positive, not {self.input_rate}")
        # Incremental resampling: pieces of any size give the same samples as the whole stream.
        self._resampler = soxr.ResampleStream(self.input_rate, self.rate, 1, dtype="float32") \
            if self.input_rate != self.rate else None
        self.streaming = recognizer.streams  # the model runs on the audio as it arrives
        self.max_segment_seconds = options.max_segment_seconds or \
            (STREAM_SEGMENT_SECONDS if self.streaming else recognizer.window_seconds)
        self._segment = _Segment()
        self._segment_start = 0  # stream sample where the open segment's buffer begins
        self._decoded_end = 0  # stream sample the last decode reached
        self._number = 0
        self._noise_floor = np.inf  # lowest 100 ms power seen so far
        self._stream: RecognitionStream | None = None  # the open segment's stream (streaming models)
        self._fed = 0  # buffer samples given to it
        self._interim_text = ""  # the open segment's last interim text

    @property
    def seconds(self) -> float:
        """Stream audio received so far, in seconds."""
        return (self._segment_start + self._segment.length) / self.rate

    @property
    def buffered_seconds(self) -> float:
        """Audio held for the open segment (bounded: silence is dropped, long speech is cut)."""
        return self._segment.length / self.rate

    def accept(self, samples: np.ndarray) -> list[LiveUpdate]:
        """Add mono float samples at ``input_rate``; the updates they complete."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            raise ValueError("samples must be finite (NaN or infinity received)")
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        if len(samples):
            self._segment.samples.append(samples)
            self._segment.length += len(samples)
        return self._advance(final=False)

    def finish(self) -> list[LiveUpdate]:
        """The end of the stream: the open segment becomes final."""
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if len(tail):
                self._segment.samples.append(tail)
                self._segment.length += len(tail)
        return self._advance(final=True)

    # ------------------------------------------------------------------ segmentation

    def _buffer(self) -> np.ndarray:
        if len(self._segment.samples) > 1:  # keep one piece: later calls concatenate only what is new
            self._segment.samples = [np.concatenate(self._segment.samples)]
        return self._segment.samples[0] if self._segment.samples else np.zeros(0, dtype=np.float32)

    def _speech_frames(self, power: np.ndarray) -> np.ndarray:
        """Which 10 ms frames are speech: above the segment's quiet level and the noise floor.
        ``power`` holds only frames whose smoothing window lies inside the buffer."""
        if len(power):
            self._noise_floor = min(self._noise_floor, float(power.min()))
        threshold = max(AUDIBLE_POWER, self.options.quiet_ratio * float(power.max(initial=0.0)),
                        self.options.noise_margin * self._noise_floor)
        return power > threshold

    def _advance(self, final: bool) -> list[LiveUpdate]:
        updates: list[LiveUpdate] = []
        while True:
            buffer = self._buffer()
            hop = int(self.rate * FRAME_SECONDS)
            power = smoothed_power(buffer, self.rate) if len(buffer) >= hop else np.zeros(0)
            judged_end = len(power) if final else max(len(power) - EDGE_FRAMES, EDGE_FRAMES)  # frames judged so far
            speech = EDGE_FRAMES + np.flatnonzero(self._speech_frames(power[EDGE_FRAMES:judged_end]))
            lead_in = int(self.options.lead_in_seconds / FRAME_SECONDS) * hop  # whole frames: cuts stay on the 10 ms grid
            if len(speech) == 0:  # silence so far: keep only the lead-in before whatever comes next
                if final and self._segment.interims:  # the page shows an interim: close it
                    updates.append(self._final(buffer, len(buffer), None))
                elif not final:
                    self._drop_before((judged_end * hop - lead_in) // hop * hop)
                return updates
            if speech[0] * hop > lead_in:
                self._drop_before(speech[0] * hop - lead_in)
                continue  # positions changed: measure again
            # The first pause: quiet frames after a speech frame, up to the next one (or to what is judged).
            pause_frames = int(self.options.pause_seconds / FRAME_SECONDS)
            quiet_after = np.diff(np.append(speech, judged_end)) - 1
            paused = np.flatnonzero(quiet_after >= pause_frames)
            longest = self.max_segment_seconds * self.rate
            if len(paused) or final:
                speech_end = (speech[paused[0]] + 1) * hop if len(paused) else (speech[-1] + 1) * hop
                # The segment ends halfway into the pause, so the next keeps the rest as its lead-in.
                cut = min(len(buffer), speech_end + pause_frames // 2 * hop) if len(paused) else len(buffer)
                if cut <= longest:
                    updates.append(self._final(buffer, cut, speech_end))
                    continue
            if len(buffer) > longest:  # no pause in time: cut at the quietest point, as long files are
                cut = plan_windows(buffer, self.rate, self.max_segment_seconds, overlap=0.0)[0].end
                updates.append(self._final(buffer, cut, cut))
                continue
            if final:
                return updates
            if self.streaming:  # the new audio goes in now; an interim whenever the text changes
                update = self._interim(buffer)
                if update.text != self._interim_text:
                    self._interim_text = update.text
                    self._segment.interims += 1
                    updates.append(update)
            elif self._segment_start + len(buffer) - self._decoded_end >= self.options.interim_interval_s * self.rate:
                updates.append(self._interim(buffer))
                self._segment.interims += 1
            return updates

    def _drop_before(self, position: int) -> None:
        """Forget the buffer's first ``position`` samples (they hold no speech)."""
        if position <= 0:
            return
        buffer = self._buffer()[position:]
        self._stream, self._fed = None, 0  # a stream starts with the segment's first sample: start again
        self._segment_start += position
        self._segment = _Segment([buffer] if len(buffer) else [], len(buffer), self._segment.interims)

    # ------------------------------------------------------------------ decoding

    def _decode(self, samples: np.ndarray):
        began = time.perf_counter()
        result = self.recognizer.transcribe_samples(samples, name="<live>")
        if not result.ok:
            raise RuntimeError(f"live recognition failed: {result.error}")
        return result, time.perf_counter() - began

    def _feed(self, buffer: np.ndarray, end: int) -> float:
        """Give the open segment's stream its buffer up to ``end``; the wall time it took."""
        began = time.perf_counter()
        if self._stream is None:
            self._stream, self._fed = self.recognizer.stream(name="<live>"), 0
        if end > self._fed:
            self._stream.accept(buffer[self._fed:end])
            self._fed = end
        return time.perf_counter() - began

    def _interim(self, buffer: np.ndarray) -> LiveUpdate:
        if self.streaming:
            seconds = self._feed(buffer, len(buffer))
            text = self._stream.partial_text  # type: ignore[union-attr]
        else:
            result, seconds = self._decode(buffer)
            text = result.text
        self._decoded_end = self._segment_start + len(buffer)
        start = self._segment_start / self.rate
        return LiveUpdate("interim", self._number, text, start, start + len(buffer) / self.rate,
                          decode_seconds=seconds)

    def _final(self, buffer: np.ndarray, cut: int, speech_end: int | None) -> LiveUpdate:
        """Close the segment at buffer sample ``cut``; what follows starts the next one."""
        start = self._segment_start / self.rate
        next_start = cut  # where the next segment begins: mid-pause, so that it keeps its lead-in
        if self.streaming and cut > 0:
            # Audio already in the stream stays in this segment: the quiet past a pause, fed before
            # the pause was long enough to judge (or, at the length cap, all the segment so far).
            # After a pause the next segment still starts mid-pause, so the two share that quiet
            # stretch (and any onset of the next word in it); at the cap they must not share speech.
            if speech_end is None or speech_end >= cut:
                next_start = max(cut, self._fed)
            cut = max(cut, self._fed)
            seconds = self._feed(buffer, cut)
            began = time.perf_counter()
            result = self._stream.finish().transcription  # type: ignore[union-attr]
            seconds += time.perf_counter() - began
        elif cut > 0:
            result, seconds = self._decode(buffer[:cut])
        if cut > 0:
            text = result.text
            words = tuple(TimedWord(w.word, round(float(w.start) + start, 3), round(float(w.end) + start, 3), w.confidence)
                          for w in result.words)
        else:
            text, words, seconds = "", (), 0.0
        update = LiveUpdate("final", self._number, text, start, start + cut / self.rate, words,
                            None if speech_end is None else start + speech_end / self.rate, seconds)
        self._number += 1
        rest = buffer[next_start:]
        self._segment_start += next_start
        self._decoded_end = self._segment_start  # the next segment's first interim waits for its own audio
        self._segment = _Segment([rest] if len(rest) else [], len(rest))
        self._stream, self._fed, self._interim_text = None, 0, ""
        return update
