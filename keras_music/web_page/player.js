// Sound and picture of a piece: a small Web Audio synth and a piano roll on a canvas.

const LEAD_SECONDS = 0.08;  // scheduling slack before the first note
const RELEASE_SECONDS = 0.12;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function frequency(pitch) {
  return 440 * 2 ** ((pitch - 69) / 12);
}

/** A small polyphonic synth: two oscillators per note under one envelope, all notes scheduled at once. */
export class Synth {
  constructor() {
    this.context = null;
    this.voices = [];
    this.output = null;
    this.startedAt = null;  // AudioContext time of quarter note 0
    this.secondsPerQuarter = 0.5;
  }

  ensureContext() {
    if (!this.context) {
      this.context = new AudioContext();
    }
    return this.context;
  }

  /**
   * Plays notes ({onset, duration, pitch} in quarter notes, numbers or Fractions) at `tempo` bpm.
   * Returns {firstNoteAt: performance.now() time the first note sounds, seconds: length}.
   */
  async play(notes, tempo) {
    this.stop();
    const context = this.ensureContext();
    // Without a user gesture a browser may keep the context suspended; the notes then wait for it.
    if (context.state === 'suspended') await Promise.race([context.resume(), sleep(300)]);
    const secondsPerQuarter = 60 / tempo;
    const output = context.createGain();
    output.gain.value = 0.8 / Math.max(1, Math.sqrt(maxPolyphony(notes)));
    const compressor = context.createDynamicsCompressor();
    output.connect(compressor).connect(context.destination);
    this.output = output;
    const start = context.currentTime + LEAD_SECONDS;
    this.startedAt = start;
    this.secondsPerQuarter = secondsPerQuarter;
    let end = start;
    for (const note of notes) {
      const at = start + Number(note.onset) * secondsPerQuarter;
      const length = Math.max(0.03, Number(note.duration) * secondsPerQuarter);
      end = Math.max(end, at + length + RELEASE_SECONDS);
      this.voices.push(...this.voice(context, output, note.pitch, at, length));
    }
    const first = notes.length ? Math.min(...notes.map((note) => Number(note.onset))) : 0;
    const firstNoteAt = performance.now() + (start - context.currentTime + first * secondsPerQuarter) * 1000;
    return {firstNoteAt, seconds: end - start, voices: this.voices.length};
  }

  voice(context, output, pitch, at, length) {
    const envelope = context.createGain();
    envelope.gain.setValueAtTime(0, at);
    envelope.gain.linearRampToValueAtTime(0.5, at + 0.008);
    envelope.gain.exponentialRampToValueAtTime(0.25, at + Math.min(length, 0.3) + 0.01);
    envelope.gain.setValueAtTime(0.25, at + length);
    envelope.gain.linearRampToValueAtTime(0, at + length + RELEASE_SECONDS);
    envelope.connect(output);
    const oscillators = [['triangle', 1, 1], ['sine', 2, 0.25]].map(([type, multiple, level]) => {
      const oscillator = context.createOscillator();
      oscillator.type = type;
      oscillator.frequency.value = frequency(pitch) * multiple;
      const gain = context.createGain();
      gain.gain.value = level;
      oscillator.connect(gain).connect(envelope);
      oscillator.start(at);
      oscillator.stop(at + length + RELEASE_SECONDS + 0.02);
      return oscillator;
    });
    return oscillators;
  }

  /** Quarter notes played so far (null when nothing plays). */
  position() {
    if (!this.context || this.startedAt === null) return null;
    return (this.context.currentTime - this.startedAt) / this.secondsPerQuarter;
  }

  stop() {
    for (const oscillator of this.voices) {
      try {
        oscillator.stop();
      } catch (error) {
        // already stopped
      }
    }
    this.voices = [];
    if (this.output) this.output.disconnect();
    this.output = null;
    this.startedAt = null;
  }
}

function maxPolyphony(notes) {
  const changes = [];
  for (const note of notes) {
    changes.push([Number(note.onset), 1], [Number(note.onset) + Number(note.duration), -1]);
  }
  changes.sort((a, b) => (a[0] - b[0]) || (a[1] - b[1]));
  let now = 0;
  let most = 0;
  for (const [, change] of changes) {
    now += change;
    most = Math.max(most, now);
  }
  return most;
}

/** Draws notes as a piano roll: time across (bar lines every `beatsPerBar` quarters), pitch up. */
export function drawPianoRoll(canvas, notes, beatsPerBar = 4, position = null) {
  const context = canvas.getContext('2d');
  const width = canvas.width;
  const height = canvas.height;
  context.fillStyle = '#fbfaf7';
  context.fillRect(0, 0, width, height);
  if (!notes.length) return {drawn: 0};
  const pitches = notes.map((note) => note.pitch);
  const low = Math.min(...pitches) - 2;
  const high = Math.max(...pitches) + 2;
  const end = Math.max(...notes.map((note) => Number(note.onset) + Number(note.duration)));
  const x = (quarters) => (quarters / end) * (width - 2) + 1;
  const row = height / (high - low + 1);
  const y = (pitch) => (high - pitch) * row;
  for (let pitch = low; pitch <= high; pitch++) {
    if ([1, 3, 6, 8, 10].includes(((pitch % 12) + 12) % 12)) {
      context.fillStyle = '#f0ede6';
      context.fillRect(0, y(pitch), width, row);
    }
  }
  context.strokeStyle = '#d8d2c4';
  for (let bar = 0; bar <= end; bar += beatsPerBar) {
    context.beginPath();
    context.moveTo(x(bar) + 0.5, 0);
    context.lineTo(x(bar) + 0.5, height);
    context.stroke();
  }
  context.fillStyle = '#3d6b8e';
  for (const note of notes) {
    const left = x(Number(note.onset));
    const right = x(Number(note.onset) + Number(note.duration));
    context.fillRect(left, y(note.pitch) + 1, Math.max(1, right - left - 1), Math.max(1, row - 2));
  }
  if (position !== null && position >= 0 && position <= end) {
    context.strokeStyle = '#c0392b';
    context.beginPath();
    context.moveTo(x(position) + 0.5, 0);
    context.lineTo(x(position) + 0.5, height);
    context.stroke();
  }
  return {drawn: notes.length, low, high, quarters: end};
}

