// Notes -> sonorities -> tokens, exactly as keras_music/events.py (canonical_notes, notes_to_sonorities,
// sonorities_to_tokens), for what a player plays into the page; then the page's own steps that make a primer
// the model can read (export/README.md, "Live play"). Times are integer grid ticks (events.GRID per quarter
// by default). No browser APIs here, so Node runs it too (the tests compare it with Python).

export const GRID = 24;
const PITCH_NAMES = ['C', 'C#', 'D', 'E-', 'E', 'F', 'F#', 'G', 'G#', 'A', 'B-', 'B'];

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return Math.abs(a);
}

/** Python's round() of a float: halves go to the even neighbour. */
export function roundHalfEven(x) {
  const floor = Math.floor(x);
  const rest = x - floor;
  if (rest > 0.5 || (rest === 0.5 && floor % 2 !== 0)) return floor + 1;
  return floor;
}

/** A time in quarter notes (a float) as grid ticks, as events._ticks does with a float: round(value * grid). */
export function ticks(quarters, grid = GRID) {
  return roundHalfEven(quarters * grid);
}

/** `ticks` quarter notes of `grid` as a dur: value ("3", "1/2"), as events.format_duration. */
export function formatDuration(tickCount, grid = GRID) {
  const g = gcd(tickCount, grid) || 1;
  const n = tickCount / g;
  const d = grid / g;
  return d === 1 ? String(n) : `${n}/${d}`;
}

export function pitchName(midi) {
  return `${PITCH_NAMES[midi % 12]}${Math.floor(midi / 12) - 1}`;
}

function lexicographic(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (a[i] !== b[i]) return a[i] - b[i];
  }
  return a.length - b.length;
}

/**
 * [[onset, end, pitch]] in ticks, one note per pitch at a time (events.canonical_notes): a re-attack of a
 * sounding pitch ends the older note, and the new note lasts as long as either did; empty notes are dropped.
 */
export function canonicalNotes(notes) {
  const byPitch = new Map();
  for (const [a, b, p] of notes) {
    if (b > a) {
      if (!byPitch.has(p)) byPitch.set(p, []);
      byPitch.get(p).push([a, b]);
    }
  }
  const out = [];
  for (const [pitch, spans] of byPitch) {
    spans.sort(lexicographic);
    const merged = [];
    for (let [onset, end] of spans) {
      const last = merged[merged.length - 1];
      if (last && onset < last[1]) {
        end = Math.max(end, last[1]);
        if (onset === last[0]) {
          last[1] = end;
          continue;
        }
        last[1] = onset;
      }
      merged.push([onset, end]);
    }
    for (const [a, b] of merged) out.push([a, b, pitch]);
  }
  return out.sort(lexicographic);
}

/**
 * Notes ([[onset, end, pitch]] in ticks) -> sonorities [{pitches (ascending), held, ticks}], as
 * events.notes_to_sonorities: cut at every onset and end (leading silence is not encoded); spans longer than
 * `limit` ticks are split into held continuations (a silence into several rests).
 */
export function notesToSonorities(notes, limit) {
  const canonical = canonicalNotes(notes);
  if (!canonical.length) return [];
  const times = [...new Set(canonical.flatMap(([a, b]) => [a, b]))].sort((x, y) => x - y);
  const byOnset = new Map();
  for (const note of canonical) {
    if (!byOnset.has(note[0])) byOnset.set(note[0], []);
    byOnset.get(note[0]).push(note);
  }
  let sounding = new Map();  // pitch -> end tick of the note sounding it
  const out = [];
  for (let i = 0; i + 1 < times.length; i++) {
    const begin = times[i];
    const end = times[i + 1];
    sounding = new Map([...sounding].filter(([, e]) => e > begin));
    const attacked = new Set();
    for (const [, noteEnd, pitch] of byOnset.get(begin) || []) {
      attacked.add(pitch);
      sounding.set(pitch, noteEnd);
    }
    const pitches = [...sounding.keys()].sort((x, y) => x - y);
    const heldFlags = pitches.map((p) => !attacked.has(p));
    let remaining = end - begin;
    let first = true;
    while (remaining > 0) {
      const piece = Math.min(remaining, limit);
      out.push({pitches, held: first ? heldFlags : pitches.map(() => true), ticks: piece});
      remaining -= piece;
      first = false;
    }
  }
  return out;
}

