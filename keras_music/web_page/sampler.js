// The portable sampler of the export contract (export/README.md, "Portable sampler"):
// SplitMix64, the vocabulary's grammar, and one draw per token in the order
// grammar mask -> temperature -> top-k -> top-p -> draw, all in float64.
// export/reference_generator.py implements the same steps; a seed gives the same tokens in both.
// No browser APIs here, so Node runs it too (the tests do).

const MASK64 = (1n << 64n) - 1n;
const TWO_POW_53 = 9007199254740992;
export const TOP_P_TOLERANCE = 1e-9;
export const BOUNDARY = 2;
export const BANNED = [0, 1];

// keras_music's defaults (keras_music/defaults.py); the export also ships them in web.json
// "defaults", which the page prefers. The tests check that the two agree.
export const DEFAULTS = Object.freeze({temperature: 0.9, topK: 0, topP: 1, length: 200, minLength: 8,
  maxLength: 10000, maxTokensPerEvent: 32, tempo: 120, keyGuidance: 0, keyPrior: 2});
// Key guidance (export/README.md, "Key guidance"): a contrast probability below this counts as this.
const GUIDANCE_FLOOR = 1e-30;

/** The key token with the other mode: key:major <-> key:minor, key:D:minor <-> key:D:major. */
export function otherMode(keyToken) {
  const at = keyToken.lastIndexOf(':');
  return `${keyToken.slice(0, at)}:${keyToken.slice(at + 1) === 'major' ? 'minor' : 'major'}`;
}

/**
 * The key prior and key guidance: exp(g - max g) with g = (1 + w) log(asked) - w log(max(contrast, 1e-30)) + bias,
 * without the contrast term when `contrast` is null and without the bias term when `bias` is null, in float64 and in
 * this order of operations (keras_music/controls.py `guided`, reference_generator.py `guided`).
 */
export function guided(asked, contrast, weight, bias = null) {
  const g = new Float64Array(asked.length);
  let top = -Infinity;
  for (let i = 0; i < asked.length; i++) {
    let v = (1 + weight) * Math.log(asked[i]);
    if (contrast) v = v - weight * Math.log(Math.max(contrast[i], GUIDANCE_FLOOR));
    if (bias) v = v + bias[i];
    g[i] = v;
    if (v > top) top = v;
  }
  for (let i = 0; i < g.length; i++) g[i] = Math.exp(g[i] - top);
  return g;
}

/**
 * The key prior's bias (export/README.md, "Key prior"): beta * log_ratios[key][pitch mod 12] for each token of
 * grammar kind "pitch" (vocab.json "key_prior"), 0 for the others; null (no prior) when vocab.json has no ratios
 * for the key (no training piece was in it).
 */
export function keyBias(vocabulary, key, beta) {
  const ratios = ((vocabulary.key_prior || {}).log_ratios || {})[key];
  if (ratios === undefined || ratios === null) return null;
  if (!Array.isArray(ratios) || ratios.length !== 12) {
    throw new Error(`vocab.json "key_prior" log ratios for ${key} must be a list of 12 numbers`);
  }
  const {kinds, pitches} = vocabulary.grammar;
  const bias = new Float64Array(vocabulary.tokens.length);
  for (let i = 0; i < bias.length; i++) {
    if (kinds[i] === 'pitch' && pitches[i] >= 0) bias[i] = beta * ratios[pitches[i] % 12];
  }
  return bias;
}

// Named levels of the bar controls (keras_music/controls.py; the tests check that they agree).
export const LEVELS = Object.freeze({density: {low: 1, medium: 3, high: 5}, poly: {low: 1, medium: 2, high: 4}});
export const BINS = Object.freeze({density: 7, poly: 5});
export const PITCH_NAMES = ['C', 'C#', 'D', 'E-', 'E', 'F', 'F#', 'G', 'G#', 'A', 'B-', 'B'];

/**
 * A bar control's schedule {defaultBin, ranges: [[first, last|null, bin|null]]} (bars 0-based) from a level
 * (low, medium, high, off, a bin) for every bar or comma-separated LEVEL and BARS:LEVEL items, BARS one of
 * N, N-M, N- counted from 1 ("1-4:low,5-8:high"): export/README.md, "Control tokens".
 */
