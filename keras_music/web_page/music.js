// Tokens -> notes and notes -> a standard MIDI file, as export/reference_generator.py does it.
// Times are exact fractions of a quarter note; no browser APIs here, so Node runs it too.

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return Math.abs(a);
}

/** An exact rational number n/d (d > 0), small enough for float64 integers. */
export class Fraction {
  constructor(n, d = 1) {
    if (d === 0) throw new Error('zero denominator');
    if (d < 0) [n, d] = [-n, -d];
    const g = gcd(n, d) || 1;
    this.n = n / g;
    this.d = d / g;
  }

  /** "3", "-1/2" or "0.25" as a Fraction; null for anything else. */
  static parse(text) {
    const decimal = /^\s*(-?)(\d*)\.(\d+)\s*$/.exec(text);
    if (decimal) {
      const scale = 10 ** decimal[3].length;
      const n = Number(decimal[2] || '0') * scale + Number(decimal[3]);
      return new Fraction(decimal[1] ? -n : n, scale);
    }
    const match = /^\s*(-?\d+)(?:\/(\d+))?\s*$/.exec(text);
    if (!match) return null;
    const d = match[2] === undefined ? 1 : Number(match[2]);
    return d === 0 ? null : new Fraction(Number(match[1]), d);
  }

  add(other) {
    return new Fraction(this.n * other.d + other.n * this.d, this.d * other.d);
  }

  /** Round-half-to-even of this * factor, like Python's round() on a Fraction. */
  roundTimes(factor) {
    const n = this.n * factor;
    const q = Math.floor(n / this.d);
    const twice = 2 * (n - q * this.d);
    if (twice > this.d || (twice === this.d && q % 2 !== 0)) return q + 1;
    return q;
  }

  valueOf() {
    return this.n / this.d;
  }
}

const SPECIALS = new Set(['<pad>', '<unk>', '<piece>']);
const NOTE_NAMES = {C: 0, 'C#': 1, 'D-': 1, D: 2, 'D#': 3, 'E-': 3, E: 4, F: 5, 'F#': 6, 'G-': 6, G: 7,
                    'G#': 8, 'A-': 8, A: 9, 'A#': 10, 'B-': 10, B: 11};

function pitchFromName(name) {
  const prefixes = Object.keys(NOTE_NAMES).sort((a, b) => b.length - a.length);
  for (const prefix of prefixes) {
    const octave = name.slice(prefix.length);
    if (name.startsWith(prefix) && /^-?\d+$/.test(octave)) return NOTE_NAMES[prefix] + 12 * (Number(octave) + 1);
  }
  return null;
}

/** Tokens -> [{pitches (ascending), held (flags), duration (Fraction)}], tolerant of bad sequences. */
export function tokensToSonorities(tokens, representation = 'note', classicStep = new Fraction(1, 2)) {
  const sonorities = [];
  if (representation === 'classic') {
    for (const token of tokens) {
      if (SPECIALS.has(token)) continue;
      let pitches;
      if (token.includes('.') || /^\d+$/.test(token)) {
        const parts = token.split('.');
        if (!parts.every((part) => /^\d+$/.test(part))) continue;
        pitches = [...new Set(parts.map((part) => 60 + Number(part)))].sort((a, b) => a - b);
      } else {
        const pitch = pitchFromName(token);
        if (pitch === null) continue;
        pitches = [pitch];
      }
      sonorities.push({pitches, held: pitches.map(() => false), duration: classicStep});
    }
    return sonorities;
  }
  let pending = new Map();  // pitch -> held?
  let previous = new Set();
  for (const token of tokens) {
    if (SPECIALS.has(token) || token === 'rest') continue;
    const colon = token.indexOf(':');
    const kind = colon < 0 ? token : token.slice(0, colon);
    const value = colon < 0 ? '' : token.slice(colon + 1);
    if ((kind === 'pitch' || kind === 'hold') && /^-?\d+$/.test(value)) {
      const pitch = Number(value);
      const held = kind === 'hold' && previous.has(pitch);
      pending.set(pitch, (pending.has(pitch) ? pending.get(pitch) : true) && held);
    } else if (kind === 'dur') {
      const duration = Fraction.parse(value);
      if (duration === null || duration.n <= 0) continue;
      const pitches = [...pending.keys()].sort((a, b) => a - b);
      sonorities.push({pitches, held: pitches.map((pitch) => pending.get(pitch)), duration});
      previous = new Set(pitches);
      pending = new Map();
    }
  }
  return sonorities;
}