/** Sonorities -> token strings, as events.sonorities_to_tokens ("note" or "classic"). */
export function sonoritiesToTokens(sonorities, representation = 'note', grid = GRID) {
  const tokens = [];
  if (representation === 'note') {
    for (const {pitches, held, ticks: length} of sonorities) {
      if (pitches.length) {
        pitches.forEach((p, i) => tokens.push(`${held[i] ? 'hold' : 'pitch'}:${p}`));
      } else {
        tokens.push('rest');
      }
      tokens.push(`dur:${formatDuration(length, grid)}`);
    }
    return tokens;
  }
  if (representation === 'classic') {
    for (const {pitches, held} of sonorities) {
      const attacked = pitches.filter((p, i) => !held[i]);
      if (!attacked.length) continue;
      if (attacked.length === 1) tokens.push(pitchName(attacked[0]));
      else tokens.push([...new Set(attacked.map((p) => p % 12))].sort((x, y) => x - y).join('.'));
    }
    return tokens;
  }
  throw new Error(`unknown representation ${representation} (expected note or classic)`);
}

/**
 * Notes in quarter notes ([[onset, end, pitch]], floats) -> tokens, exactly as
 * events.sonorities_to_tokens(events.notes_to_sonorities(notes, max_duration, grid), representation).
 */
export function encode(notes, {grid = GRID, maxDuration = 8, representation = 'note'} = {}) {
  const tickNotes = notes.map(([a, b, p]) => [ticks(a, grid), ticks(b, grid), p]);
  return sonoritiesToTokens(notesToSonorities(tickNotes, ticks(maxDuration, grid)), representation, grid);
}

// ----------------------------------------------------------------------------- the page's primer

/** What a vocabulary can say: its pitches, holds, durations (ticks, descending), rest. */
export function vocabularyShape(vocabulary, grid = GRID) {
  const tokens = new Set(vocabulary.tokens);
  const pitches = new Set();
  const durations = [];
  for (const token of vocabulary.tokens) {
    const [kind, value] = token.split(':');
    if (kind === 'pitch' && /^\d+$/.test(value)) pitches.add(Number(value));
    if (kind === 'dur' && value !== undefined) {
      const [n, d = '1'] = value.split('/');
      const length = (Number(n) * grid) / Number(d);
      if (Number.isInteger(length) && length > 0) durations.push(length);
    }
  }
  durations.sort((a, b) => b - a);
  return {tokens, pitches, durations, rest: tokens.has('rest'), representation: vocabulary.representation || 'note'};
}

/** The pitch moved by octaves to the nearest one the vocabulary attacks (null if its pitch class has none). */
export function fitPitch(pitch, shape) {
  if (shape.pitches.has(pitch)) return pitch;
  let best = null;
  for (const candidate of shape.pitches) {
    if ((candidate - pitch) % 12 === 0 && (best === null || Math.abs(candidate - pitch) < Math.abs(best - pitch))) {
      best = candidate;
    }
  }
  return best;
}

/**
 * Sonorities the vocabulary can say: a duration it lacks is split greedily into its durations, longest
 * first (the continuations held, as max_duration splitting does; a remainder shorter than its shortest
 * duration is dropped); a hold it lacks becomes an attack; without `rest`, a silence holds the notes before it.
 */
