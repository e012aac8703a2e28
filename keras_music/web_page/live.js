// Live play: call and response. The player plays (Web MIDI, the on-screen keyboard, a dropped MIDI file)
// over a metronome; when the phrase ends the model answers for N bars on the beat after it, then listens
// again. The primer is encoded as keras_music encodes (encoder.js); the model runs in a Worker (worker.js);
// every sound and MIDI message is timed on the Web Audio clock. export/README.md, "Live play", is the contract.

import {cutAnswer, phrasePrimer, quantise, vocabularyShape, GRID} from './encoder.js';
import {decode, readMidi, sessionMidiBytes} from './music.js';
import {LiveSound} from './player.js';
import {BOUNDARY, randomSeed, steer, toSeed} from './sampler.js';

const TICK_MS = 20;           // how often the scheduler looks at the audio clock (it schedules ahead of it)
const CLICK_AHEAD = 0.25;     // s of metronome clicks scheduled ahead
const LEAD = 0.1;             // s between a phrase's confirmed end and the earliest beat its answer may take
const MIN_LEAD = 0.02;        // s: an answer scheduled closer to now than this is late
const FILE_LEAD = 0.3;        // s: a dropped file's answer waits at least this long
const FILE_BARS = 8;          // a dropped file primes with at most its last 8 bars
const VELOCITY = 80;

export const LIVE_DEFAULTS = Object.freeze({mode: 'silence', silenceBeats: 1, phraseBars: 2, lookaheadBeats: 1,
  answerBars: 2, click: true, echo: true, synth: true});

export class Live {
  /**
   * site, vocabulary: web.json and vocab.json; synth: the page's Synth (its AudioContext is shared);
   * modelFile: the .tflite the worker loads; mainThread(message): generation on the page's own thread,
   * used when the worker cannot start; onStatus(state, text).
   */
  constructor({site, vocabulary, synth, modelFile, mainThread, onStatus = () => {}}) {
    this.site = site;
    this.vocabulary = vocabulary;
    this.tokenIds = new Map(vocabulary.tokens.map((token, id) => [token, id]));
    this.shape = vocabularyShape(vocabulary, this.encoding().grid);
    this.sound = new LiveSound(synth);
    this.mainThread = mainThread;
    this.onStatus = onStatus;
    this.settings = {...LIVE_DEFAULTS};
    this.running = false;
    this.state = 'stopped';
    this.turns = [];
    this.phrases = [];
    this.playerNotes = [];
    this.answerNotes = [];
    this.markers = [];
    this.pending = null;
    this.phrase = null;
    this.requests = 0;
    this.late = 0;
    this.notes = [];
    this.midi = {access: null, input: null, output: null, status: 'not asked', sent: 0};
    this.longTasks = [];
    this.observeLongTasks();
    this.worker = null;
    this.workerInfo = null;
    this.ready = this.startWorker(modelFile);
  }

  /** The run's encoding (web.json "encoding"): grid ticks per quarter, max_duration, key normalisation. */
  encoding() {
    const shipped = this.site.encoding || {};
    return {grid: shipped.grid || GRID, maxDuration: shipped.max_duration || 8,
            normalizeKey: shipped.normalize_key ?? true};
  }

  timing() {
    const timing = this.site.timing || {};
    const [numerator, denominator] = timing.time_signature || [4, 4];
    return {tempo: timing.tempo || 120, quartersPerBar: (numerator * 4) / denominator,
            timeSignature: [numerator, denominator], program: timing.program || 0};
  }

  // ------------------------------------------------------------------------- the generator