/** Sonorities -> notes {onset, duration (Fractions, quarter notes), pitch}; a held pitch lengthens its note. */
export function sonoritiesToNotes(sonorities) {
  const notes = [];
  let sounding = new Map();
  let time = new Fraction(0);
  for (const {pitches, held, duration} of sonorities) {
    const still = new Map();
    pitches.forEach((pitch, i) => {
      let note;
      if (held[i] && sounding.has(pitch)) {
        note = sounding.get(pitch);
        note.duration = note.duration.add(duration);
      } else {
        note = {onset: time, duration, pitch};
        notes.push(note);
      }
      still.set(pitch, note);
    });
    sounding = still;
    time = time.add(duration);
  }
  return notes.sort((a, b) => (a.onset - b.onset) || (a.pitch - b.pitch));
}

/** Token strings -> notes as plain [onset, duration, pitch] numbers (quarter notes). */
export function decode(tokens, vocabulary) {
  const step = Fraction.parse(String(vocabulary.classic_step ?? 0.5)) || new Fraction(1, 2);
  const notes = sonoritiesToNotes(tokensToSonorities(tokens, vocabulary.representation, step));
  return notes.map((note) => ({onset: note.onset, duration: note.duration, pitch: note.pitch}));
}

// ----------------------------------------------------------------------------- MIDI

export const TICKS_PER_QUARTER = 480;
const VELOCITY = 80;

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(x) {
  const floor = Math.floor(x);
  const rest = x - floor;
  if (rest > 0.5 || (rest === 0.5 && floor % 2 !== 0)) return floor + 1;
  return floor;
}

function variableLength(value) {
  const out = [value & 0x7f];
  value = Math.floor(value / 128);
  while (value) {
    out.push(0x80 | (value & 0x7f));
    value = Math.floor(value / 128);
  }
  return out.reverse();
}

function u32(value) {
  return [(value >>> 24) & 0xff, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff];
}

/**
 * A format-0 standard MIDI file (Uint8Array): tempo, time signature, program, then note on/off
 * on channel 0, 480 ticks per quarter; byte for byte what reference_generator.midi_bytes writes.
 */
export function midiBytes(notes, tempoBpm = 90, program = 0, timeSignature = [4, 4]) {
  const tempo = roundHalfEven(60000000 / tempoBpm);
  if (!(tempo > 0 && tempo < 1 << 24)) throw new Error(`tempo ${tempoBpm} BPM is outside what MIDI can store`);
  const events = [];
  for (const {onset, duration, pitch} of notes) {
    const start = onset.roundTimes(TICKS_PER_QUARTER);
    const end = onset.add(duration).roundTimes(TICKS_PER_QUARTER);
    if (end <= start || pitch < 0 || pitch > 127) continue;
    // Offs sort before ons at the same tick so a re-attacked pitch is not cut short.
    events.push([start, 1, pitch, [0x90, pitch, VELOCITY]]);
    events.push([end, 0, pitch, [0x80, pitch, 0]]);
  }
  events.sort((a, b) => (a[0] - b[0]) || (a[1] - b[1]) || (a[2] - b[2]));
  const [numerator, denominator] = timeSignature;
  const track = [
    0, 0xff, 0x51, 0x03, (tempo >> 16) & 0xff, (tempo >> 8) & 0xff, tempo & 0xff,
    0, 0xff, 0x58, 0x04, numerator, Math.trunc(Math.log2(denominator)), 24, 8,
    0, 0xc0, program & 0x7f,
  ];
  let now = 0;
  for (const [tick, , , data] of events) {
    track.push(...variableLength(tick - now), ...data);
    now = tick;
  }
  track.push(0, 0xff, 0x2f, 0x00);
  const header = [0x4d, 0x54, 0x68, 0x64, ...u32(6), 0, 0, 0, 1, (TICKS_PER_QUARTER >> 8) & 0xff,
                  TICKS_PER_QUARTER & 0xff];
  return new Uint8Array([...header, 0x4d, 0x54, 0x72, 0x6b, ...u32(track.length), ...track]);
}

/**
 * A live session as a format-1 MIDI file: a conductor track (tempo, time signature, a marker at each phrase
 * and answer: "phrase 3", "answer 3"), then one track per part ({name, channel, program, notes:
 * [[onset, duration] in quarter notes, pitch, velocity]}), 480 ticks per quarter.
 */