/**
 * Live sound on the Web Audio clock: notes scheduled at context times (answers), notes held until released
 * (what the player plays), metronome clicks. Shares the Synth's AudioContext. Every scheduled note is logged
 * ({pitch, at, end, source}) so a test can compare it with what went out over MIDI.
 */
export class LiveSound {
  constructor(synth) {
    this.synth = synth;
    this.output = null;
    this.log = [];
    this.held = new Map();
    this.enabled = true;
  }

  get context() {
    return this.synth.ensureContext();
  }

  ensureOutput() {
    const context = this.context;
    if (!this.output) {
      this.output = context.createGain();
      this.output.gain.value = 0.35;
      this.output.connect(context.createDynamicsCompressor()).connect(context.destination);
    }
    return this.output;
  }

  async resume() {
    if (this.context.state === 'suspended') await Promise.race([this.context.resume(), sleep(300)]);
  }

  now() {
    return this.context.currentTime;
  }

  /** {contextTime, performanceTime} of one instant: the clock pair MIDI timestamps are converted with. */
  clockPair() {
    const context = this.context;
    const stamp = context.getOutputTimestamp ? context.getOutputTimestamp() : null;
    if (stamp && stamp.performanceTime > 0 && stamp.contextTime > 0) return stamp;
    return {contextTime: context.currentTime, performanceTime: performance.now()};
  }

  /** performance.now() time (ms) of a context time (s) (with `pair`, a clockPair() taken earlier), and back. */
  toPerformance(at, pair = null) {
    const {contextTime, performanceTime} = pair || this.clockPair();
    return performanceTime + (at - contextTime) * 1000;
  }

  fromPerformance(ms) {
    const {contextTime, performanceTime} = this.clockPair();
    return contextTime + (ms - performanceTime) / 1000;
  }

  /** A note of `length` seconds at context time `at`. */
  schedule(pitch, at, length, source = 'answer') {
    this.log.push({pitch, at, end: at + length, source});
    if (!this.enabled) return;
    const context = this.context;
    const envelope = context.createGain();
    envelope.gain.setValueAtTime(0, at);
    envelope.gain.linearRampToValueAtTime(0.5, at + 0.008);
    envelope.gain.exponentialRampToValueAtTime(0.25, at + Math.min(length, 0.3) + 0.01);
    envelope.gain.setValueAtTime(0.25, at + length);
    envelope.gain.linearRampToValueAtTime(0, at + length + RELEASE_SECONDS);
    envelope.connect(this.ensureOutput());
    const oscillator = context.createOscillator();
    oscillator.type = 'triangle';
    oscillator.frequency.value = frequency(pitch);
    oscillator.connect(envelope);
    oscillator.start(at);
    oscillator.stop(at + length + RELEASE_SECONDS + 0.02);
  }

  /** The player's note: sounds from now until noteOff. */
  noteOn(pitch) {
    if (!this.enabled) return;
    this.noteOff(pitch);
    const context = this.context;
    const at = context.currentTime;
    const envelope = context.createGain();
    envelope.gain.setValueAtTime(0, at);
    envelope.gain.linearRampToValueAtTime(0.45, at + 0.008);
    envelope.gain.exponentialRampToValueAtTime(0.25, at + 0.3);
    envelope.connect(this.ensureOutput());
    const oscillator = context.createOscillator();
    oscillator.type = 'sawtooth';
    oscillator.frequency.value = frequency(pitch);
    const filter = context.createBiquadFilter();
    filter.frequency.value = 1800;
    oscillator.connect(filter).connect(envelope);
    oscillator.start(at);
    this.held.set(pitch, {oscillator, envelope});
  }

  noteOff(pitch) {
    const voice = this.held.get(pitch);
    if (!voice) return;
    this.held.delete(pitch);
    const at = this.context.currentTime;
    voice.envelope.gain.cancelScheduledValues(at);
    voice.envelope.gain.setValueAtTime(voice.envelope.gain.value, at);
    voice.envelope.gain.linearRampToValueAtTime(0, at + RELEASE_SECONDS);
    voice.oscillator.stop(at + RELEASE_SECONDS + 0.02);
  }

  /** A metronome click at context time `at` (`accent` on the bar's first beat). */
  click(at, accent, volume = 1) {
    if (volume <= 0) return;
    const context = this.context;
    const envelope = context.createGain();
    envelope.gain.setValueAtTime(0, at);
    envelope.gain.linearRampToValueAtTime(0.4 * volume, at + 0.002);
    envelope.gain.exponentialRampToValueAtTime(0.001, at + 0.05);
    envelope.connect(this.ensureOutput());
    const oscillator = context.createOscillator();
    oscillator.frequency.value = accent ? 1760 : 1320;
    oscillator.connect(envelope);
    oscillator.start(at);
    oscillator.stop(at + 0.06);
  }
}
