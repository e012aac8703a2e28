// The page: loads LiteRT.js and a .tflite step model, generates on this device, plays, draws and
// offers the piece as MIDI. window.kerasMusic is the same machinery for scripts and tests.

import {loadLiteRt, loadAndCompile, Tensor} from './litert/core/index.js';
import {BOUNDARY, DEFAULTS, PITCH_NAMES, SplitMix64, generate as sampleTokens, keyRequest, parseSchedule, randomSeed, toSeed, validateSettings} from './sampler.js';
import {decode, midiBytes} from './music.js';
import {Synth, drawPianoRoll} from './player.js';

const WASM_DIRECTORY = './litert/wasm/';
const $ = (id) => document.getElementById(id);
const marks = {};

function mark(name) {
  marks[name] = performance.now();
}

function setStatus(status, text) {
  document.body.dataset.status = status;
  $('status').textContent = text;
}

/** The `step` signature of a compiled .tflite: token int32 [1], state float32 [1, 2L, H]. */
class StepModel {
  constructor(compiled, name, vocabularySize) {
    this.compiled = compiled;
    this.name = name;
    this.runner = compiled.signatures.step;
    if (!this.runner) {
      throw new Error(`${name} has signatures ${Object.keys(compiled.signatures)}, expected "step"`);
    }
    const inputs = Object.fromEntries(this.runner.getInputDetails().map((d) => [d.name, d]));
    const outputs = Object.fromEntries(this.runner.getOutputDetails().map((d) => [d.name, d]));
    if (!inputs.token || !inputs.state || !outputs.probabilities || !outputs.next_state) {
      throw new Error(`${name}: step takes ${Object.keys(inputs)} and returns ${Object.keys(outputs)}, expected ` +
                      'token, state -> probabilities, next_state');
    }
    this.stateShape = Array.from(inputs.state.shape);
    const predicted = outputs.probabilities.shape[outputs.probabilities.shape.length - 1];
    if (predicted !== vocabularySize) {
      throw new Error(`${name} predicts ${predicted} tokens but vocab.json has ${vocabularySize}`);
    }
  }

  initialState() {
    return new Tensor(new Float32Array(this.stateShape.reduce((a, b) => a * b, 1)), this.stateShape);
  }

  async step(token, state) {
    const tokenTensor = new Tensor(Int32Array.of(token), [1]);
    const out = await this.runner.run({token: tokenTensor, state});
    tokenTensor.delete();
    state.delete();
    const probabilities = out.probabilities.toTypedArray().slice();
    out.probabilities.delete();
    return {probabilities, state: out.next_state};
  }

  release(state) {
    state.delete();
  }

  delete() {
    this.compiled.delete();
  }
}

const page = {
  site: null,
  vocabulary: null,
  tokenIds: null,
  build: 'default',
  model: null,
  synth: new Synth(),
  queue: Promise.resolve(),
  last: null,
  downloadUrl: null,
};

/** Runs `work` after everything queued before it: one generation at a time on the model. */
function exclusive(work) {
  const result = page.queue.then(work);
  page.queue = result.catch(() => {});
  return result;
}

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function loadModel(name) {
  const entry = page.site.models.find((model) => model.name === name);
  if (!entry) {
    throw new Error(`no model ${name} in this export (it has ${page.site.models.map((m) => m.name).join(', ')})`);
  }
  return exclusive(async () => {
    const started = performance.now();
    const compiled = await loadAndCompile(entry.file, {accelerator: 'wasm'});
    let model;
    let warmupMs;
    try {
      model = new StepModel(compiled, name, page.vocabulary.tokens.length);
      // The first run of a compiled model prepares its kernels and compiles code lazily (up to seconds
      // on a slow machine); do it now rather than inside the first piece.
      const warmed = performance.now();
      model.release((await model.step(BOUNDARY, model.initialState())).state);
      warmupMs = performance.now() - warmed;
    } catch (error) {
      compiled.delete();
      throw error;
    }
    if (page.model) page.model.delete();
    page.model = model;
    $('model').value = name;
    return {model: name, loadMs: performance.now() - started, warmupMs, bytes: entry.bytes};
  });
}