export function fitSonorities(sonorities, shape, grid = GRID) {
  const out = [];
  for (let {pitches, held, ticks: length} of sonorities) {
    if (!pitches.length && !shape.rest) {
      // A silence a vocabulary without `rest` cannot say: the sounding notes are held through it (legato).
      const before = out[out.length - 1];
      if (!before || !before.pitches.length) continue;
      pitches = before.pitches;
      held = pitches.map(() => true);
    }
    const parts = [];
    if (shape.tokens.has(`dur:${formatDuration(length, grid)}`)) {
      parts.push(length);
    } else {
      let remaining = length;
      for (const d of shape.durations) {
        while (remaining >= d) {
          parts.push(d);
          remaining -= d;
        }
      }
    }
    parts.forEach((part, i) => {
      const flags = pitches.map((p, j) => (i === 0 ? held[j] : true) && shape.tokens.has(`hold:${p}`));
      out.push({pitches, held: flags, ticks: part});
    });
  }
  return out;
}

/**
 * A played phrase -> the primer the model continues (export/README.md, "Live play"):
 * notes [[onset, end, pitch]] in ticks from the phrase's origin, already on the player's quantisation step;
 * `endTick` is where the answer starts. Notes are clipped at endTick, pitches moved by octaves into the
 * vocabulary, encoded as keras_music encodes (no key normalisation: the phrase keeps its key), followed by
 * the silence up to endTick as rests (if the vocabulary has `rest`), then fitted to the vocabulary.
 * Returns {tokens (with "<piece>" first), dropped (notes no octave could place)}.
 */
export function phrasePrimer(notes, endTick, vocabulary, {grid = GRID, maxDuration = 8} = {}) {
  const shape = vocabularyShape(vocabulary, grid);
  const limit = ticks(maxDuration, grid);
  let dropped = 0;
  const placed = [];
  for (const [a, b, p] of notes) {
    const pitch = fitPitch(p, shape);
    const end = Math.min(b, endTick);
    if (pitch === null) dropped++;
    else if (end > a) placed.push([a, end, pitch]);
  }
  const sonorities = notesToSonorities(placed, limit);
  const lastEnd = placed.length ? Math.max(...placed.map((n) => n[1])) : 0;
  if (placed.length && shape.rest && endTick > lastEnd) {
    for (let remaining = endTick - lastEnd; remaining > 0; remaining -= Math.min(remaining, limit)) {
      sonorities.push({pitches: [], held: [], ticks: Math.min(remaining, limit)});
    }
  }
  const fitted = fitSonorities(sonorities, shape, grid);
  return {tokens: ['<piece>', ...sonoritiesToTokens(fitted, shape.representation, grid)], dropped};
}

/** Quarter notes -> ticks on a quantisation step (itself in ticks), round half to even as Python's round(). */
export function quantise(quarters, step, grid = GRID) {
  return step * roundHalfEven((quarters * grid) / step);
}

/**
 * The answer rule (export/README.md, "Live play"): the sampled ids up to and including the event at which
 * the answer's length reaches `quarters` (all of them if it never does). Returns {ids, quarters (length of
 * what is kept), complete (whether it reached `quarters`)}.
 */
export function cutAnswer(ids, vocabulary, quarters) {
  const kinds = vocabulary.grammar ? vocabulary.grammar.kinds : null;
  const step = String(vocabulary.classic_step ?? 0.5).split('.');
  const classic = step.length === 2 ? [Number(step[0] + step[1]), 10 ** step[1].length] : [Number(step[0]), 1];
  let [n, d] = [0, 1];  // the length so far, an exact fraction of a quarter note
  for (let i = 0; i < ids.length; i++) {
    const token = vocabulary.tokens[ids[i]];
    const kind = kinds ? kinds[ids[i]] : (token.startsWith('dur:') ? 'dur' : 'other');
    let add;
    if (kind === 'dur') {
      const [a, b = '1'] = token.slice(4).split('/');
      add = [Number(a), Number(b)];
    } else if (kind === 'event') {
      add = classic;
    } else {
      continue;
    }
    [n, d] = [n * add[1] + add[0] * d, d * add[1]];
    const g = gcd(n, d) || 1;
    [n, d] = [n / g, d / g];
    if (n >= quarters * d) return {ids: ids.slice(0, i + 1), quarters: n / d, complete: true};
  }
  return {ids: ids.slice(), quarters: n / d, complete: false};
}
