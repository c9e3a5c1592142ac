"""Live transcription of a stream of samples (the microphone on ``asr serve``'s page).

Samples arrive in pieces of any size. The open segment (audio since the last pause) is
re-decoded at most every ``interim_interval_s`` of audio, giving interim text; when a pause
of ``pause_seconds`` follows speech, the segment is decoded a last time and becomes final.
Pauses are found with the power measure long audio is cut with (:func:`smoothed_power`),
relative to the stream's noise floor (its quietest 100 ms, digital silence aside), so a quiet
microphone and a loud one both work; read speech spans 40 dB and more, so the segment's own
loudness only counts far below it. A segment that reaches the longest segment without such a
pause is cut in its longest shorter pause (the quietest point only when it has none).

A segment that was never ``speech_margin`` over the noise floor for ``min_speech_seconds``
(a click, the room's own rise and fall) is dropped without a final, as is one that decodes to no words; if the page
was shown interim text for it, an empty interim clears that.

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
SMOOTHED_FRAMES = 10  # smoothed_power averages this many frames (100 ms)
EDGE_FRAMES = 5  # smoothed_power's frames this close to the buffer's ends are averaged with zeros: not judged
STREAM_SEGMENT_SECONDS = 60.0  # a streaming model's longest live segment (see LiveOptions.max_segment_seconds)
# 10 ms frames quieter than this are digital silence (a microphone's first buffers, a noise
# gate), not the room: they never set the noise floor. A floor this low would not move the
# quiet threshold anyway (it never goes below AUDIBLE_POWER).
SILENT_FRAME_POWER = AUDIBLE_POWER / 100
MIN_CUT_PAUSE_FRAMES = 5  # at the length cap, a quiet run of 50 ms (smoothed: ~150 ms of gap) is a pause to cut in


@dataclass(frozen=True)
class LiveOptions:
    interim_interval_s: float = 0.5  # bidirectional: re-decode the open segment after at most this much new audio
    pause_seconds: float = 0.6  # this much quiet after speech ends a segment
    # Quiet: 100 ms power below this multiple of the stream's noise floor (10 dB) ...
    noise_margin: float = 10.0
    # ... or below this share of the segment's loudest (-40 dB: read speech's weak sounds lie
    # 30 dB under its vowels, so -15 dB cut LibriSpeech sentences at every soft stretch).
    quiet_ratio: float = 1e-4
    # A segment is speech if this much of it (100 ms power, so ~0.1 s more than the sound
    # itself) is this far over the noise floor (20 dB); else it ends without a final: a click,
    # the room's own rise and fall.
    speech_margin: float = 100.0
    min_speech_seconds: float = 0.15
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

    def _quiet_level(self, buffer: np.ndarray, power: np.ndarray, judged: slice) -> float:
        """The 100 ms power at or below which a judged frame is quiet; updates the noise floor
        from the judged frames whose 100 ms hold no digital silence."""
        hop = int(self.rate * FRAME_SECONDS)
        frames = buffer[: len(buffer) // hop * hop].reshape(-1, hop)  # (frames, hop), a view
        silent = np.ones(len(power), dtype=bool)  # a buffer under 100 ms has more power frames than frames
        silent[: len(frames)] = np.einsum("ij,ij->i", frames, frames) / hop < SILENT_FRAME_POWER
        if len(silent):
            silent = np.convolve(silent, np.ones(SMOOTHED_FRAMES), mode="same")[: len(power)] > 0  # smoothed_power's reach
        room = power[judged][~silent[judged]]
        if len(room):
            self._noise_floor = min(self._noise_floor, float(room.min()))
        floor = self._noise_floor if np.isfinite(self._noise_floor) else 0.0
        return max(AUDIBLE_POWER, self.options.quiet_ratio * float(power[judged].max(initial=0.0)),
                   self.options.noise_margin * floor)

    def _speech_level(self) -> float:
        """The 100 ms power a segment must pass for ``min_speech_seconds`` to hold speech."""
        floor = self._noise_floor if np.isfinite(self._noise_floor) else 0.0
        return max(AUDIBLE_POWER, self.options.speech_margin * floor)

    def _advance(self, final: bool) -> list[LiveUpdate]:
        updates: list[LiveUpdate] = []
        while True:
            buffer = self._buffer()
            hop = int(self.rate * FRAME_SECONDS)
            power = smoothed_power(buffer, self.rate) if len(buffer) >= hop else np.zeros(0)
            judged_end = len(power) if final else max(len(power) - EDGE_FRAMES, EDGE_FRAMES)  # frames judged so far
            judged = slice(EDGE_FRAMES, judged_end)
            speech = EDGE_FRAMES + np.flatnonzero(power[judged] > self._quiet_level(buffer, power, judged))
            lead_in = int(self.options.lead_in_seconds / FRAME_SECONDS) * hop  # whole frames: cuts stay on the 10 ms grid
            if len(speech) == 0:  # silence so far: keep only the lead-in before whatever comes next
                if final:
                    updates += self._close(buffer, len(buffer), None, power)
                else:
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
                    updates += self._close(buffer, cut, speech_end, power)
                    continue
            if len(buffer) > longest:  # no pause in time: cut in the longest shorter one
                cut, speech_end = self._cap_cut(buffer, speech, quiet_after)
                updates += self._close(buffer, cut, speech_end, power)
                continue
            if final:
                return updates
            update = self._next_interim(buffer)
            return updates + ([update] if update is not None else [])

    def _cap_cut(self, buffer: np.ndarray, speech: np.ndarray, quiet_after: np.ndarray) -> tuple[int, int]:
        """Where a segment that reached the longest segment without a pause is cut, and where its
        speech ends: halfway into its longest quiet run (the latest of equals) that ends within the
        cap; without one, at its quietest point, as long files are cut. A streaming model has read
        all of the buffer already, so it is cut at the quietest point, sharing no speech."""
        hop = int(self.rate * FRAME_SECONDS)
        longest_frames = int(self.max_segment_seconds / FRAME_SECONDS)
        runs = np.flatnonzero((quiet_after >= MIN_CUT_PAUSE_FRAMES) & (speech + quiet_after < longest_frames))
        if len(runs) and not self.streaming:
            best = runs[np.flatnonzero(quiet_after[runs] == quiet_after[runs].max())[-1]]
            speech_end = (speech[best] + 1) * hop
            return speech_end + quiet_after[best] // 2 * hop, speech_end
        cut = plan_windows(buffer, self.rate, self.max_segment_seconds, overlap=0.0)[0].end
        return cut, cut

    def _next_interim(self, buffer: np.ndarray) -> LiveUpdate | None:
        """The open segment's interim, when one is due."""
        if self.streaming:  # the new audio goes in now; an interim whenever the text changes
            shown = self._interim_text
            update = self._interim(buffer)
            return update if update.text != shown else None
        if self._segment_start + len(buffer) - self._decoded_end >= self.options.interim_interval_s * self.rate:
            return self._interim(buffer)
        return None

    def _drop_before(self, position: int) -> None:
        """Forget the buffer's first ``position`` samples (they hold no speech)."""
        if position <= 0:
            return
        buffer = self._buffer()[position:]
        self._stream, self._fed = None, 0  # a stream starts with the segment's first sample: start again
        self._segment_start += position
        self._segment = _Segment([buffer] if len(buffer) else [], len(buffer))

    def _close(self, buffer: np.ndarray, cut: int, speech_end: int | None, power: np.ndarray) -> list[LiveUpdate]:
        """Close the segment at buffer sample ``cut``: its final, or nothing when it holds no
        speech or no words (then an empty interim clears any interim text the page shows)."""
        hop = int(self.rate * FRAME_SECONDS)
        loud = power[: -(-cut // hop)] > self._speech_level()
        heard = int(loud.sum()) >= self.options.min_speech_seconds / FRAME_SECONDS
        update, next_start = self._final(buffer, cut, speech_end) if heard else (None, cut)
        if update is not None and update.text:
            self._number += 1
            self._start_next(buffer, next_start)
            return [update]
        start = self._segment_start / self.rate
        cleared = [LiveUpdate("interim", self._number, "", start, start + cut / self.rate)] if self._interim_text else []
        self._start_next(buffer, cut)  # nothing of it was sent: the next segment may share what was read past the cut
        return cleared

    def _start_next(self, buffer: np.ndarray, next_start: int) -> None:
        """The next segment begins at buffer sample ``next_start``."""
        rest = buffer[next_start:]
        self._segment_start += next_start
        self._decoded_end = self._segment_start  # the next segment's first interim waits for its own audio
        self._segment = _Segment([rest] if len(rest) else [], len(rest))
        self._stream, self._fed, self._interim_text = None, 0, ""

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
        self._interim_text = text  # what the page shows of the open segment now
        start = self._segment_start / self.rate
        return LiveUpdate("interim", self._number, text, start, start + len(buffer) / self.rate,
                          decode_seconds=seconds)

    def _final(self, buffer: np.ndarray, cut: int, speech_end: int | None) -> tuple[LiveUpdate, int]:
        """The open segment decoded up to buffer sample ``cut`` (> 0), and the buffer sample
        where the next segment begins: mid-pause, so that it keeps its lead-in."""
        start = self._segment_start / self.rate
        next_start = cut
        if self.streaming:
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
        else:
            result, seconds = self._decode(buffer[:cut])
        words = tuple(TimedWord(w.word, round(float(w.start) + start, 3), round(float(w.end) + start, 3), w.confidence)
                      for w in result.words)
        update = LiveUpdate("final", self._number, result.text, start, start + cut / self.rate, words,
                            None if speech_end is None else start + speech_end / self.rate, seconds)
        return update, next_start