function primerIds(primer) {
  if (primer === undefined || primer === null) return [BOUNDARY];
  const tokens = Array.isArray(primer) ? primer : String(primer).split(/\s+/).filter(Boolean);
  const unknown = tokens.filter((token) => !page.tokenIds.has(token));
  if (unknown.length || !tokens.length) {
    throw new Error(`primer tokens ${JSON.stringify(unknown.length ? unknown : tokens)} are not in vocab.json`);
  }
  return tokens.map((token) => page.tokenIds.get(token));
}

/** The export's defaults (web.json "defaults", written from keras_music/defaults.py), else the sampler's. */
function defaults() {
  const shipped = (page.site && page.site.defaults) || {};
  const pick = (name, fallback) => (typeof shipped[name] === 'number' ? shipped[name] : fallback);
  return {temperature: pick('temperature', DEFAULTS.temperature), topK: pick('top_k', DEFAULTS.topK),
          topP: pick('top_p', DEFAULTS.topP), length: pick('length', DEFAULTS.length),
          minLength: pick('min_length', DEFAULTS.minLength), tempo: pick('tempo', DEFAULTS.tempo)};
}

/** Whether the model reads control tokens (a run trained with data.controls). */
function hasControls() {
  return page.vocabulary.tokens.some((token) => /^(key|density|poly):/.test(token));
}

/**
 * The controls of a request (export/README.md, "One piece"): the key token put right after <piece> (replacing one
 * there) and the semitones the output moves by, the bar schedules checked. Throws naming a bad value.
 */
function steering(primerIdList, {key, density, polyphony}) {
  const asked = [key, density, polyphony].some((value) => value !== undefined && value !== null && value !== '');
  if (asked && !hasControls()) {
    throw new Error('this model has no control tokens (key, density, polyphony): train the run with data.controls=true');
  }
  parseSchedule('density', density);
  parseSchedule('poly', polyphony);
  if (key === undefined || key === null || key === '') return {primerIds: primerIdList, transpose: 0};
  const {token, transpose} = keyRequest(key, page.vocabulary.tokens);
  const rest = primerIdList.slice(1);
  if (rest.length && page.vocabulary.tokens[rest[0]].startsWith('key:')) rest.shift();
  return {primerIds: [primerIdList[0], page.tokenIds.get(token), ...rest], transpose};
}

function transposed(notes, semitones) {
  return semitones ? notes.map((note) => ({...note, pitch: note.pitch + semitones})) : notes;
}

/** Samples a piece; resolves to the sampled token ids (primer excluded). Unset settings take the defaults. */
async function generate({seed, length, minLength, temperature, topK, topP, keepGoing = false, primer = null,
  maxTokens = null, key = null, density = null, polyphony = null} = {}) {
  const fallback = defaults();
  const settings = {length: length ?? fallback.length, minLength: minLength ?? fallback.minLength,
                    temperature: temperature ?? fallback.temperature, topK: topK ?? fallback.topK,
                    topP: topP ?? fallback.topP, keepGoing};
  validateSettings(settings);
  const usedSeed = seed === undefined || seed === null || seed === '' ? randomSeed() : seed;
  toSeed(usedSeed);  // a bad seed fails here, before any work
  const steered = steering(primerIds(primer), {key, density, polyphony});
  const primerIdList = steered.primerIds;
  const controls = {key, density, polyphony, transpose: steered.transpose, timeSignature: timing().time_signature};
  return exclusive(async () => {
    const started = performance.now();
    const result = await sampleTokens(page.model, page.vocabulary, {primerIds: primerIdList, ...settings,
      maxTokens, seed: usedSeed, now: () => performance.now(), density, polyphony,
      timeSignature: timing().time_signature});
    const tokens = result.ids.map((id) => page.vocabulary.tokens[id]);
    page.last = {seed: String(usedSeed), settings, controls, model: page.model.name, build: page.build,
                 primer: primerIdList, sampled: result.sampled, tokens, events: result.events, stopped: result.stopped,
                 notes: transposed(decode(tokens, page.vocabulary), steered.transpose), stepMs: result.stepMs,
                 generateMs: performance.now() - started};
    return result.sampled;
  });
}