export function sessionMidiBytes({tempo = 120, timeSignature = [4, 4], markers = [], tracks = []}) {
  const micro = roundHalfEven(60000000 / tempo);
  const tick = (quarters) => Math.max(0, roundHalfEven(quarters * TICKS_PER_QUARTER));
  const text = (value) => Array.from(new TextEncoder().encode(value));
  const chunk = (events) => {
    events.sort((a, b) => (a[0] - b[0]) || (a[1] - b[1]));
    const bytes = [];
    let now = 0;
    for (const [at, , data] of events) {
      bytes.push(...variableLength(at - now), ...data);
      now = at;
    }
    bytes.push(0, 0xff, 0x2f, 0x00);
    return [0x4d, 0x54, 0x72, 0x6b, ...u32(bytes.length), ...bytes];
  };
  const [numerator, denominator] = timeSignature;
  const conductor = [[0, 0, [0xff, 0x51, 0x03, (micro >> 16) & 0xff, (micro >> 8) & 0xff, micro & 0xff]],
                     [0, 0, [0xff, 0x58, 0x04, numerator, Math.trunc(Math.log2(denominator)), 24, 8]]];
  for (const [quarters, label] of markers) {
    const bytes = text(label);
    conductor.push([tick(quarters), 1, [0xff, 0x06, ...variableLength(bytes.length), ...bytes]]);
  }
  const chunks = [chunk(conductor)];
  for (const {name, channel = 0, program = 0, notes} of tracks) {
    const name_ = text(name);
    const events = [[0, 0, [0xff, 0x03, ...variableLength(name_.length), ...name_]],
                    [0, 1, [0xc0 | channel, program & 0x7f]]];
    for (const [onset, duration, pitch, velocity = VELOCITY] of notes) {
      const start = tick(onset);
      const end = tick(onset + duration);
      if (end <= start || pitch < 0 || pitch > 127) continue;
      events.push([start, 3, [0x90 | channel, pitch, Math.max(1, Math.min(127, velocity))]]);
      events.push([end, 2, [0x80 | channel, pitch, 0]]);
    }
    chunks.push(chunk(events));
  }
  const header = [0x4d, 0x54, 0x68, 0x64, ...u32(6), 0, 1, 0, chunks.length, (TICKS_PER_QUARTER >> 8) & 0xff,
                  TICKS_PER_QUARTER & 0xff];
  return new Uint8Array([...header, ...chunks.flat()]);
}

/**
 * The notes of a standard MIDI file (format 0 or 1): [[onset, end, pitch]] in quarter notes (the file's own
 * ticks per quarter; its tempo does not matter, the page plays at its own), sorted; drums (channel 10) left out.
 */
export function readMidi(bytes) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let position = 0;
  const word = (n) => {
    let value = 0;
    for (let i = 0; i < n; i++) value = value * 256 + data[position++];
    return value;
  };
  const text = (n) => String.fromCharCode(...data.subarray(position, position + n));
  if (text(4) !== 'MThd') throw new Error('not a MIDI file (no MThd header)');
  position += 4;
  const headerLength = word(4);
  const start = position;
  word(2);
  const trackCount = word(2);
  const division = word(2);
  if (division & 0x8000) throw new Error('MIDI files timed in SMPTE frames are not supported');
  position = start + headerLength;
  const notes = [];
  for (let track = 0; track < trackCount && position + 8 <= data.length; track++) {
    const kind = text(4);
    position += 4;
    const length = word(4);
    const end = Math.min(data.length, position + length);
    if (kind !== 'MTrk') {
      position = end;
      continue;
    }
    let ticks = 0;
    let status = 0;
    const open = new Map();
    const variable = () => {
      let value = 0;
      for (let i = 0; i < 4 && position < end; i++) {
        const byte = data[position++];
        value = value * 128 + (byte & 0x7f);
        if (!(byte & 0x80)) break;
      }
      return value;
    };
    while (position < end) {
      ticks += variable();
      let byte = data[position];
      if (byte & 0x80) {
        position++;
        if (byte < 0xf0) status = byte;
      } else {
        byte = status;
      }
      if (byte === 0xff || byte === 0xf0 || byte === 0xf7) {
        if (byte === 0xff) position++;  // the meta event's type
        const skip = variable();  // read first: `position += variable()` would add to the old position
        position += skip;
        continue;
      }
      const type = byte & 0xf0;
      const channel = byte & 0x0f;
      const first = data[position++];
      const second = type === 0xc0 || type === 0xd0 ? 0 : data[position++];
      if (channel === 9) continue;
      const key = `${channel}:${first}`;
      if (type === 0x90 && second > 0) {
        if (!open.has(key)) open.set(key, []);
        open.get(key).push(ticks);
      } else if (type === 0x80 || type === 0x90) {
        const starts = open.get(key);
        if (starts && starts.length) notes.push([starts.shift() / division, ticks / division, first]);
      }
    }
    position = end;
  }
  return notes.sort((a, b) => (a[0] - b[0]) || (a[2] - b[2]));
}