export function parseSchedule(kind, spec) {
  const level = (text) => {
    const value = String(text).trim().toLowerCase();
    if (value === 'off') return null;
    if (value in LEVELS[kind]) return LEVELS[kind][value];
    if (/^\d+$/.test(value) && Number(value) < BINS[kind]) return Number(value);
    throw new Error(`${kind} level ${JSON.stringify(String(text).trim())} does not exist (expected low, medium, ` +
                    `high, off or a bin 0..${BINS[kind] - 1})`);
  };
  const schedule = {defaultBin: null, ranges: []};
  if (spec === undefined || spec === null) return schedule;
  spec = String(spec).replace(/\s+/g, '');  // spaces mean nothing: "1 - 4 : low" is "1-4:low"
  if (spec === '') return schedule;
  let hasDefault = false;
  for (const item of spec.split(',')) {
    const colon = item.lastIndexOf(':');
    if (colon < 0) {
      if (hasDefault) throw new Error(`${kind} schedule ${JSON.stringify(String(spec))} gives two levels for every bar`);
      schedule.defaultBin = level(item);
      hasDefault = true;
      continue;
    }
    const bars = item.slice(0, colon).trim();
    const match = /^(\d+)(-(\d*))?$/.exec(bars);
    const first = match ? Number(match[1]) : 0;
    const last = !match ? null : match[2] === undefined ? first : match[3] === '' ? null : Number(match[3]);
    if (!match || first < 1 || (last !== null && last < first)) {
      throw new Error(`${kind} bars ${JSON.stringify(bars)} are not a bar range (expected N, N-M or N-, bars counted from 1)`);
    }
    const range = [first - 1, last === null ? null : last - 1, level(item.slice(colon + 1))];
    if (schedule.ranges.some(([a, b]) => (b === null || range[0] <= b) && (range[1] === null || a <= range[1]))) {
      throw new Error(`${kind} schedule ${JSON.stringify(String(spec))}: bars ${bars} overlap another range`);
    }
    schedule.ranges.push(range);
  }
  return schedule;
}

export function scheduleAt(schedule, bar) {
  for (const [first, last, bin] of schedule.ranges) {
    if (first <= bar && (last === null || bar <= last)) return bin;
  }
  return schedule.defaultBin;
}

const gcd = (a, b) => (b ? gcd(b, a % b) : a);

/** The bar clock of the rule in export/README.md ("One piece"): exact fractions of quarter notes. */
export class BarClock {
  constructor(timeSignature = [4, 4]) {
    this.barNumerator = 4 * timeSignature[0];  // bar length = barNumerator / barDenominator quarters
    this.barDenominator = timeSignature[1];
    this.time = [0, 1];
    this.nextBar = 0;
    this.between = true;
  }

  bar() {
    const top = this.time[0] * this.barDenominator;
    const bottom = this.time[1] * this.barNumerator;
    return (top - (top % bottom)) / bottom;
  }

  advance(kind, token) {
    if ((kind === 'pitch' || kind === 'hold' || kind === 'rest') && this.between) {
      this.between = false;
      this.nextBar = Math.max(this.nextBar, this.bar() + 1);
    } else if (kind === 'dur') {
      const [top, bottom = '1'] = token.slice(token.indexOf(':') + 1).split('/');
      const numerator = this.time[0] * Number(bottom) + Number(top) * this.time[1];
      const denominator = this.time[1] * Number(bottom);
      const divisor = gcd(numerator, denominator);
      this.time = [numerator / divisor, denominator / divisor];
      this.between = true;
    }
  }

  due() {
    const bar = this.bar();
    if (!this.between || bar < this.nextBar) return null;
    this.nextBar = bar + 1;
    return bar;
  }
}

// Exact fractions [numerator, denominator] of integers, reduced, the denominator positive (as BarClock's time).
const fraction = (numerator, denominator = 1) => {
  const divisor = Math.abs(gcd(numerator, denominator)) || 1;
  return [numerator / divisor, denominator / divisor];
};
const plus = (a, b) => fraction(a[0] * b[1] + b[0] * a[1], a[1] * b[1]);
const minus = (a, b) => fraction(a[0] * b[1] - b[0] * a[1], a[1] * b[1]);
const atLeast = (a, b) => a[0] * b[1] >= b[0] * a[1];  // a >= b
const durationOf = (token) => {
  const [top, bottom = '1'] = token.slice(token.indexOf(':') + 1).split('/');
  return fraction(Number(top), Number(bottom));
};
// floor(a / b) and ceil(a / b) of fractions with a >= 0, b > 0, in integers.
const floorOf = (a, b) => {
  const top = a[0] * b[1];
  const bottom = a[1] * b[0];
  return (top - (top % bottom)) / bottom;
};
const ceilOf = (a, b) => {
  const top = a[0] * b[1];
  const bottom = a[1] * b[0];
  return (top - (top % bottom)) / bottom + (top % bottom ? 1 : 0);
};