function plainNotes(notes) {
  return notes.map((note) => [Number(note.onset), Number(note.duration), note.pitch]);
}

function timing() {
  const fallback = {tempo: defaults().tempo, time_signature: [4, 4], program: 0};
  return {...fallback, ...(page.site.timing || {})};
}

function midiOf(notes, tempo) {
  const {time_signature: timeSignature, program} = timing();
  return midiBytes(notes, tempo, program, timeSignature);
}

function readForm() {
  const number = (id) => Number($(id).value);
  const seedText = $('seed').value.trim();
  return {
    seed: seedText === '' ? undefined : seedText,
    length: number('length'), minLength: number('min-length'), temperature: number('temperature'),
    topK: number('top-k'), topP: number('top-p'),
    keepGoing: $('keep-going').checked,
    key: $('key').value || null, density: $('density').value || null, polyphony: $('polyphony').value || null,
  };
}

/** What the Generate button does: sample, show the tokens, draw the roll, play, offer the MIDI file. */
async function compose(options = readForm()) {
  mark('composeStart');
  setStatus('generating', 'generating on this device ...');
  try {
    await generate(options);
    mark('generated');
    const piece = page.last;
    const tempo = Number($('tempo').value) || timing().tempo;
    piece.tempo = tempo;
    $('seed-used').textContent = piece.seed;
    $('tokens').textContent = piece.tokens.join(' ');
    const midi = midiOf(piece.notes, tempo);
    if (page.downloadUrl) URL.revokeObjectURL(page.downloadUrl);
    page.downloadUrl = URL.createObjectURL(new Blob([midi], {type: 'audio/midi'}));
    const link = $('download-midi');
    link.href = page.downloadUrl;
    link.download = `keras_music-seed-${piece.seed}.mid`;
    link.hidden = false;
    drawPianoRoll($('roll'), piece.notes, timing().time_signature[0] * 4 / timing().time_signature[1]);
    const played = await page.synth.play(piece.notes, tempo);
    piece.firstNoteAt = played.firstNoteAt;
    piece.seconds = played.seconds;
    marks.firstNote = played.firstNoteAt;
    animate(piece);
    const perStep = piece.stepMs.length ? piece.generateMs / piece.stepMs.length : 0;
    setStatus('done', `${piece.events} events (${piece.sampled.length} tokens), ${piece.notes.length} notes ` +
              `(${piece.stopped ? 'ended at <piece>' : 'reached the length'}); generated in ` +
              `${piece.generateMs.toFixed(0)} ms (${perStep.toFixed(2)} ms a step), ${played.seconds.toFixed(1)} s of music`);
    return piece;
  } catch (error) {
    setStatus('error', `error: ${error.message}`);
    throw error;
  }
}

