// The page of `asr serve`: upload or record audio, read the timed transcript, follow it in the
// player, download it, transcribe the microphone live over a WebSocket, and look inside the
// network. Plain ES2020, no libraries, no build step. The server's contract: asr/serving/page_api.py
// (POST /api/transcribe, /api/inspect, GET /api/info) and asr/serving/live_socket.py (/api/live);
// a server with an API key wants it as asr/serving/access.py says.
"use strict";

const $ = (selector) => document.querySelector(selector);

const state = {
  info: null, // GET /api/info
  audio: null, // {blob, name}: the file or recording last loaded (the player plays it, inspect sends it)
  audioUrl: null, // object URL of audio.blob, revoked when replaced
  words: [], // [{word, start, end, confidence, element}] of the transcript shown
  downloadUrls: [], // object URLs of the download links, revoked when replaced
  busy: false, // an upload is running
  recorder: null, // the microphone while recording: see openMicrophone()
  live: null, // the live session: see startLive()
  apiKey: undefined, // the server's API key once entered (undefined: not yet read from sessionStorage)
};

// ---------------------------------------------------------------- messages

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("#error").hidden = true;
  $("#error").textContent = "";
}

function setStatus(text) {
  $("#status").textContent = text;
}

// The server's error shape is {"error": {"message", ...}}; turn a failed response into words.
function describeHttpError(status, body, retryAfter) {
  const message = body && body.error && body.error.message ? body.error.message : "";
  if (status === 503) {
    const seconds = parseInt(retryAfter || "", 10);
    return Number.isFinite(seconds)
      ? `The server is busy; try again in ${seconds} s.`
      : "The server is busy; try again in a few seconds.";
  }
  if (status === 401) return "The server needs its API key: enter it above.";
  if (status === 413) return sentence(`Too large: ${message || "the file is over the server's upload limit"}`);
  if (status === 403 || status === 408) return sentence(message || "the server refused this request");
  if (status === 400) return sentence(message || "the server could not use this file");
  if (status === 501) return sentence(message || "the server cannot do this");
  return `The server answered ${status}${message ? ": " + message : ""}.`;
}

// A message as a sentence: a capital first letter and one full stop at the end.
function sentence(text) {
  const capital = text.charAt(0).toUpperCase() + text.slice(1);
  return /[.!?]\)?$/.test(capital) ? capital : capital + ".";
}

const NETWORK_ERROR = "Could not reach the server (network error). Is `asr serve` still running?";

// ---------------------------------------------------------------- the API key

// A server started with --api-key wants it on every request. The page asks once and keeps it
// in sessionStorage: for this tab only, gone when it closes, and only ever sent to this server.
const KEY_STORAGE = "asr-api-key";
const KEY_NEEDED = "This server needs its API key (asr serve --api-key or ASR_API_KEY).";
const KEY_REFUSED = "The server did not accept this key; enter it again.";

function apiKey() {
  if (state.apiKey === undefined) {
    try {
      state.apiKey = sessionStorage.getItem(KEY_STORAGE);
    } catch (err) {
      state.apiKey = null; // storage is off: the key lives as long as the page
    }
  }
  return state.apiKey;
}

function storeKey(key) {
  state.apiKey = key;
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch (err) {
    // storage is off: kept in this page only
  }
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The server answered 401: forget the key it refused (if any) and show the form.
function askForKey() {
  $("#key-reason").textContent = apiKey() ? KEY_REFUSED : KEY_NEEDED;
  storeKey(null);
  $("#key-card").hidden = false;
  $("#key-input").focus();
}

function wireKeyForm() {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#key-input").value.trim();
    if (!key) return;
    storeKey(key);
    $("#key-input").value = "";
    $("#key-card").hidden = true;
    clearError();
    loadInfo(); // tries the key at once: a wrong one brings the form back
  });
}

// ---------------------------------------------------------------- uploads