// Density bin b holds the bars with DENSITY_EDGES[b - 1] <= onsets < DENSITY_EDGES[b] (keras_music/controls.py).
export const DENSITY_EDGES = Object.freeze([3, 5, 7, 9, 12, 16]);

/** [least, most] onsets per bar of density bin `bin`, most null for the last bin. */
export function onsetRange(bin) {
  const low = bin === 0 ? 0 : DENSITY_EDGES[bin - 1];
  return [low, bin < DENSITY_EDGES.length ? DENSITY_EDGES[bin] - 1 : null];
}

/** [least, most] pitches per onset of polyphony bin `bin`: bin + 1 each, the last bin 5 or more (most null). */
export function pitchRange(bin) {
  return bin < BINS.poly - 1 ? [bin + 1, bin + 1] : [BINS.poly, null];
}

/**
 * One piece's bar limits (export/README.md, "Bar limits"; keras_music/controls.py's BarLimits): in a bar fed
 * density:D they mask what would leave the bar's onsets outside D's range or make it unreachable, in a bar fed
 * poly:P what would give an onset another pitch count than P's. They keep their own time, phase and open
 * sonority, moved by every token like the grammar; all time arithmetic is exact.
 */
export class BarLimits {
  constructor(tokens, kinds, density, polyphony, timeSignature = [4, 4]) {
    this.size = tokens.length;
    this.kinds = kinds;
    const pitches = tokens.map((token, i) => (kinds[i] === 'pitch' || kinds[i] === 'hold' ?
      Number(token.slice(token.indexOf(':') + 1)) : -1));
    const attackable = [...new Set(pitches.filter((_, i) => kinds[i] === 'pitch'))];
    // room[i]: how many distinct pitches of pitch tokens lie above token i's pitch
    this.room = pitches.map((pitch) => attackable.filter((other) => other > pitch).length);
    this.durations = [];
    tokens.forEach((token, i) => { if (kinds[i] === 'dur') this.durations.push([i, durationOf(token)]); });
    this.shortest = null;
    for (const [, duration] of this.durations) {
      if (this.shortest === null || !atLeast(duration, this.shortest)) this.shortest = duration;
    }
    this.density = density;  // schedules (parseSchedule)
    this.polyphony = polyphony;
    this.barLength = fraction(4 * timeSignature[0], timeSignature[1]);
    this.time = [0, 1];
    this.bar = null;
    this.onsets = 0;
    this.onsetLimits = null;
    this.pitchLimits = null;
    this.phase = 'between';
    this.count = 0;
    this.attacked = false;
  }

  /** Bar `bar` has its turn (whether or not it is fed anything): its limits hold from here. */
  enter(bar) {
    this.bar = bar;
    this.onsets = 0;
    const density = scheduleAt(this.density, bar);
    const polyphony = scheduleAt(this.polyphony, bar);
    this.onsetLimits = density === null ? null : onsetRange(density);
    this.pitchLimits = polyphony === null ? null : pitchRange(polyphony);
  }

  advance(kind, token) {
    if (kind === 'pitch' || kind === 'hold') {
      this.phase = 'chord';
      this.count += 1;
      if (kind === 'pitch') this.attacked = true;
    } else if (kind === 'rest' && this.phase === 'between') {
      this.phase = 'rest';
    } else if (kind === 'dur') {
      if (this.attacked && this.barOf(this.time) === this.bar) this.onsets += 1;
      this.time = plus(this.time, durationOf(token));
      this.phase = 'between';
      this.count = 0;
      this.attacked = false;
    }
  }

  barOf(time) {
    return floorOf(time, this.barLength);
  }

  /** How many sonorities can still start in `room` quarter notes (each at least the shortest duration). */
  fit(room) {
    return room[0] <= 0 ? 0 : ceilOf(room, this.shortest);
  }

