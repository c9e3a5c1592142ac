// AudioWorklet processor: hands the microphone's samples to the page as Float32 chunks.
//
// The audio thread calls process() with 128-sample blocks; posting each one would flood the
// main thread with messages, so blocks are gathered into chunks of about 50 ms (the page sends
// each chunk over the WebSocket in live mode, or keeps it for the recording's WAV file).
// A {type: "flush"} message from the page posts whatever is gathered, so stopping loses nothing.

const CHUNK_SECONDS = 0.05;

class PcmCollector extends AudioWorkletProcessor {
  constructor() {
    super();
    // sampleRate is a global of the AudioWorkletGlobalScope: the AudioContext's rate.
    this.chunk = new Float32Array(Math.max(128, Math.round(sampleRate * CHUNK_SECONDS)));
    this.filled = 0;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "flush") {
        this.post();
        this.port.postMessage({ type: "flushed" });
      }
    };
  }

  // Send the gathered samples (transferred, not copied) and start a new chunk.
  post() {
    if (this.filled === 0) return;
    const samples = this.chunk.slice(0, this.filled);
    this.port.postMessage({ type: "samples", samples }, [samples.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      const frames = channels[0].length;
      for (let i = 0; i < frames; i++) {
        // Mono: a stereo microphone is averaged rather than losing one side.
        let sum = 0;
        for (let c = 0; c < channels.length; c++) sum += channels[c][i];
        this.chunk[this.filled++] = sum / channels.length;
        if (this.filled === this.chunk.length) this.post();
      }
    }
    return true; // keep running until the page disconnects the node
  }
}

registerProcessor("pcm-collector", PcmCollector);
