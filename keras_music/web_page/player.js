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