  async startWorker(modelFile) {
    const base = new URL('./', location.href).href;
    try {
      const worker = new Worker('worker.js');
      const loaded = new Promise((resolve, reject) => {
        worker.onmessage = (event) => {
          const message = event.data;
          if (message.type === 'loaded') resolve(message);
          else if (message.type === 'error' && message.id === undefined) reject(new Error(message.message));
          else this.received(message);
        };
        worker.onerror = (event) => reject(new Error(event.message || 'the worker failed to start'));
      });
      worker.postMessage({type: 'load', base, model: modelFile, vocabulary: this.vocabulary});
      this.workerInfo = await loaded;
      worker.onerror = (event) => this.setStatus('error', `the generator's worker failed: ${event.message}`);
      this.worker = worker;
      this.workerInfo.where = 'worker';
    } catch (error) {
      // e.g. a browser without dynamic import() in classic workers: generate on this thread instead.
      this.workerInfo = {where: 'main thread', reason: String(error && error.message || error)};
    }
    return this.workerInfo;
  }

  post(message) {
    if (this.worker) {
      this.worker.postMessage(message);
    } else {
      this.mainThread(message).then((reply) => this.received(reply),
        (error) => this.received({type: 'error', id: message.id, message: String(error.message || error)}));
    }
  }

  received(message) {
    const pending = this.pending;
    if (!pending || pending.id !== message.id) return;  // a phrase that went on: its answer is not needed
    pending.resultAt = this.sound.now();
    if (message.type === 'error') {
      this.pending = null;
      this.setStatus('error', `generation failed: ${message.message}`);
      this.state = this.running ? 'listening' : 'stopped';
      return;
    }
    pending.result = message;
    if (pending.confirmed) this.play(pending);
  }

  // ------------------------------------------------------------------------- the session

  /**
   * Starts the metronome and listening with `settings` (LIVE_DEFAULTS plus temperature, topK, topP, seed, tempo and
   * controls {key, density}: a key name, a density schedule, null for the model's choice).
   */
  async start(settings = {}) {
    this.stop();
    await this.ready;
    this.settings = {...LIVE_DEFAULTS, temperature: 0.9, topK: 0, topP: 1, tempo: this.timing().tempo, ...settings};
    const {key = null, density = null} = this.settings.controls || {};
    this.settings.controls = {key: key || null, density: density || null};
    const {tempo, seed} = this.settings;
    if (!(tempo >= 20 && tempo <= 400)) throw new Error(`tempo must be in 20..400 bpm, got ${tempo}`);
    if (!(this.settings.answerBars >= 1)) throw new Error(`answerBars must be >= 1, got ${this.settings.answerBars}`);
    steer([BOUNDARY], this.vocabulary.tokens, this.settings.controls);  // a control the model cannot take fails here
    this.seed = seed === undefined || seed === null || seed === '' ? BigInt(randomSeed()) : toSeed(seed);
    await this.sound.resume();
    this.spq = 60 / tempo;
    this.origin = this.sound.now() + 0.15;  // beat 0
    this.nextClick = 0;
    this.turns = [];
    this.phrases = [];
    this.playerNotes = [];
    this.answerNotes = [];
    this.markers = [];
    this.late = 0;
    this.sound.log = [];
    this.midi.sentLog = [];
    this.longTasks = [];
    this.running = true;
    this.state = 'listening';
    this.sendProgram();
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.setStatus('listening', `listening at ${tempo} bpm: play a phrase`);
    return {origin: this.origin, seed: String(this.seed), where: this.workerInfo.where};
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.running = false;
    this.pending = null;
    this.phrase = null;
    if (this.state !== 'stopped') this.setStatus('stopped', 'stopped');
    this.state = 'stopped';
  }

  setStatus(state, text) {
    this.onStatus(state, text);
  }

  beatAtOrAfter(time) {
    return Math.ceil((time - this.origin) / this.spq - 1e-9);
  }

  beatTime(beat) {
    return this.origin + beat * this.spq;
  }

  /** The quantisation step in ticks: the vocabulary's shortest duration (a sixteenth if it has none). */
  step() {
    const {grid} = this.encoding();
    const shortest = this.shape.durations.length ? this.shape.durations[this.shape.durations.length - 1] : grid / 4;
    return this.settings.stepTicks || shortest;
  }

  answerQuarters() {
    return this.settings.answerBars * this.timing().quartersPerBar;
  }

