// The page: loads LiteRT.js and a .tflite step model, generates on this device, plays, draws and
// offers the piece as MIDI; live play (live.js, worker.js) answers what a player plays. window.kerasMusic is the
// same machinery for scripts and tests.

import {loadLiteRt, loadAndCompile, Tensor} from './litert/core/index.js';
import {BINS, BOUNDARY, DEFAULTS, LEVELS, PITCH_NAMES, SplitMix64, generate as sampleTokens, hasControls as readsControls, keyRequest, randomSeed, steer, toSeed, validateSettings} from './sampler.js';
import {decode, midiBytes} from './music.js';
import {Synth, drawPianoRoll} from './player.js';
import {Live} from './live.js';

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
          minLength: pick('min_length', DEFAULTS.minLength), tempo: pick('tempo', DEFAULTS.tempo),
          keyGuidance: pick('key_guidance', DEFAULTS.keyGuidance), keyPrior: pick('key_prior', DEFAULTS.keyPrior)};
}

/** Whether the model reads control tokens (a run trained with data.controls). */
function hasControls() {
  return readsControls(page.vocabulary.tokens);
}

/**
 * The controls of a request (export/README.md, "One piece"): the key token put right after <piece> (replacing one
 * there) and the semitones the output moves by, the bar schedules checked (sampler.js's steer). Throws naming a
 * bad value.
 */
function steering(primerIdList, {key, density, polyphony}) {
  return steer(primerIdList, page.vocabulary.tokens, {key, density, polyphony});
}

function transposed(notes, semitones) {
  return semitones ? notes.map((note) => ({...note, pitch: note.pitch + semitones})) : notes;
}