  /** Booleans [V]: the durations that may close the open sonority, which leaves its bar with `onsets` onsets. */
  closing(onsets) {
    const ok = new Array(this.size).fill(false);
    const here = this.barOf(this.time);
    const own = here === this.bar ? this.onsetLimits : null;
    const end = fraction(this.barLength[0] * (here + 1), this.barLength[1]);
    for (const [index, duration] of this.durations) {
      const at = plus(this.time, duration);
      const reaches = atLeast(at, end);
      let good = true;
      if (own !== null) good = reaches ? onsets >= own[0] : own[0] - onsets <= this.fit(minus(end, at));
      if (good && reaches) {
        const later = this.barOf(at);
        const wanted = scheduleAt(this.density, later);
        if (wanted !== null) {
          const laterEnd = fraction(this.barLength[0] * (later + 1), this.barLength[1]);
          good = onsetRange(wanted)[0] <= this.fit(minus(laterEnd, at));
        }
      }
      ok[index] = good;
    }
    return ok;
  }

  /** Booleans [V]: what the limits allow next (everything they say nothing about included). */
  mask() {
    const {kinds, size} = this;
    const allow = new Array(size).fill(true);
    if (this.shortest === null) return allow;
    const inside = this.barOf(this.time) === this.bar;
    const onsets = inside ? this.onsetLimits : null;
    const pitches = inside ? this.pitchLimits : null;
    const ban = (test) => { for (let i = 0; i < size; i++) if (test(kinds[i], i)) allow[i] = false; };
    if (this.phase === 'between') {
      if (onsets !== null) {
        if (onsets[1] !== null && this.onsets >= onsets[1]) ban((kind) => kind === 'pitch');
        if (!this.closing(this.onsets).includes(true)) ban((kind) => kind === 'rest' || kind === 'hold');
        if (this.onsets < onsets[0]) ban((kind) => kind === 'end');
      }
      if (pitches !== null) ban((kind, i) => kind === 'pitch' && 1 + this.room[i] < pitches[0]);
      return allow;
    }
    if (this.phase === 'chord') {
      if (onsets !== null && onsets[1] !== null && !this.attacked && this.onsets >= onsets[1]) {
        ban((kind) => kind === 'pitch');
      }
      if (pitches !== null) {
        const [least, most] = pitches;
        if (most !== null && this.count >= most) ban((kind) => kind === 'pitch' || kind === 'hold');
        const short = (i) => this.count + 1 + this.room[i] < least;
        ban((kind, i) => kind === 'pitch' && short(i));
        if (this.attacked) {
          ban((kind, i) => kind === 'hold' && short(i));
          if (this.count < least) ban((kind) => kind === 'dur');
        }
      }
    }
    const closes = this.closing(this.onsets + (this.attacked ? 1 : 0));
    for (let i = 0; i < size; i++) if (kinds[i] === 'dur' && !closes[i]) allow[i] = false;
    return allow;
  }
}

/**
 * {token, transpose} for a key name ("D minor", "Eb major", "minor") or a key token: with key:major / key:minor
 * in the vocabulary (keys normalised) the mode's token and the semitones (-6..5) that move the output to the tonic.
 */