// POST a multipart form with the audio as field "file". XMLHttpRequest, not fetch, because
// only it reports upload progress. Resolves {status, body, retryAfter}; rejects on network failure.
function postAudio(url, blob, name, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", blob, name);
    const request = new XMLHttpRequest();
    request.open("POST", url);
    request.responseType = "json";
    Object.entries(authHeaders()).forEach(([header, value]) => request.setRequestHeader(header, value));
    if (onProgress) {
      request.upload.onprogress = (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      };
      request.upload.onload = () => onProgress(1);
    }
    request.onload = () => {
      if (request.status === 401) askForKey();
      resolve({ status: request.status, body: request.response, retryAfter: request.getResponseHeader("Retry-After") });
    };
    request.onerror = () => reject(new Error(NETWORK_ERROR));
    request.send(form);
  });
}

// A new file or recording: play it, then transcribe it.
async function loadAudio(blob, name) {
  if (state.busy) return;
  clearError();
  const limitMb = state.info ? state.info.max_upload_mb : Infinity;
  if (blob.size > limitMb * 1024 * 1024) { // no point sending what the server refuses
    showError(`Too large: ${name} is ${(blob.size / 1048576).toFixed(1)} MB; the limit is ${limitMb} MB.`);
    return;
  }
  forgetAudio(); // the page shows one audio at a time: the last one's transcript and figures go
  const answer = await transcribe(blob, name);
  if (answer) {
    state.audio = { blob, name, duration: answer.result.duration };
    state.audioUrl = URL.createObjectURL(blob);
    showResult(answer.result, name, answer.seconds);
  }
  updateInspectButton();
}

function forgetAudio() {
  state.audio = null;
  if (state.audioUrl) URL.revokeObjectURL(state.audioUrl);
  state.audioUrl = null;
  $("#player").pause();
  $("#result").hidden = true;
  $("#inspect-figures").textContent = "";
  $("#inspect-difference").textContent = "";
}

// Upload to /api/transcribe, showing progress. Resolves {result, seconds} or, after showing
// the error, null.
async function transcribe(blob, name) {
  setBusy(true);
  const progress = $("#progress");
  progress.hidden = false;
  progress.value = 0;
  setStatus(`Uploading ${name}…`);
  const began = performance.now();
  try {
    const response = await postAudio("/api/transcribe", blob, name, (fraction) => {
      progress.value = fraction;
      setStatus(fraction < 1 ? `Uploading ${name}… ${Math.round(fraction * 100)} %` : `Transcribing ${name}…`);
    });
    if (response.status !== 200 || !response.body) {
      showError(describeHttpError(response.status, response.body, response.retryAfter));
      return null;
    }
    return { result: response.body, seconds: (performance.now() - began) / 1000 };
  } catch (err) {
    showError(err.message || NETWORK_ERROR);
    return null;
  } finally {
    setStatus("");
    progress.hidden = true;
    setBusy(false);
  }
}

// While an upload runs, no second one (or recording) starts.
function setBusy(busy) {
  state.busy = busy;
  $("#file-input").disabled = busy;
  $("#file-label").classList.toggle("disabled", busy);
  $("#record-start").disabled = busy;
  updateInspectButton();
}

// ---------------------------------------------------------------- the result

function showResult(result, name, seconds) {
  $("#result").hidden = false;
  $("#result-name").textContent = `· ${name}`;
  const player = $("#player");
  player.src = state.audioUrl;
  showWords(result.words || [], result.text);
  showWarnings(result.warnings || []);
  const count = state.words.length;
  $("#result-facts").textContent =
    `${count} word${count === 1 ? "" : "s"} · ${result.duration.toFixed(2)} s of audio · ` +
    `answered in ${seconds.toFixed(2)} s`;
  showDownloads(result.downloads || {}, name);
}

function formatSeconds(seconds) {
  return seconds.toFixed(2);
}