/** Samples a piece; resolves to the sampled token ids (primer excluded). Unset settings take the defaults. */
async function generate({seed, length, minLength, temperature, topK, topP, keepGoing = false, primer = null,
  maxTokens = null, key = null, density = null, polyphony = null, keyGuidance = null, keyPrior = null} = {}) {
  const fallback = defaults();
  const settings = {length: length ?? fallback.length, minLength: minLength ?? fallback.minLength,
                    temperature: temperature ?? fallback.temperature, topK: topK ?? fallback.topK,
                    topP: topP ?? fallback.topP, keepGoing};
  validateSettings(settings);
  const usedSeed = seed === undefined || seed === null || seed === '' ? randomSeed() : seed;
  toSeed(usedSeed);  // a bad seed fails here, before any work
  const steered = steering(primerIds(primer), {key, density, polyphony});
  const primerIdList = steered.primerIds;
  const guidance = keyGuidance ?? fallback.keyGuidance;
  const prior = keyPrior ?? fallback.keyPrior;
  const controls = {key, density, polyphony, transpose: steered.transpose, timeSignature: timing().time_signature,
                    keyGuidance: steered.keyToken ? guidance : 0, keyPrior: steered.keyToken ? prior : 0};
  return exclusive(async () => {
    const started = performance.now();
    const result = await sampleTokens(page.model, page.vocabulary, {primerIds: primerIdList, ...settings,
      maxTokens, seed: usedSeed, now: () => performance.now(), density, polyphony, key: steered.keyToken,
      keyGuidance: guidance, keyPrior: prior,
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

// The onsets a bar has in each density bin (export/README.md, "Control tokens"), for the selects' labels.
const DENSITY_ONSETS = ['0-2', '3-4', '5-6', '7-8', '9-11', '12-15', '16 or more'];
const POLY_NOTES = ['below 1.5', '1.5-2.5', '2.5-3.5', '3.5-4.5', '4.5 or more'];

/** [value, label] choices of a bar control: any, the named levels, then every bin the vocabulary has a token for. */
function levelChoices(kind) {
  const named = Object.entries(LEVELS[kind]).map(([name, bin]) => [name, `${name} (${bin})`]);
  const bins = [];
  for (let bin = 0; bin < BINS[kind]; bin++) {
    if (!page.tokenIds.has(`${kind}:${bin}`)) continue;
    bins.push([String(bin), kind === 'density' ? `${bin}: ${DENSITY_ONSETS[bin]} onsets a bar`
      : `${bin}: ${POLY_NOTES[bin]} notes an onset`]);
  }
  return [['', 'any'], ...named, ...bins];
}

/** [value, label] choices of the key: any, then every key this vocabulary can ask for. */
function keyChoices() {
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
  return keys;
}

const fill = (select, choices) => select.replaceChildren(...choices.map(([value, text]) => new Option(text, value)));

/**
 * The key, density and polyphony selects, shown only for a model that reads control tokens; live play's Key and
 * Density selects offer the same choices then, and otherwise stay disabled, saying why.
 */
function describeControls() {
  const steerable = hasControls();
  $('controls').hidden = !steerable;
  for (const [id, what] of [['control-key', 'the key of every answer (any: the model\'s choice)'],
    ['control-density', 'onsets per bar, asked for at each bar of every answer (any: the model\'s choice)']]) {
    const select = $(id);
    select.disabled = !steerable;
    select.title = steerable ? what : 'this model was trained without control tokens (key, density): a run trained ' +
      'with data.controls=true can be steered';
    select.closest('label').title = select.title;
  }
  if (!steerable) return;
  fill($('key'), keyChoices());
  fill($('density'), levelChoices('density'));
  fill($('polyphony'), levelChoices('poly'));
  fill($('control-key'), keyChoices());
  fill($('control-density'), levelChoices('density'));
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

// ----------------------------------------------------------------------------- live play

const KEYS = 'awsedftgyhujkolp;';  // computer keys from C4 up, chromatic (piano layout)
const KEYBOARD_LOW = 60;
const KEYBOARD_HIGH = 83;

function liveSettings() {
  const form = readForm();
  const number = (id) => Number($(id).value);
  return {tempo: Number($('tempo').value) || timing().tempo, seed: form.seed, temperature: form.temperature,
          topK: form.topK, topP: form.topP, mode: $('phrase-mode').value, silenceBeats: number('silence-beats'),
          phraseBars: number('phrase-bars'), answerBars: number('answer-bars'), click: $('click').checked,
          synth: $('synth-on').checked, echo: true,
          // Steering (a model trained with control tokens; the selects are disabled, so empty, otherwise).
          controls: {key: $('control-key').value || null, density: $('control-density').value || null}};
}

/** Generation on the page's own thread, for a browser where the worker cannot start (the worker's reply shape). */
async function generateHere(message) {
  const {id, primerIds, seed, length, minLength, temperature, topK, topP, density, key = null, timeSignature} = message;
  return exclusive(async () => {
    const started = performance.now();
    const result = await sampleTokens(page.model, page.vocabulary, {primerIds, seed, length, minLength, temperature,
      topK, topP, keepGoing: false, now: () => performance.now(), density, key, timeSignature});
    return {type: 'answer', id, sampled: result.sampled, events: result.events, stopped: result.stopped,
            fed: result.fed, stepMs: result.stepMs, generateMs: performance.now() - started, queuedMs: 0};
  });
}

function setLiveStatus(state, text) {
  $('live').dataset.state = state;
  $('live-status').textContent = text;
}

function showMidi(described) {
  $('midi-status').textContent = described.message || '';
  $('live').dataset.midi = described.status;
  for (const [id, ports, none] of [['midi-input', described.inputs, '(none)'],
    ['midi-output', described.outputs, '(none: the built-in synth only)']]) {
    const select = $(id);
    const chosen = id === 'midi-input' ? described.input : described.output;
    select.replaceChildren(new Option(none, ''), ...ports.map((port) => new Option(port.name, port.id)));
    select.value = chosen || '';
  }
}

function buildKeyboard(live) {
  const keyboard = $('keyboard');
  const down = new Set();
  const press = (pitch, on) => {
    if (on === down.has(pitch)) return;
    if (on) down.add(pitch); else down.delete(pitch);
    keyboard.querySelector(`[data-pitch="${pitch}"]`)?.classList.toggle('down', on);
    if (on) live.noteOn(pitch); else live.noteOff(pitch);
  };
  for (let pitch = KEYBOARD_LOW; pitch <= KEYBOARD_HIGH; pitch++) {
    const key = document.createElement('button');
    key.type = 'button';
    key.dataset.pitch = pitch;
    key.className = [1, 3, 6, 8, 10].includes(pitch % 12) ? 'black' : 'white';
    key.title = `MIDI ${pitch}` + (KEYS[pitch - KEYBOARD_LOW] ? ` (key ${KEYS[pitch - KEYBOARD_LOW]})` : '');
    key.addEventListener('pointerdown', (event) => {
      key.setPointerCapture(event.pointerId);
      press(pitch, true);
    });
    for (const type of ['pointerup', 'pointercancel']) key.addEventListener(type, () => press(pitch, false));
    keyboard.append(key);
  }
  const fromKey = (event) => {
    if (event.target.closest && event.target.closest('input, select, textarea')) return null;
    const index = KEYS.indexOf(event.key.toLowerCase());
    return index < 0 || event.ctrlKey || event.metaKey || event.altKey ? null : KEYBOARD_LOW + index;
  };
  document.addEventListener('keydown', (event) => {
    const pitch = fromKey(event);
    if (pitch !== null && !event.repeat) press(pitch, true);
  });
  document.addEventListener('keyup', (event) => {
    const pitch = fromKey(event);
    if (pitch !== null) press(pitch, false);
  });
}

async function startLive(info) {
  const entry = page.site.models.find((model) => model.name === info.model);
  const live = new Live({site: page.site, vocabulary: page.vocabulary, synth: page.synth, modelFile: entry.file,
                         mainThread: generateHere, onStatus: setLiveStatus});
  page.live = live;
  buildKeyboard(live);
  live.onMidiChange = showMidi;
  // The roll shows the last phrase (as encoded) and its answer, from the phrase's bar line.
  live.onAnswer = (turn, originBeat) => {
    const grid = live.encoding().grid;
    const offset = turn.beat - originBeat;
    const notes = [...turn.phraseNotes.map(([on, off, pitch]) => ({onset: on / grid, duration: (off - on) / grid, pitch})),
                   ...turn.notes.map(([onset, duration, pitch]) => ({onset: onset + offset, duration, pitch}))];
    drawPianoRoll($('roll'), notes.filter((note) => note.onset >= 0), timing().time_signature[0] * 4 /
                  timing().time_signature[1]);
  };
  $('live-start').addEventListener('click', () => {
    live.start(liveSettings()).catch((error) => setLiveStatus('error', `error: ${error.message}`));
  });
  $('live-stop').addEventListener('click', () => live.stop());
  $('midi-input').addEventListener('change', (event) => showMidi(live.selectInput(event.target.value)));
  $('midi-output').addEventListener('change', (event) => showMidi(live.selectOutput(event.target.value)));
  $('download-session').addEventListener('click', () => {
    const url = URL.createObjectURL(new Blob([live.sessionMidi()], {type: 'audio/midi'}));
    const link = document.createElement('a');
    link.href = url;
    link.download = 'keras_music-session.mid';
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
  document.addEventListener('dragover', (event) => event.preventDefault());
  document.addEventListener('drop', (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (!file) return;
    (live.running ? Promise.resolve() : live.start(liveSettings())).then(() => file.arrayBuffer())
      .then((bytes) => live.file(bytes)).then(
      (primed) => setLiveStatus('waiting', `${file.name}: ${primed.notes} notes (${primed.bars} bars) prime the answer`),
      (error) => setLiveStatus('error', `${file.name}: ${error.message}`));
  });
  const midi = await live.requestMidi();
  if (midi.inputs.length) live.selectInput(midi.inputs[0].id);
  showMidi(live.describeMidi());
  const where = await live.ready;
  const notes = [];
  if (where.where !== 'worker') notes.push(`the worker did not start (${where.reason}): generation shares this page's ` +
                                          'thread, so the timing may suffer');
  else notes.push(`generating in a Worker (LiteRT.js ${page.site.runtime.version}, single-threaded default build)`);
  if (!self.crossOriginIsolated) notes.push('not cross-origin isolated: that is fine here (the worker needs no threads)');
  setLiveStatus('ready', `ready: press Start listening, then play (${notes.join('; ')})`);
  return {...where, notes, midi: live.describeMidi()};
}

const liveReady = ready.then(startLive);
liveReady.catch((error) => setLiveStatus('error', `live play is unavailable: ${error.message}`));

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
  live: {
    ready: liveReady,
    start: (settings) => liveReady.then(() => page.live.start({...liveSettings(), ...settings})),
    stop: () => page.live && page.live.stop(),
    noteOn: (pitch, velocity) => page.live.noteOn(pitch, velocity),
    noteOff: (pitch) => page.live.noteOff(pitch),
    file: (bytes) => liveReady.then(() => (page.live.running ? null : page.live.start(liveSettings())))
      .then(() => page.live.file(new Uint8Array(bytes))),
    selectInput: (id) => {
      showMidi(page.live.selectInput(id));
      return page.live.describeMidi();
    },
    selectOutput: (id) => {
      showMidi(page.live.selectOutput(id));
      return page.live.describeMidi();
    },
    sessionMidi: () => Array.from(page.live.sessionMidi()),
    get state() {
      return page.live ? page.live.state : 'loading';
    },
    get turns() {
      return page.live ? page.live.turns.map((turn) => ({...turn})) : [];
    },
    get session() {
      const live = page.live;
      return live && {origin: live.origin, secondsPerQuarter: live.spq, seed: String(live.seed), late: live.late,
                      settings: {...live.settings}, synth: live.sound.log.slice(), longTasks: live.longTasks.slice(),
                      longTasksSupported: live.longTasksSupported, worker: live.workerInfo,
                      answerEvents: live.answerEvents(), answerQuarters: live.answerQuarters(), step: live.step(),
                      midi: live.describeMidi()};
    },
  },
};