export function keyRequest(name, tokens) {
  const text = String(name).trim();
  if (tokens.includes(text) && text.startsWith('key:')) return {token: text, transpose: 0};
  const match = /^(?:([A-Ga-g])([#b-]?)\s+)?(major|minor)$/i.exec(text);
  if (!match) {
    throw new Error(`key ${JSON.stringify(text)} does not exist (expected a tonic C..B with an optional # or b and ` +
                    'major or minor, e.g. "D minor")');
  }
  const mode = match[3].toLowerCase();
  const tonic = match[1] === undefined ? null :
    ({C: 0, D: 2, E: 4, F: 5, G: 7, A: 9, B: 11}[match[1].toUpperCase()] + ({'#': 1, b: -1, '-': -1}[match[2]] || 0) + 12) % 12;
  let token;
  let transpose = 0;
  if (tokens.includes('key:major') || tokens.includes('key:minor')) {
    const shift = tonic === null ? 0 : (tonic - (mode === 'major' ? 0 : 9) + 12) % 12;
    token = `key:${mode}`;
    transpose = shift >= 6 ? shift - 12 : shift;
  } else if (tonic === null) {
    throw new Error(`key ${JSON.stringify(text)} names no tonic, but this vocabulary's key tokens do`);
  } else {
    token = `key:${PITCH_NAMES[tonic]}:${mode}`;
  }
  if (!tokens.includes(token)) {
    throw new Error(`key token ${token} is not in vocab.json (this model was trained without controls)`);
  }
  return {token, transpose};
}

/** Whether a vocabulary's tokens include control tokens (a run trained with data.controls). */
export function hasControls(tokens) {
  return tokens.some((token) => /^(key|density|poly):/.test(token));
}

/**
 * The controls of a request (export/README.md, "Control tokens"): the primer ids with the key token right after
 * <piece> (replacing one there), the key token and the semitones the output moves by; the bar schedules checked.
 * Unset controls (null, undefined, '') leave the primer as it is. Throws naming a bad value.
 */
export function steer(primerIds, tokens, {key = null, density = null, polyphony = null} = {}) {
  const given = (value) => value !== undefined && value !== null && value !== '';
  if ([key, density, polyphony].some(given) && !hasControls(tokens)) {
    throw new Error('this model has no control tokens (key, density, polyphony): train the run with data.controls=true');
  }
  parseSchedule('density', density);
  parseSchedule('poly', polyphony);
  if (!given(key)) return {primerIds: [...primerIds], keyToken: null, transpose: 0};
  const {token, transpose} = keyRequest(key, tokens);
  const rest = primerIds.slice(1);
  if (rest.length && tokens[rest[0]].startsWith('key:')) rest.shift();
  return {primerIds: [primerIds[0], tokens.indexOf(token), ...rest], keyToken: token, transpose};
}

/** A seed as an unsigned 64-bit BigInt: integers (Number, BigInt or decimal string) modulo 2^64. */
export function toSeed(seed) {
  if (typeof seed === 'bigint') return BigInt.asUintN(64, seed);
  if (typeof seed === 'number') {
    if (!Number.isSafeInteger(seed)) {
      throw new Error(`seed must be an integer (beyond 2^53 pass it as a string or BigInt), got ${seed}`);
    }
    return BigInt.asUintN(64, BigInt(seed));
  }
  if (typeof seed === 'string' && /^-?\d+$/.test(seed.trim())) return BigInt.asUintN(64, BigInt(seed.trim()));
  throw new Error(`seed must be an integer, got ${JSON.stringify(seed)}`);
}

/** A fresh random seed (0 .. 2^53 - 1, so it prints and types as an ordinary number). */
export function randomSeed() {
  const words = new Uint32Array(2);
  globalThis.crypto.getRandomValues(words);
  return (words[0] & 0x1fffff) * 4294967296 + words[1];
}

export class SplitMix64 {
  constructor(seed) {
    this.state = toSeed(seed);
  }

  /** The next 64-bit output as a BigInt. */
  nextU64() {
    this.state = (this.state + 0x9E3779B97F4A7C15n) & MASK64;
    let z = this.state;
    z = ((z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n) & MASK64;
    z = ((z ^ (z >> 27n)) * 0x94D049BB133111EBn) & MASK64;
    return z ^ (z >> 31n);
  }

  /** The top 53 bits of the next output over 2^53: a float64 in [0, 1), exact in every language. */
  random() {
    return Number(this.nextU64() >> 11n) / TWO_POW_53;
  }
}

/**
 * vocab.json's "grammar" as a state machine over one piece (export/README.md, "Sampling grammar").
 * A vocabulary without a grammar (older exports) bans only <pad> and <unk>.
 */
export class Grammar {
  constructor(vocabulary) {
    const size = vocabulary.tokens.length;
    let table = vocabulary.grammar;
    if (!table) {
      table = {rules: 'any', kinds: ['banned', 'banned', 'end', ...Array(size - 3).fill('event')],
               pitches: Array(size).fill(-1)};
    }
    if (!['note', 'any'].includes(table.rules) || table.kinds.length !== size || table.pitches.length !== size) {
      throw new Error(`vocabulary grammar must have rules note/any and ${size} kinds and pitches`);
    }
    this.rules = table.rules;
    this.size = size;
    this.kinds = table.kinds;
    this.pitches = table.pitches;
    this.phase = 'between';
    this.top = -1;
    this.current = new Set();
    this.previous = new Set();
  }

  /** Booleans [V]: what may come next; `closing` allows only what closes an open sonority. */
  allowed(closing = false) {
    const {kinds, pitches} = this;
    const allowed = new Array(this.size).fill(false);
    for (let i = 0; i < this.size; i++) {
      const kind = kinds[i];
      if (this.rules === 'any') {
        allowed[i] = kind !== 'banned' && kind !== 'control' && kind !== 'fim';  // controls, FIM sentinels: fed, never sampled
      } else if (this.phase === 'rest' || (closing && this.phase === 'chord')) {
        allowed[i] = kind === 'dur';
      } else {
        const voiced = kind === 'pitch' || (kind === 'hold' && this.previous.has(pitches[i]));
        if (this.phase === 'between') {
          allowed[i] = voiced || kind === 'rest' || kind === 'end';
        } else {
          allowed[i] = (voiced && pitches[i] > this.top) || kind === 'dur';
        }
      }
    }
    if (!allowed.includes(true)) return kinds.map((kind) => kind !== 'banned' && kind !== 'control' && kind !== 'fim');
    return allowed;
  }

  /** Moves past one token, leniently for primers (a rest inside a chord leaves it open). */
  advance(token) {
    if (this.rules === 'any') return;
    const kind = this.kinds[token];
    if (kind === 'pitch' || kind === 'hold') {
      this.phase = 'chord';
      this.top = Math.max(this.top, this.pitches[token]);
      this.current.add(this.pitches[token]);
    } else if (kind === 'rest' && this.phase === 'between') {
      this.phase = 'rest';
    } else if (kind === 'dur') {
      this.phase = 'between';
      this.top = -1;
      this.previous = this.current;
      this.current = new Set();
    }
  }
}

/**
 * One id from `probabilities` (float32 or float64, length V), exactly as reference_generator.sample.
 * `allowed` (booleans [V]) is the grammar's mask; `banned` ids are never returned.
 */
export function sample(probabilities, rng, temperature, topK, topP, banned = BANNED, allowed = null) {
  const size = probabilities.length;
  const p = new Float64Array(size);
  const forbidden = new Array(size).fill(false);
  for (const id of banned) forbidden[id] = true;
  for (let i = 0; i < size; i++) {
    if (allowed && !allowed[i]) forbidden[i] = true;
    p[i] = forbidden[i] ? 0 : probabilities[i];
  }
  // Greedy: the most probable allowed id; forbidden ids rank at -1, ties go to the lowest id.
  let best = 0;
  for (let i = 1; i < size; i++) {
    if ((forbidden[i] ? -1 : p[i]) > (forbidden[best] ? -1 : p[best])) best = i;
  }
  if (temperature === 0) return best;
  const uniform = rng.random();
  let top = -Infinity;
  const logP = new Float64Array(size);
  for (let i = 0; i < size; i++) {
    logP[i] = Math.log(p[i]);
    if (logP[i] > top) top = logP[i];
  }
  if (!Number.isFinite(top)) return best;
  const weights = new Float64Array(size);
  for (let i = 0; i < size; i++) weights[i] = Math.exp((logP[i] - top) / temperature);

  const useTopK = topK > 0 && topK < size;
  const useTopP = topP < 1;
  if (useTopK || useTopP) {
    // Ranked by probability, descending; equal probabilities keep id order (a stable sort).
    const order = Array.from({length: size}, (_, i) => i).sort((a, b) => (p[b] - p[a]) || (a - b));
    const ranked = order.map((id) => weights[id]);
    if (useTopK) ranked.fill(0, topK);
    if (useTopP) {
      let cumulative = 0;
      const limit = [];
      for (let r = 0; r < size; r++) {
        cumulative += ranked[r];
        limit.push(cumulative - ranked[r]);  // the mass before rank r, computed as numpy does
      }
      const threshold = (topP - TOP_P_TOLERANCE) * cumulative;
      for (let r = 1; r < size; r++) {
        if (limit[r] >= threshold) ranked[r] = 0;
      }
    }
    for (let r = 0; r < size; r++) weights[order[r]] = ranked[r];
  }
  const cumulative = new Float64Array(size);
  let total = 0;
  let lastPositive = 0;
  for (let i = 0; i < size; i++) {
    total += weights[i];
    cumulative[i] = total;
    if (weights[i] > 0) lastPositive = i;
  }
  const target = uniform * total;
  let chosen = 0;
  while (chosen < size && cumulative[chosen] <= target) chosen++;
  // u * total can round up to the total itself; the last id with weight is the most it may be.
  return Math.min(chosen, lastPositive);
}

/**
 * Primer ids followed by the sampled ids of up to `length` events, as reference_generator.generate
 * (export/README.md, "One piece"): <piece> may not end the piece before `minLength` events, and
 * the piece stops after `length` * 32 tokens at the latest (`maxTokens`, for benchmarks, overrides that).
 * `until(id)`, if given, is asked after each sampled id whether the caller has what it needs: true ends the
 * loop there, so the ids are a prefix of the ones the full loop gives (live answers stop at their bars).
 * `density` and `polyphony` are bar schedules (parseSchedule), bars of `timeSignature` counted from the primer's start;
 * with `barLimits` (the default) the bar limits (BarLimits) also keep each bar they were fed for in the requested bins.
 * `key` (a key token such as 'key:minor', steer()'s keyToken; steer() also put it after <piece>) is fed at each such
 * bar before density and polyphony, unless the id just before (the primer's last or the last sampled) is that token.
 * With a key and `keyGuidance` w > 0 every step also runs a second state that reads the other mode's key token
 * wherever the key is fed (the primer's included); with a key and `keyPrior` beta > 0 the pitch tokens get the key
 * prior's bias (keyBias); either way sampling draws from guided(...) (export/README.md).
 * `model` has initialState() and async step(token, state) -> {probabilities, state}.
 * Returns {ids (primer included), sampled (primer excluded), events, stopped, stepMs, fed}: `fed` lists the bar
 * controls fed, {bar (counted from 1), at (the index in `sampled` they came before), tokens}.
 */
export async function generate(model, vocabulary, {primerIds = [BOUNDARY], length = DEFAULTS.length,
  minLength = DEFAULTS.minLength, temperature = DEFAULTS.temperature, topK = DEFAULTS.topK, topP = DEFAULTS.topP,
  seed = 0, keepGoing = false, maxTokens = null, now = null, until = null, density = null, polyphony = null,
  timeSignature = [4, 4], barLimits = true, key = null, keyGuidance = DEFAULTS.keyGuidance,
  keyPrior = DEFAULTS.keyPrior} = {}) {
  const rng = new SplitMix64(seed);
  const grammar = new Grammar(vocabulary);
  const schedules = [['density', parseSchedule('density', density)], ['poly', parseSchedule('poly', polyphony)]];
  const steered = schedules.some(([, s]) => s.defaultBin !== null || s.ranges.some((r) => r[2] !== null));
  if (steered && !vocabulary.tokens.some((t) => t.startsWith('density:') || t.startsWith('poly:'))) {
    throw new Error('this model has no control tokens, so density and polyphony cannot steer it');
  }
  const keyId = key === null || key === undefined || key === '' ? null : vocabulary.tokens.indexOf(key);
  if (keyId === -1) throw new Error(`key token ${key} is not in vocab.json (train the run with data.controls=true)`);
  if (!(Number.isFinite(keyGuidance) && keyGuidance >= 0)) {
    throw new Error(`keyGuidance must be a number >= 0 (0 leaves the key to the model), got ${keyGuidance}`);
  }
  if (!(Number.isFinite(keyPrior) && keyPrior >= 0)) {
    throw new Error(`keyPrior must be a number >= 0 (0 turns it off), got ${keyPrior}`);
  }
  const contrastId = keyId !== null && keyGuidance > 0 ? vocabulary.tokens.indexOf(otherMode(key)) : null;
  if (contrastId === -1) {
    throw new Error(`key guidance needs ${otherMode(key)} beside ${key} in vocab.json: use keyGuidance 0`);
  }
  const bias = keyId !== null && keyPrior > 0 ? keyBias(vocabulary, key, keyPrior) : null;
  const clock = new BarClock(timeSignature);
  let latest = null;  // the latest primer or sampled id
  const limits = steered && barLimits ?
    new BarLimits(vocabulary.tokens, grammar.kinds, schedules[0][1], schedules[1][1], timeSignature) : null;
  const advance = (token) => {  // the limits move before the clock, over every primer and sampled id
    if (limits) limits.advance(grammar.kinds[token], vocabulary.tokens[token]);
    clock.advance(grammar.kinds[token], vocabulary.tokens[token]);
    latest = token;
  };
  const tokenLimit = maxTokens ?? length * DEFAULTS.maxTokensPerEvent;
  const least = Math.min(minLength, length);
  const stepMs = [];
  let contrast = contrastId === null ? null : {state: model.initialState(), probabilities: null};
  const timed = async (token, state) => {
    const started = now ? now() : 0;
    let out = await model.step(token, state);
    if (contrast) {  // the contrast stream: the other mode's key token where the key is fed
      const other = await model.step(token === keyId ? contrastId : token, contrast.state);
      contrast = {state: other.state, probabilities: other.probabilities};
      out = {probabilities: guided(out.probabilities, other.probabilities, keyGuidance, bias), state: out.state};
    } else if (bias) {
      out = {probabilities: guided(out.probabilities, null, 0, bias), state: out.state};
    }
    if (now) stepMs.push(now() - started);
    return out;
  };
  let state = model.initialState();
  let probabilities = null;
  for (const token of primerIds) {
    ({probabilities, state} = await timed(token, state));
    grammar.advance(token);
    advance(token);
  }
  const sampled = [];
  const fed = [];
  let stopped = false;
  let events = 0;
  for (let step = 0; step < tokenLimit; step++) {
    const last = step === tokenLimit - 1;
    if (last && grammar.phase === 'between') break;  // rules "any" never leave it
    const bar = steered || keyId !== null ? clock.due() : null;
    if (bar !== null) {  // the bar's controls, fed without a draw
      if (limits) limits.enter(bar);
      const tokens = [];
      if (keyId !== null && latest !== keyId) {
        tokens.push(key);
        ({probabilities, state} = await timed(keyId, state));
      }
      for (const [kind, schedule] of schedules) {
        const bin = scheduleAt(schedule, bar);
        if (bin !== null) {
          tokens.push(`${kind}:${bin}`);
          ({probabilities, state} = await timed(vocabulary.tokens.indexOf(`${kind}:${bin}`), state));
        }
      }
      if (tokens.length) fed.push({bar: bar + 1, at: sampled.length, tokens});
    }
    let allowed = grammar.allowed(last);
    if (events < least) allowed[BOUNDARY] = false;
    if (limits) {  // the bar limits narrow it where that leaves something
      const mask = limits.mask();
      const narrowed = allowed.map((ok, i) => ok && mask[i]);
      if (narrowed.includes(true)) allowed = narrowed;
    }
    const token = sample(probabilities, rng, temperature, topK, topP, BANNED, allowed);
    if (token === BOUNDARY && !keepGoing) {
      stopped = true;
      break;
    }
    sampled.push(token);
    grammar.advance(token);
    advance(token);
    if (grammar.kinds[token] === 'dur' || grammar.kinds[token] === 'event') events++;
    if (events >= length) break;
    if (until && until(token)) break;
    ({probabilities, state} = await timed(token, state));
  }
  if (model.release) {
    model.release(state);
    if (contrast) model.release(contrast.state);
  }
  return {ids: [...primerIds, ...sampled], sampled, events, stopped, stepMs, fed};
}

/** Checks sampling settings; throws an Error naming the first bad one. */
export function validateSettings({length, minLength, temperature, topK, topP}) {
  if (!Number.isInteger(length) || length < 1 || length > DEFAULTS.maxLength) {
    throw new Error(`length must be an integer in 1..${DEFAULTS.maxLength} (events), got ${length}`);
  }
  if (!Number.isInteger(minLength) || minLength < 0) {
    throw new Error(`minLength must be an integer >= 0 (events), got ${minLength}`);
  }
  if (!Number.isFinite(temperature) || temperature < 0) {
    throw new Error(`temperature must be a number >= 0 (0 is greedy), got ${temperature}`);
  }
  if (!Number.isInteger(topK) || topK < 0) throw new Error(`topK must be an integer >= 0 (0 is off), got ${topK}`);
  if (!Number.isFinite(topP) || !(topP > 0 && topP <= 1)) throw new Error(`topP must be in (0, 1] (1 is off), got ${topP}`);
}