function showWords(words, text) {
  const transcript = $("#transcript");
  transcript.textContent = "";
  const low = state.info ? state.info.low_confidence : 0.5;
  state.words = words.map((word, index) => {
    const span = document.createElement("span");
    span.className = "word";
    if (word.confidence < low) span.classList.add("doubtful");
    span.textContent = word.word;
    span.dataset.start = word.start;
    span.dataset.end = word.end;
    span.dataset.confidence = word.confidence;
    span.title = `${formatSeconds(word.start)}–${formatSeconds(word.end)} s · ` +
      `confidence ${word.confidence.toFixed(2)}`;
    // Words act as buttons (seek and play), so keyboards reach them too.
    span.tabIndex = 0;
    span.setAttribute("role", "button");
    span.addEventListener("click", () => playFrom(word.start));
    span.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        playFrom(word.start);
      }
    });
    if (index > 0) transcript.append(" ");
    transcript.append(span);
    return { ...word, element: span };
  });
  if (state.words.length === 0) {
    transcript.textContent = text ? text : "(no speech recognised)";
  }
}

function showWarnings(warnings) {
  const list = $("#warnings");
  list.textContent = "";
  for (const warning of warnings) {
    const item = document.createElement("li");
    item.textContent = warning;
    list.append(item);
  }
  list.hidden = warnings.length === 0;
}

const DOWNLOAD_TYPES = {
  txt: "text/plain",
  json: "application/json",
  srt: "application/x-subrip",
  vtt: "text/vtt",
};

// The server renders each format with the CLI's writers; the page only offers them as files.
function showDownloads(downloads, name) {
  const box = $("#downloads");
  box.querySelectorAll("a").forEach((link) => link.remove());
  state.downloadUrls.forEach((url) => URL.revokeObjectURL(url));
  state.downloadUrls = [];
  const stem = name.replace(/\.[^./\\]*$/, "") || "transcript";
  for (const format of ["txt", "json", "srt", "vtt"]) {
    if (typeof downloads[format] !== "string") continue;
    const blob = new Blob([downloads[format]], { type: `${DOWNLOAD_TYPES[format]};charset=utf-8` });
    const url = URL.createObjectURL(blob);
    state.downloadUrls.push(url);
    const link = document.createElement("a");
    link.className = "button small";
    link.href = url;
    link.download = `${stem}.${format}`;
    link.dataset.format = format;
    link.textContent = format;
    box.append(link);
  }
}

// ---------------------------------------------------------------- the player follows the words

function playFrom(seconds) {
  const player = $("#player");
  player.currentTime = seconds;
  player.play().catch(() => {}); // autoplay rules may refuse; the seek still happened
  highlight(seconds);
}

// The word being heard at `time` (the last one that started, within its end), or -1.
function wordAt(time) {
  let found = -1;
  for (let i = 0; i < state.words.length && state.words[i].start <= time; i++) {
    if (time < state.words[i].end + 0.05) found = i;
  }
  return found;
}

let highlighted = -1;
function highlight(time) {
  const index = wordAt(time);
  if (index === highlighted) return;
  if (highlighted >= 0 && state.words[highlighted]) state.words[highlighted].element.classList.remove("current");
  if (index >= 0) state.words[index].element.classList.add("current");
  highlighted = index;
}

// timeupdate fires only about 4 times a second: while playing, follow every animation frame.
function followPlayer() {
  const player = $("#player");
  const tick = () => {
    highlight(player.currentTime);
    if (!player.paused && !player.ended) requestAnimationFrame(tick);
  };
  player.addEventListener("play", () => requestAnimationFrame(tick));
  player.addEventListener("timeupdate", () => highlight(player.currentTime));
  player.addEventListener("seeked", () => highlight(player.currentTime));
}

// ---------------------------------------------------------------- the microphone

const PERMISSION_DENIED = "Microphone permission was denied. Allow the microphone for this page in the " +
  "browser's site settings, then try again.";
const MICROPHONE_ERRORS = {
  NotAllowedError: PERMISSION_DENIED,
  SecurityError: PERMISSION_DENIED,
  NotFoundError: "No microphone was found.",
  NotReadableError: "The microphone is in use by another program or could not be opened.",
};