  /** Events the answer is generated with: the most its bars can hold (the cut then keeps N bars). */
  answerEvents() {
    const {grid} = this.encoding();
    const shortest = this.shape.representation === 'classic'
      ? Number(this.vocabulary.classic_step ?? 0.5) : (this.shape.durations.at(-1) || grid) / grid;
    return Math.max(1, Math.ceil(this.answerQuarters() / shortest - 1e-9));
  }

  // ------------------------------------------------------------------------- input

  /** A note starts at context time `at` (default now). */
  noteOn(pitch, velocity = VELOCITY, at = null) {
    at = at ?? this.sound.now();
    if (this.settings.echo) this.sound.noteOn(pitch);
    const note = {pitch, velocity, on: at, off: null, turn: this.turns.length};
    this.playerNotes.push(note);
    if (!this.running) return;
    if (this.state === 'listening') {
      // The phrase is timed from the bar line at or before its first note.
      const bar = this.timing().quartersPerBar;
      const originBeat = Math.floor(((at - this.origin) / this.spq + 1e-9) / bar) * bar;
      this.phrase = {notes: [], originBeat, first: at};
      this.markers.push([(at - this.origin) / this.spq, `phrase ${this.turns.length + 1}`]);
      this.state = 'phrase';
      this.setStatus('phrase', 'hearing a phrase ...');
    }
    if (this.state === 'phrase' && this.phrase) {
      this.phrase.notes.push(note);
      if (this.pending && !this.pending.confirmed) this.pending = null;  // the phrase goes on
    }
  }

  noteOff(pitch, at = null) {
    at = at ?? this.sound.now();
    if (this.settings.echo) this.sound.noteOff(pitch);
    for (const note of this.playerNotes) {
      if (note.pitch === pitch && note.off === null) note.off = Math.max(at, note.on);
    }
    if (this.state === 'phrase' && this.settings.mode === 'silence' && this.phrase &&
        this.phrase.notes.every((note) => note.off !== null)) {
      // Predict ahead: the primer is known as soon as every key is up; if nothing else is played during
      // the silence it is the phrase, and its answer is ready (or nearly) when the silence is over.
      const end = Math.max(...this.phrase.notes.map((note) => note.off));
      const confirmAt = end + this.settings.silenceBeats * this.spq;
      this.request(this.beatAtOrAfter(confirmAt + LEAD), confirmAt, end);
    }
  }

  /** Raw MIDI bytes from an input: note on/off (any channel); `stamp` is the event's performance.now() time. */
  midiMessage(data, stamp) {
    const [status, pitch, velocity] = data;
    const at = stamp ? this.sound.fromPerformance(stamp) : this.sound.now();
    const type = status & 0xf0;
    if (type === 0x90 && velocity > 0) this.noteOn(pitch, velocity, at);
    else if (type === 0x80 || (type === 0x90 && velocity === 0)) this.noteOff(pitch, at);
  }

  /** A dropped MIDI file: its last bars become the primer; the answer starts on a beat shortly after. */
  async file(bytes) {
    if (!this.running) await this.start(this.settings);
    const notes = readMidi(bytes);
    if (!notes.length) throw new Error('the MIDI file has no notes');
    const bar = this.timing().quartersPerBar;
    const lastEnd = Math.max(...notes.map((note) => note[1]));
    const from = Math.max(0, Math.floor((lastEnd - FILE_BARS * bar) / bar) * bar);
    const kept = notes.filter((note) => note[0] >= from).map(([a, b, p]) => [a - from, b - from, p]);
    const length = Math.ceil((lastEnd - from) / bar - 1e-9) * bar;
    const answerBeat = this.beatAtOrAfter(this.sound.now() + FILE_LEAD);
    const originBeat = answerBeat - length;
    this.pending = null;
    this.phrase = {notes: kept.map(([a, b, p]) => ({pitch: p, velocity: VELOCITY, on: this.beatTime(originBeat) +
      a * this.spq, off: this.beatTime(originBeat) + b * this.spq, turn: this.turns.length, file: true})),
                   originBeat, first: this.beatTime(originBeat)};
    this.playerNotes.push(...this.phrase.notes);
    this.markers.push([originBeat, `phrase ${this.turns.length + 1} (file)`]);
    this.state = 'phrase';
    this.request(answerBeat, this.sound.now(), this.beatTime(originBeat) + lastEnd * this.spq);
    return {notes: kept.length, bars: length / bar};
  }