function animate(piece) {
  const beats = timing().time_signature[0] * 4 / timing().time_signature[1];
  const frame = () => {
    if (page.last !== piece) return;
    const position = page.synth.position();
    drawPianoRoll($('roll'), piece.notes, beats, position);
    if (position !== null && position * page.synth.secondsPerQuarter < piece.seconds) requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}

/** Per-step times (ms) over `steps` sampled tokens (whatever their events), the primer's steps included. */
async function benchmark({steps = 400, seed = 0} = {}) {
  await generate({seed, length: DEFAULTS.maxLength, maxTokens: steps, temperature: 1, keepGoing: true});
  const stepMs = page.last.stepMs;
  return {stepMs, model: page.model.name, build: page.build, crossOriginIsolated: self.crossOriginIsolated};
}

function describeModels() {
  const select = $('model');
  select.replaceChildren(...page.site.models.map((model) => {
    const option = document.createElement('option');
    option.value = model.name;
    option.textContent = `${model.name} (${model.quantization}, ${(model.bytes / 1024).toFixed(0)} KiB)`;
    return option;
  }));
}

/** The key, density and polyphony selects, shown only for a model that reads control tokens. */
function describeControls() {
  $('controls').hidden = !hasControls();
  if (!hasControls()) return;
  const keys = [['', 'any']];
  for (const mode of ['major', 'minor']) {
    for (const name of PITCH_NAMES) {
      const label = `${name.replace('-', 'b')} ${mode}`;
      try {
        keyRequest(label, page.vocabulary.tokens);
        keys.push([label, label]);
      } catch (error) {
        // a key this vocabulary cannot ask for
      }
    }
  }
  $('key').replaceChildren(...keys.map(([value, text]) => new Option(text, value)));
}

async function start() {
  mark('start');
  setStatus('loading', 'loading the model and the LiteRT.js runtime ...');
  const params = new URLSearchParams(location.search);
  page.site = await fetchJson('web.json');
  page.vocabulary = await fetchJson(page.site.vocab);
  page.tokenIds = new Map(page.vocabulary.tokens.map((token, id) => [token, id]));
  describeModels();
  const timingDefaults = timing();
  $('tempo').value = timingDefaults.tempo;
  const settingDefaults = defaults();
  for (const [id, value] of [['length', settingDefaults.length], ['min-length', settingDefaults.minLength],
    ['temperature', settingDefaults.temperature], ['top-k', settingDefaults.topK], ['top-p', settingDefaults.topP]]) {
    $(id).value = value;
  }
  $('length').max = (page.site.defaults && page.site.defaults.max_length) || DEFAULTS.maxLength;
  describeControls();
  const notes = [];
  page.build = params.get('build') === 'threaded' ? 'threaded' : 'default';
  if (page.build === 'threaded' && !self.crossOriginIsolated) {
    notes.push('the threaded build needs cross-origin isolation (COOP/COEP headers); using the default build');
    page.build = 'default';
  }
  try {
    await loadLiteRt(WASM_DIRECTORY, {threads: page.build === 'threaded'});
  } catch (error) {
    if (page.build !== 'threaded') throw error;
    // e.g. a browser without relaxed SIMD, which LiteRT.js's threaded build requires.
    notes.push(`the threaded build did not load (${error.message}); using the default build`);
    page.build = 'default';
    await loadLiteRt(WASM_DIRECTORY, {threads: false});
  }
  mark('runtimeLoaded');
  const loaded = await loadModel(params.get('model') || page.site.default_model);
  mark('ready');
  const info = {run: page.site.run, model: loaded.model, build: page.build, crossOriginIsolated: self.crossOriginIsolated,
                vocabularySize: page.vocabulary.tokens.length, stateShape: page.model.stateShape,
                runtime: page.site.runtime, notes, readyMs: marks.ready, modelLoadMs: loaded.loadMs,
                warmupMs: loaded.warmupMs};
  $('runtime').textContent = `LiteRT.js ${page.site.runtime.version}, ${page.build} build` +
    (self.crossOriginIsolated ? ' (cross-origin isolated)' : '') + `; ready in ${marks.ready.toFixed(0)} ms` +
    (notes.length ? `; note: ${notes.join('; ')}` : '');
  $('run-name').textContent = page.site.run;
  setStatus('ready', 'ready: press Generate');
  return info;
}

const ready = start().catch((error) => {
  setStatus('error', `error: ${error.message}`);
  throw error;
});

$('generate').addEventListener('click', () => compose().catch(() => {}));
$('stop').addEventListener('click', () => page.synth.stop());
$('model').addEventListener('change', (event) => {
  setStatus('loading', `loading ${event.target.value} ...`);
  loadModel(event.target.value).then(
    (loaded) => setStatus('ready', `ready: ${loaded.model} loaded in ${loaded.loadMs.toFixed(0)} ms`),
    (error) => setStatus('error', `error: ${error.message}`));
});

window.kerasMusic = {
  ready,
  generate: (options) => ready.then(() => generate({...options, maxTokens: null})),
  compose: (options) => ready.then(() => compose(options)),
  benchmark: (options) => ready.then(() => benchmark(options)),
  loadModel: (name) => ready.then(() => loadModel(name)),
  decode: (tokens) => plainNotes(decode(tokens, page.vocabulary)),
  midi: (tokens, tempo) => midiOf(decode(tokens, page.vocabulary), tempo ?? timing().tempo),
  rng: (seed) => new SplitMix64(seed),
  audioClock: () => page.synth.context && {state: page.synth.context.state, time: page.synth.context.currentTime},
  get last() {
    return page.last && {...page.last, notes: plainNotes(page.last.notes)};
  },
  marks,
};