function microphoneUnsupported() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return "This page cannot use the microphone here: browsers allow it only on https:// or on localhost.";
  }
  if (typeof AudioContext === "undefined" || typeof AudioWorkletNode === "undefined"
      || !("audioWorklet" in AudioContext.prototype)) {
    return "This browser has no AudioWorklet, which recording needs; use a current Chrome, Edge, Firefox or Safari.";
  }
  return null;
}

// Open the microphone and run its samples through pcm-worklet.js; `onSamples` gets each
// Float32Array chunk (about 50 ms). Returns {context, rate, close()}; throws a readable Error.
async function openMicrophone(onSamples) {
  const unsupported = microphoneUnsupported();
  if (unsupported) throw new Error(unsupported);
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  } catch (err) {
    throw new Error(MICROPHONE_ERRORS[err.name] || `The microphone could not be opened: ${err.message || err.name}.`);
  }
  let context;
  try {
    context = await connectWorklet(stream, onSamples, { sampleRate: state.info ? state.info.sample_rate : 16000 });
  } catch (err) {
    // Some browsers cannot connect a microphone to a context of another rate: use the device's.
    context = await connectWorklet(stream, onSamples, {}).catch((second) => {
      stream.getTracks().forEach((track) => track.stop());
      throw new Error(`The audio processing could not start: ${second.message || second}.`);
    });
  }
  return {
    context: context.audio,
    rate: context.audio.sampleRate,
    // Post what the worklet still holds, then release the microphone (its indicator goes off).
    async close() {
      await context.flush();
      stream.getTracks().forEach((track) => track.stop());
      await context.audio.close().catch(() => {});
    },
  };
}

async function connectWorklet(stream, onSamples, options) {
  const audio = new AudioContext(options);
  try {
    await audio.audioWorklet.addModule("/static/pcm-worklet.js");
    const source = audio.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(audio, "pcm-collector", { numberOfInputs: 1, numberOfOutputs: 1 });
    let flushed = null;
    node.port.onmessage = (event) => {
      if (event.data.type === "samples") onSamples(event.data.samples);
      else if (event.data.type === "flushed" && flushed) flushed();
    };
    // A node must reach the destination to be pulled in every browser; silent, so no echo.
    const mute = audio.createGain();
    mute.gain.value = 0;
    source.connect(node).connect(mute).connect(audio.destination);
    if (audio.state === "suspended") await audio.resume();
    return {
      audio,
      flush: () => new Promise((resolve) => {
        flushed = resolve;
        node.port.postMessage({ type: "flush" });
        setTimeout(resolve, 500); // a closed context never answers
      }),
    };
  } catch (err) {
    await audio.close().catch(() => {});
    throw err;
  }
}

// ---------------------------------------------------------------- recording to a WAV file

async function startRecording() {
  clearError();
  const chunks = [];
  try {
    state.recorder = await openMicrophone((samples) => chunks.push(samples));
  } catch (err) {
    showError(err.message);
    return;
  }
  state.recorder.chunks = chunks;
  state.recorder.began = performance.now();
  $("#record-start").hidden = true;
  $("#record-stop").hidden = false;
  $("#record-stop").focus();
  $("#live-start").disabled = true; // one user of the microphone at a time
  state.recorder.timer = setInterval(() => {
    const seconds = (performance.now() - state.recorder.began) / 1000;
    $("#record-time").textContent = `recording ${seconds.toFixed(1)} s`;
  }, 100);
}

async function stopRecording() {
  const recorder = state.recorder;
  if (!recorder) return;
  state.recorder = null;
  clearInterval(recorder.timer);
  await recorder.close();
  $("#record-stop").hidden = true;
  $("#record-start").hidden = false;
  $("#record-time").textContent = "";
  $("#live-start").disabled = false;
  const wav = encodeWav(recorder.chunks, recorder.rate);
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  await loadAudio(wav, `recording-${stamp}.wav`);
}