  // ------------------------------------------------------------------------- phrase -> answer

  /** The primer of the phrase so far, ending at beat `answerBeat`; asks the generator for the answer. */
  request(answerBeat, confirmAt, phraseEnd) {
    const {grid, maxDuration} = this.encoding();
    const step = this.step();
    const origin = this.beatTime(this.phrase.originBeat);
    const answerAt = this.beatTime(answerBeat);
    const endTick = (answerBeat - this.phrase.originBeat) * grid;
    const ticks = (time) => quantise((time - origin) / this.spq, step, grid);
    const notes = this.phrase.notes.map((note) => {
      const on = ticks(note.on);
      const off = note.off === null ? endTick : Math.max(ticks(note.off), on + step);
      return [on, off, note.pitch];
    });
    const {temperature, topK, topP, controls} = this.settings;
    // With a key the model writes in C major / A minor (keys normalised) and its answer is moved by `transpose`
    // into the key: the phrase is moved the other way before it is encoded, so the model reads the player in its
    // own frame (a phrase in E minor reaches it in A minor) and answer and phrase end up in one key.
    const shift = steer([BOUNDARY], this.vocabulary.tokens, controls).transpose;
    const primer = phrasePrimer(notes.map(([on, off, pitch]) => [on, off, pitch - shift]), endTick, this.vocabulary,
                                {grid, maxDuration});
    // Steering as the page's Generate does it (sampler.js): the key token after <piece> and at every bar line, the
    // output transposed, the density schedule fed at the bars (counted from the primer's start) the answer starts a sonority in.
    const steered = steer(primer.tokens.filter((token) => this.tokenIds.has(token)).map((t) => this.tokenIds.get(t)),
                          this.vocabulary.tokens, controls);
    const primerIds = steered.primerIds;
    const turn = this.turns.length;
    const seed = BigInt.asUintN(64, this.seed + BigInt(turn));
    const length = this.answerEvents();
    const id = ++this.requests;
    this.pending = {id, turn, seed: String(seed), answerBeat, originBeat: this.phrase.originBeat, answerAt, confirmAt, phraseEnd,
                    primer: steered.keyToken ? primerIds.map((i) => this.vocabulary.tokens[i]) : primer.tokens,
                    primerIds, dropped: primer.dropped, requestedAt: this.sound.now(), confirmed: false, result: null,
                    length, notes, controls: {...controls, keyToken: steered.keyToken, transpose: steered.transpose}};
    this.post({type: 'generate', id, primerIds, seed: String(seed), length, minLength: length, temperature, topK, topP,
               untilQuarters: this.answerQuarters(), density: controls.density, key: steered.keyToken,
               timeSignature: this.timing().timeSignature});
  }

  tick() {
    if (!this.running) return;
    const now = this.sound.now();
    // The metronome, on the audio clock.
    while (this.beatTime(this.nextClick) < now + CLICK_AHEAD) {
      const at = this.beatTime(this.nextClick);
      if (at >= now && this.settings.click) {
        this.sound.click(at, this.nextClick % this.timing().quartersPerBar === 0, Number(this.settings.click));
      }
      this.nextClick++;
    }
    if (this.state === 'phrase' && this.settings.mode === 'bars' && this.phrase && !this.pending) {
      const bar = this.timing().quartersPerBar;
      const endBeat = this.phrase.originBeat + this.settings.phraseBars * bar;
      const askAt = this.beatTime(endBeat) - this.settings.lookaheadBeats * this.spq;
      if (now >= askAt) this.request(endBeat, askAt, this.beatTime(endBeat));
    }
    const pending = this.pending;
    if (pending && !pending.confirmed && now >= pending.confirmAt) {
      pending.confirmed = true;
      pending.confirmedAt = now;
      this.state = 'waiting';
      if (pending.result) this.play(pending);
      else this.setStatus('waiting', 'the phrase is over; the answer is being generated ...');
    }
    if (this.state === 'answering' && now >= this.answerEnd) {
      this.state = 'listening';
      this.phrase = null;
      const last = this.turns[this.turns.length - 1];
      this.setStatus(last && last.late ? 'late' : 'listening',
        `listening: play a phrase (${this.turns.length} answered, ${this.late} late)` + (last && last.late
          ? `; answer ${last.turn + 1} would have been late by ${last.lateMs.toFixed(0)} ms and started on the next beat`
          : ''));
    }
  }

