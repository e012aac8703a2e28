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
  maxLength: 10000, maxTokensPerEvent: 32, tempo: 120});

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
 * `model` has initialState() and async step(token, state) -> {probabilities, state}.
 * Returns {ids (primer included), sampled (primer excluded), events, stopped, stepMs}.
 */
export async function generate(model, vocabulary, {primerIds = [BOUNDARY], length = DEFAULTS.length,
  minLength = DEFAULTS.minLength, temperature = DEFAULTS.temperature, topK = DEFAULTS.topK, topP = DEFAULTS.topP,
  seed = 0, keepGoing = false, maxTokens = null, now = null} = {}) {
  const rng = new SplitMix64(seed);
  const grammar = new Grammar(vocabulary);
  const tokenLimit = maxTokens ?? length * DEFAULTS.maxTokensPerEvent;
  const least = Math.min(minLength, length);
  const stepMs = [];
  const timed = async (token, state) => {
    const started = now ? now() : 0;
    const out = await model.step(token, state);
    if (now) stepMs.push(now() - started);
    return out;
  };
  let state = model.initialState();
  let probabilities = null;
  for (const token of primerIds) {
    ({probabilities, state} = await timed(token, state));
    grammar.advance(token);
  }
  const sampled = [];
  let stopped = false;
  let events = 0;
  for (let step = 0; step < tokenLimit; step++) {
    const last = step === tokenLimit - 1;
    if (last && grammar.phase === 'between') break;  // rules "any" never leave it
    const allowed = grammar.allowed(last);
    if (events < least) allowed[BOUNDARY] = false;
    const token = sample(probabilities, rng, temperature, topK, topP, BANNED, allowed);
    if (token === BOUNDARY && !keepGoing) {
      stopped = true;
      break;
    }
    sampled.push(token);
    grammar.advance(token);
    if (grammar.kinds[token] === 'dur' || grammar.kinds[token] === 'event') events++;
    if (events >= length) break;
    ({probabilities, state} = await timed(token, state));
  }
  if (model.release) model.release(state);
  return {ids: [...primerIds, ...sampled], sampled, events, stopped, stepMs};
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