// 16-bit mono PCM WAV: a 44-byte RIFF header, then the samples, little-endian.
function encodeWav(chunks, rate) {
  const count = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  const view = new DataView(new ArrayBuffer(44 + count * 2));
  const text = (offset, string) => [...string].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + count * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true); // size of the fmt chunk
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  view.setUint32(40, count * 2, true);
  let offset = 44;
  for (const chunk of chunks) {
    const pcm = toInt16(chunk);
    for (let i = 0; i < pcm.length; i++, offset += 2) view.setInt16(offset, pcm[i], true);
  }
  return new Blob([view], { type: "audio/wav" });
}

function toInt16(samples) {
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    pcm[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
  }
  return pcm;
}

// ---------------------------------------------------------------- live mode

const LIVE_STOP_TIMEOUT_MS = 30000; // the last final may need a decode; then give up waiting
const LIVE_CLOCK_SECONDS = 300; // how far back the audio-time -> wall-time record reaches

function liveSocketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/api/live`;
}

function setLiveStatus(text) {
  $("#live-status").textContent = text;
}

async function startLive() {
  clearError();
  const live = {
    socket: null,
    microphone: null,
    sentSamples: 0, // samples sent since "start": the server's audio clock
    clock: [], // [audio seconds at a chunk's end, performance.now() when it was captured]
    pending: [], // [chunk, capture time] captured before the socket opened
    stopping: false, // the user pressed Stop
    failed: false, // an error was shown: the close that follows needs no second message
    done: null, // resolves when the server says "done" or the socket closes
  };
  state.live = live;
  $("#live-start").disabled = true;
  $("#record-start").disabled = true;
  $("#live-finals").textContent = "";
  $("#live-interim").textContent = "";
  setLiveStatus("Opening the microphone…");
  try {
    live.microphone = await openMicrophone((samples) => sendLiveSamples(live, samples, performance.now()));
  } catch (err) {
    showError(err.message);
    endLive(live, "");
    return;
  }
  setLiveStatus("Connecting…");
  openLiveSocket(live);
}

function openLiveSocket(live) {
  const socket = new WebSocket(liveSocketUrl());
  socket.binaryType = "arraybuffer";
  live.socket = socket;
  let finished;
  live.done = new Promise((resolve) => { finished = resolve; });
  socket.onopen = () => {
    // The rate the AudioContext really runs at (a browser may not honour 16 kHz): the server resamples.
    const start = { type: "start", sample_rate: live.microphone.rate };
    if (apiKey()) start.api_key = apiKey(); // browsers cannot put it in a header on a WebSocket
    socket.send(JSON.stringify(start));
    live.pending.splice(0).forEach(([chunk, capturedAt]) => sendLiveSamples(live, chunk, capturedAt));
    $("#live-stop").disabled = false;
  };
  socket.onmessage = (event) => onLiveMessage(live, JSON.parse(event.data));
  socket.onerror = () => {
    if (live.stopping || live.failed) return;
    live.failed = true;
    showError("The live connection failed (network error). Is `asr serve` still running?");
  };
  socket.onclose = (event) => {
    if (!live.stopping && !live.failed && event.code !== 1000) {
      const reason = event.reason ? `: ${event.reason}` : "";
      showError(`The live connection closed unexpectedly (code ${event.code}${reason}).`);
    }
    finished();
    endLive(live, live.failed ? "" : "Stopped.");
  };
}

function sendLiveSamples(live, samples, capturedAt) {
  const socket = live.socket;
  if (!socket || socket.readyState === WebSocket.CONNECTING) {
    live.pending.push([samples, capturedAt]);
    return;
  }
  if (socket.readyState !== WebSocket.OPEN || live.stopping) return;
  socket.send(toInt16(samples).buffer); // Int16Array is little-endian on every browser's platform
  live.sentSamples += samples.length;
  // Remember when this audio was heard, to tell how long after speech each final came.
  live.clock.push([live.sentSamples / live.microphone.rate, capturedAt]);
  while (live.clock.length && live.clock[0][0] < live.sentSamples / live.microphone.rate - LIVE_CLOCK_SECONDS) {
    live.clock.shift();
  }
}

// Wall time (performance.now()) at which audio time `seconds` had been captured, or null.
function wallTimeOf(live, seconds) {
  for (const [audioEnd, wall] of live.clock) {
    if (audioEnd >= seconds) return wall;
  }
  return null;
}

function onLiveMessage(live, message) {
  switch (message.type) {
    case "ready":
      // A streaming model's text follows the voice within its look-ahead; a bidirectional one
      // re-reads the sentence every interim_interval_s.
      setLiveStatus(message.streaming
        ? "Listening… speak now (streaming model: text follows as you speak)."
        : `Listening… speak now (text updates every ${message.interim_interval_s} s).`);
      break;
    case "interim":
      $("#live-interim").textContent = message.text;
      $("#live-interim").dataset.segment = message.segment;
      break;
    case "final":
      addFinal(live, message);
      break;
    case "error":
      live.failed = true;
      if (message.code === "invalid_api_key") askForKey();
      showError(`Live transcription stopped: ${message.message}`);
      break;
    case "done":
      live.socket.close(1000);
      break;
  }
}

function addFinal(live, message) {
  const interim = $("#live-interim");
  if (Number(interim.dataset.segment) <= message.segment) interim.textContent = "";
  if (!message.text) return; // a segment with no words: nothing to show
  const line = document.createElement("div");
  line.className = "final";
  line.dataset.segment = message.segment;
  const text = document.createElement("span");
  text.className = "final-text";
  text.textContent = message.text;
  line.append(text);
  const spoken = message.speech_end == null ? null : wallTimeOf(live, message.speech_end);
  if (spoken !== null) {
    const delay = (performance.now() - spoken) / 1000;
    const note = document.createElement("span");
    note.className = "final-delay";
    note.dataset.delay = delay.toFixed(3);
    note.textContent = `final ${delay.toFixed(2)} s after speech ended`;
    note.title = `decoding took ${message.decode_seconds.toFixed(2)} s of it; ` +
      `audio ${message.start.toFixed(2)}–${message.end.toFixed(2)} s`;
    line.append(note);
  }
  $("#live-finals").append(line);
}

async function stopLive() {
  const live = state.live;
  if (!live || live.stopping) return;
  $("#live-stop").disabled = true;
  setLiveStatus("Finishing the last sentence…");
  await live.microphone.close(); // its last samples are sent before the stop
  live.stopping = true;
  if (live.socket && live.socket.readyState === WebSocket.OPEN) {
    live.socket.send(JSON.stringify({ type: "stop" }));
    const timeout = new Promise((resolve) => setTimeout(resolve, LIVE_STOP_TIMEOUT_MS));
    await Promise.race([live.done, timeout]);
    if (live.socket.readyState !== WebSocket.CLOSED) live.socket.close();
  }
  endLive(live, "Stopped.");
}

function endLive(live, status) {
  if (state.live !== live) return;
  state.live = null;
  if (live.microphone) live.microphone.close().catch(() => {});
  if (live.socket && live.socket.readyState === WebSocket.OPEN) live.socket.close();
  $("#live-start").disabled = false;
  $("#live-stop").disabled = true;
  $("#record-start").disabled = state.busy;
  setLiveStatus(status);
}

// ---------------------------------------------------------------- inspect

function updateInspectButton() {
  const button = $("#inspect-button");
  const inspect = state.info && state.info.inspect;
  const reason = $("#inspect-reason");
  if (inspect && !inspect.available) {
    button.disabled = true;
    reason.textContent = `Not available: ${inspect.reason}`;
  } else if (!state.audio) {
    button.disabled = true;
    reason.textContent = `Load a file or record first (at most ${inspect ? inspect.max_seconds : 30} s).`;
  } else if (inspect && state.audio.duration > inspect.max_seconds) {
    button.disabled = true; // the server would refuse it: the figures of a long file are unreadable anyway
    reason.textContent = `${state.audio.name} is ${state.audio.duration.toFixed(1)} s long; ` +
      `the figures are drawn for at most ${inspect.max_seconds} s.`;
  } else {
    button.disabled = state.busy;
    reason.textContent = state.audio.name;
  }
}

async function inspectAudio() {
  const audio = state.audio;
  if (!audio) return;
  clearError();
  $("#inspect-button").disabled = true;
  $("#inspect-figures").textContent = "";
  $("#inspect-difference").textContent = "";
  $("#inspect-status").textContent = "Running the LSTM step by step and drawing the figures…";
  try {
    const response = await postAudio("/api/inspect", audio.blob, audio.name);
    if (state.audio !== audio) return; // another file was loaded meanwhile: these figures are not its
    if (response.status === 200 && response.body) showFigures(response.body);
    else showError(describeHttpError(response.status, response.body, response.retryAfter));
  } catch (err) {
    showError(err.message || NETWORK_ERROR);
  } finally {
    $("#inspect-status").textContent = "";
    updateInspectButton();
  }
}

function showFigures(result) {
  const difference = result.max_difference_from_model;
  $("#inspect-difference").textContent =
    `Step-by-step LSTM equations reproduce the model to ${difference.toExponential(1)} ` +
    `(largest difference from the model's own output). Greedy transcript: “${result.text}”.`;
  const box = $("#inspect-figures");
  for (const figure of result.figures) {
    const element = document.createElement("figure");
    const caption = document.createElement("figcaption");
    caption.textContent = figure.title;
    const image = document.createElement("img");
    image.src = figure.png; // a data: URL
    image.alt = figure.title;
    image.loading = "lazy";
    element.append(caption, image);
    box.append(element);
  }
}