  /** Schedules an answer on the audio clock (and over MIDI); a late one moves to the next beat it can make. */
  play(pending) {
    this.pending = null;
    const now = this.sound.now();
    const quarters = this.answerQuarters();
    const cut = cutAnswer(pending.result.sampled, this.vocabulary, quarters);
    const tokens = cut.ids.map((id) => this.vocabulary.tokens[id]);
    const {transpose} = pending.controls;
    const notes = decode(tokens, this.vocabulary)
      .map((note) => [Number(note.onset), Number(note.onset) + Number(note.duration), note.pitch + transpose])
      .filter(([onset]) => onset < quarters)
      .map(([onset, end, pitch]) => [onset, Math.min(end, quarters) - onset, pitch]);
    let beat = pending.answerBeat;
    const late = this.beatTime(beat) - now < MIN_LEAD;
    if (late) {
      beat = this.beatAtOrAfter(now + MIN_LEAD);
      this.late++;
    }
    const at = this.beatTime(beat);
    const clock = this.sound.clockPair();  // one conversion for the whole answer: MIDI keeps its rhythm exactly
    for (const [onset, duration, pitch] of notes) {
      const start = at + onset * this.spq;
      if (this.settings.synth) this.sound.schedule(pitch, start, duration * this.spq);
      else this.sound.log.push({pitch, at: start, end: start + duration * this.spq, source: 'answer', silent: true});
      this.sendNote(pitch, start, start + duration * this.spq, clock);
      this.answerNotes.push([(start - this.origin) / this.spq, duration, pitch]);
    }
    this.markers.push([beat, `answer ${pending.turn + 1}`]);
    const result = pending.result;
    // The bar controls fed before the answer's kept ids (a generator that ran past the cut fed more).
    const fed = (result.fed || []).filter((entry) => entry.at < cut.ids.length);
    const turn = {turn: pending.turn, seed: pending.seed, primer: pending.primer, primerIds: pending.primerIds,
                  controls: {...pending.controls, fed},
                  dropped: pending.dropped, phraseNotes: pending.notes, length: pending.length,
                  sampled: result.sampled, ids: cut.ids, tokens, complete: cut.complete, notes,
                  answerBeat: pending.answerBeat, beat, answerAt: at, plannedAt: pending.answerAt, late,
                  lateMs: late ? (now + MIN_LEAD - pending.answerAt) * 1000 : 0, phraseEnd: pending.phraseEnd,
                  confirmAt: pending.confirmAt, requestedAt: pending.requestedAt, resultAt: pending.resultAt,
                  scheduledAt: now, firstNoteAt: notes.length ? at + notes[0][0] * this.spq : null,
                  generateMs: result.generateMs, queuedMs: result.queuedMs, stepMs: result.stepMs,
                  clock: {contextTime: clock.contextTime, performanceTime: clock.performanceTime},
                  where: this.workerInfo.where};
    this.turns.push(turn);
    if (this.onAnswer) this.onAnswer(turn, pending.originBeat);
    this.answerEnd = at + quarters * this.spq;
    this.state = 'answering';
    const spare = (pending.answerAt - pending.resultAt) * 1000;
    this.setStatus(late ? 'late' : 'answering', late
      ? `answer ${turn.turn + 1} would have been late by ${turn.lateMs.toFixed(0)} ms (generated in ` +
        `${result.generateMs.toFixed(0)} ms): it starts on the next beat instead`
      : `answering (${notes.length} notes, ready ${spare.toFixed(0)} ms before its beat)`);
  }

