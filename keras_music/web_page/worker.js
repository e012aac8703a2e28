// Live play's generator, off the page's thread: LiteRT.js and the portable sampler in a Worker.
// A *classic* worker: LiteRT.js's loader (@litertjs/wasm-utils) runs the WebAssembly build's glue with
// importScripts, which module workers do not have. It loads the default build (litert_wasm_internal,
// relaxed SIMD) or, without relaxed SIMD, the compat build; LiteRT.js picks between them.
//
// Messages in:  {type: 'load', base, model, vocabulary}
//               {type: 'generate', id, primerIds, seed, length, minLength, temperature, topK, topP,
//                untilQuarters, density, timeSignature}   (primerIds hold the key token asked for, if any;
//                density: a bar schedule or null; bars of timeSignature counted from the primer's start)
// Messages out: {type: 'loaded', loadMs, warmupMs, stateShape, build}
//               {type: 'answer', id, sampled, events, stopped, fed, stepMs, generateMs, queuedMs}
//               {type: 'error', id, message}
/* eslint-env worker */
'use strict';

const state = {core: null, sampler: null, model: null, vocabulary: null, queue: Promise.resolve()};

/** LiteRT.js's core module. It imports '@litertjs/wasm-utils' by name and workers have no import maps, so the
 * worker imports the same text with that name replaced by the file's address (a Blob URL, same origin). */
async function loadCore(base) {
  const coreUrl = new URL('litert/core/index.js', base).href;
  const utilsUrl = new URL('litert/wasm-utils/index.js', base).href;
  const response = await fetch(coreUrl);
  if (!response.ok) throw new Error(`${coreUrl}: HTTP ${response.status}`);
  const text = (await response.text()).replace(/from\s*["']@litertjs\/wasm-utils["']/g,
    `from ${JSON.stringify(utilsUrl)}`);
  const blobUrl = URL.createObjectURL(new Blob([text], {type: 'text/javascript'}));
  try {
    return await import(blobUrl);
  } finally {
    URL.revokeObjectURL(blobUrl);
  }
}

/** The `step` signature of a compiled .tflite, as app.js's StepModel. */
class StepModel {
  constructor(core, compiled, vocabularySize) {
    this.Tensor = core.Tensor;
    this.compiled = compiled;
    this.runner = compiled.signatures.step;
    if (!this.runner) throw new Error(`the model has no "step" signature (it has ${Object.keys(compiled.signatures)})`);
    const inputs = Object.fromEntries(this.runner.getInputDetails().map((d) => [d.name, d]));
    const outputs = Object.fromEntries(this.runner.getOutputDetails().map((d) => [d.name, d]));
    if (!inputs.token || !inputs.state || !outputs.probabilities || !outputs.next_state) {
      throw new Error('step must take token, state and return probabilities, next_state');
    }
    this.stateShape = Array.from(inputs.state.shape);
    const predicted = outputs.probabilities.shape[outputs.probabilities.shape.length - 1];
    if (predicted !== vocabularySize) throw new Error(`the model predicts ${predicted} tokens, vocab.json has ${vocabularySize}`);
  }

  initialState() {
    return new this.Tensor(new Float32Array(this.stateShape.reduce((a, b) => a * b, 1)), this.stateShape);
  }

  async step(token, stateTensor) {
    const tokenTensor = new this.Tensor(Int32Array.of(token), [1]);
    const out = await this.runner.run({token: tokenTensor, state: stateTensor});
    tokenTensor.delete();
    stateTensor.delete();
    const probabilities = out.probabilities.toTypedArray().slice();
    out.probabilities.delete();
    return {probabilities, state: out.next_state};
  }

  release(stateTensor) {
    stateTensor.delete();
  }
}

async function load({base, model, vocabulary}) {
  const started = performance.now();
  state.vocabulary = vocabulary;
  state.sampler = await import(new URL('sampler.js', base).href);
  state.core = await loadCore(base);
  const wasm = new URL('litert/wasm/', base).href;
  // The build's glue finds its .wasm beside the script that loaded it, which in a worker is this file, not
  // litert/wasm/: LiteRT.js's loader hands self.Module to the glue, so its locateFile points there.
  self.Module = {locateFile: (file) => wasm + file};
  await state.core.loadLiteRt(wasm, {threads: false});
  const compiled = await state.core.loadAndCompile(new URL(model, base).href, {accelerator: 'wasm'});
  state.model = new StepModel(state.core, compiled, vocabulary.tokens.length);
  const warmed = performance.now();
  state.model.release((await state.model.step(state.sampler.BOUNDARY, state.model.initialState())).state);
  return {type: 'loaded', loadMs: performance.now() - started, warmupMs: performance.now() - warmed,
          stateShape: state.model.stateShape, build: 'default'};
}

/** A stop test for the answer rule: true once the sampled events last `quarters` quarter notes. */
function lengthReached(vocabulary, quarters) {
  const kinds = vocabulary.grammar.kinds;
  const step = Number(vocabulary.classic_step ?? 0.5);
  let total = 0;
  return (id) => {
    if (kinds[id] === 'dur') {
      const [a, b = '1'] = vocabulary.tokens[id].slice(4).split('/');
      total += Number(a) / Number(b);
    } else if (kinds[id] === 'event') {
      total += step;
    } else {
      return false;
    }
    return total >= quarters - 1e-9;
  };
}

async function generate(message, posted) {
  const {id, primerIds, seed, length, minLength, temperature, topK, topP, untilQuarters, density = null,
    key = null, timeSignature = [4, 4]} = message;
  const started = performance.now();
  const settings = {length, minLength, temperature, topK, topP, keepGoing: false};
  state.sampler.validateSettings(settings);
  // The key token and the density schedule are fed at the bar lines by the sampler's bar clock (it refuses a model
  // without controls).
  const result = await state.sampler.generate(state.model, state.vocabulary, {
    primerIds, ...settings, seed, now: () => performance.now(), density, key, timeSignature,
    until: untilQuarters ? lengthReached(state.vocabulary, untilQuarters) : null});
  return {type: 'answer', id, sampled: result.sampled, events: result.events, stopped: result.stopped, fed: result.fed,
          stepMs: result.stepMs, generateMs: performance.now() - started, queuedMs: started - posted};
}

self.onmessage = (event) => {
  const message = event.data;
  const posted = performance.now();
  state.queue = state.queue.then(async () => {
    try {
      const reply = message.type === 'load' ? await load(message) : await generate(message, posted);
      self.postMessage(reply);
    } catch (error) {
      self.postMessage({type: 'error', id: message.id, message: String(error && error.message || error)});
    }
  });
};