// ---------------------------------------------------------------- wiring

function wireDropZone() {
  const zone = $("#drop-zone");
  const over = (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  };
  zone.addEventListener("dragenter", over);
  zone.addEventListener("dragover", over);
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) loadAudio(file, file.name);
  });
  // A file dropped outside the zone would make the browser leave the page for it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

async function loadInfo() {
  try {
    const response = await fetch("/api/info", { headers: authHeaders() });
    if (response.status === 401) {
      askForKey();
      return;
    }
    if (!response.ok) throw new Error(`status ${response.status}`);
    state.info = await response.json();
  } catch (err) {
    showError(`Could not read the server's settings (/api/info: ${err.message}).`);
    return;
  }
  const info = state.info;
  $("#model-name").textContent = info.model;
  document.title = `asr · ${info.model}`;
  $("#limits").textContent = `Up to ${info.max_upload_mb} MB and ${formatDuration(info.max_audio_seconds)} ` +
    `per file. The audio is resampled to ${info.sample_rate / 1000} kHz.`;
  $("#low-confidence").textContent = info.low_confidence;
  if (info.live && !info.live.available) {
    $("#live-start").disabled = true;
    setLiveStatus("Live mode is off on this server.");
  }
  updateInspectButton();
}

// 7200 -> "2 h", 90 -> "1.5 min": the server's limits as a person reads them.
function formatDuration(seconds) {
  if (seconds >= 3600) return `${Number((seconds / 3600).toFixed(1))} h`;
  if (seconds >= 60) return `${Number((seconds / 60).toFixed(1))} min`;
  return `${seconds} s`;
}

function main() {
  $("#file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = ""; // choosing the same file again still fires "change"
    if (file) loadAudio(file, file.name);
  });
  wireDropZone();
  wireKeyForm();
  followPlayer();
  $("#record-start").addEventListener("click", startRecording);
  $("#record-stop").addEventListener("click", stopRecording);
  $("#live-start").addEventListener("click", startLive);
  $("#live-stop").addEventListener("click", stopLive);
  $("#inspect-button").addEventListener("click", inspectAudio);
  updateInspectButton();
  loadInfo();
}

main();