  // ------------------------------------------------------------------------- MIDI

  /** Asks for Web MIDI; resolves to {status, inputs, outputs} and never rejects (no MIDI is a state, not an error). */
  async requestMidi() {
    if (!navigator.requestMIDIAccess) {
      this.midi.status = 'unavailable';
      this.midi.message = 'this browser has no Web MIDI: use the on-screen keyboard or drop a MIDI file';
      return this.describeMidi();
    }
    try {
      this.midi.access = await navigator.requestMIDIAccess({sysex: false});
      this.midi.status = 'granted';
      this.midi.access.onstatechange = () => this.onMidiChange && this.onMidiChange(this.describeMidi());
      const inputs = [...this.midi.access.inputs.values()];
      this.midi.message = inputs.length ? `${inputs.length} MIDI input(s)` :
        'no MIDI device is connected: use the on-screen keyboard or drop a MIDI file';
    } catch (error) {
      this.midi.status = 'refused';
      this.midi.message = `MIDI permission was refused (${error.message || error}): use the on-screen keyboard or ` +
        'drop a MIDI file';
    }
    return this.describeMidi();
  }

  describeMidi() {
    const list = (map) => (map ? [...map.values()].map((port) => ({id: port.id, name: port.name || port.id})) : []);
    const access = this.midi.access;
    return {status: this.midi.status, message: this.midi.message, inputs: list(access && access.inputs),
            outputs: list(access && access.outputs), input: this.midi.input && this.midi.input.id,
            output: this.midi.output && this.midi.output.id};
  }

  selectInput(id) {
    if (this.midi.input) this.midi.input.onmidimessage = null;
    this.midi.input = (id && this.midi.access && this.midi.access.inputs.get(id)) || null;
    if (this.midi.input) {
      this.midi.input.onmidimessage = (event) => this.midiMessage(event.data, event.timeStamp);
    }
    return this.describeMidi();
  }

  selectOutput(id) {
    this.midi.output = (id && this.midi.access && this.midi.access.outputs.get(id)) || null;
    this.sendProgram();
    return this.describeMidi();
  }

  sendProgram() {
    if (this.midi.output) this.midi.output.send([0xc0, this.timing().program & 0x7f]);
  }

  sendNote(pitch, start, end, clock) {
    const output = this.midi.output;
    if (!output) return;
    output.send([0x90, pitch, VELOCITY], this.sound.toPerformance(start, clock));
    output.send([0x80, pitch, 0], this.sound.toPerformance(end, clock));
    this.midi.sent += 2;
  }

  // ------------------------------------------------------------------------- the record

  /** The whole session as MIDI: the player's notes and the answers on two tracks, markers at each turn. */
  sessionMidi() {
    const {timeSignature, program} = this.timing();
    const player = this.playerNotes.filter((note) => note.off !== null)
      .map((note) => [(note.on - this.origin) / this.spq, (note.off - note.on) / this.spq, note.pitch, note.velocity]);
    return sessionMidiBytes({tempo: this.settings.tempo || this.timing().tempo, timeSignature,
                             markers: this.markers.map(([quarters, label]) => [Math.max(0, quarters), label]),
                             tracks: [{name: 'player', channel: 0, program: 0, notes: player},
                                      {name: 'keras_music', channel: 1, program, notes: this.answerNotes}]});
  }

  observeLongTasks() {
    if (typeof PerformanceObserver === 'undefined' ||
        !(PerformanceObserver.supportedEntryTypes || []).includes('longtask')) {
      this.longTasksSupported = false;
      return;
    }
    this.longTasksSupported = true;
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        this.longTasks.push({start: entry.startTime, duration: entry.duration, state: this.state});
      }
    }).observe({type: 'longtask'});
  }
}
