// The studio page: every action goes through the JSON API the README documents (helpers in common.js).
"use strict";
let runs = [];
let piece = null;

const escape = (text) => String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

function rows(group) {
  const body = group.rows.map(([label, value]) => `<tr><th scope="row">${escape(label)}</th><td>${escape(value)}</td></tr>`);
  return body.length ? `<h3>${escape(group.title)}</h3><table class="records">${body.join("")}</table>` : "";
}

function showRun() {
  const run = runs.find((r) => r.name === $("run-select").value);
  if (!run) return;
  const summary = run.summary;
  $("run-summary").innerHTML = summary.lines.map((line) => `<p>${escape(line)}</p>`).join("");
  $("numbers").innerHTML = summary.numbers.map((n) =>
    `<div><span class="value">${escape(n.value)}</span><span class="label">${escape(n.label)}</span></div>`).join("");
  const overlap = summary.overlap;
  $("overlap").innerHTML = overlap ? `<h3>Generated vs held-out at temperature ${overlap.temperature}` +
    ` <span class="note">(overlapping area of each measure's distributions; 1 = alike)</span></h3><table class="bars">` +
    overlap.metrics.map((m) => `<tr title="${escape(m.description)}"><th scope="row">${escape(m.label)}</th>` +
      `<td><span class="bar" style="width:${(100 * m.area).toFixed(0)}%"></span></td><td>${m.area.toFixed(2)}</td></tr>`).join("") +
    "</table>" : "";
  $("run-info").innerHTML = `<p>${escape(run.representation)} representation, ${run.vocabulary_size} tokens, ${run.held_out} held-out pieces</p>` +
    run.details.map(rows).join("") || "<p>No records yet.</p>";
  $("web").innerHTML = run.web_url ? `<a id="web-link" href="${run.web_url}">Open the in-browser version</a>: the same model generating on your device with LiteRT.js.` : "";
  $("curves").hidden = !run.curves_url;
  if (run.curves_url) $("curves").src = run.curves_url;
  // The controls offer what the run's vocabulary has (GET /api/runs): its keys, levels and bins.
  const controls = run.controls;
  $("controls").hidden = !controls;
  $("key").innerHTML = "";
  for (const [value, text] of [["", "any"]].concat((controls ? controls.keys : []).map((k) => [k, k]))) {
    $("key").add(new Option(text, value));
  }
  $("levels").innerHTML = "";
  for (const level of controls ? controls.levels : []) $("levels").append(new Option(level));
  if (controls) {
    const levels = controls.levels.join(", ");
    $("density").title = `onsets per bar: ${levels}, off or a bin 0-${controls.density_bins - 1}, or per bar range: 1-4:low,5-8:high`;
    $("polyphony").title = `notes sounding at each onset: ${levels}, off or a bin 0-${controls.polyphony_bins - 1}, or per bar range: 1-4:low,5-8:high`;
  }
  const options = [["held_out", "opening of a random held-out piece"], ["none", "none"]];
  for (let i = 0; i < run.held_out; i++) options.push([`held_out:${i}`, `held-out piece ${i + 1}`]);
  const uploaded = [...$("primer").options].filter((o) => o.value.startsWith("upload:")).map((o) => [o.value, o.text]);
  $("primer").innerHTML = "";
  for (const [value, text] of options.concat(uploaded)) $("primer").add(new Option(text, value));
}

async function loadDefaults() {
  // The form starts from keras_music/defaults.py, the values every command and the web page use.
  const shown = await api("/api/defaults");
  $("temperature").value = shown.temperature;
  $("length").value = shown.length;
  $("length").max = shown.max_length;
  $("top-k").value = shown.top_k;
  $("top-p").value = shown.top_p;
  $("key-prior").value = shown.key_prior;
}

async function loadRuns() {
  await loadDefaults();
  runs = (await api("/api/runs")).runs;
  for (const run of runs) $("run-select").add(new Option(run.name, run.name));
  showRun();
  const comparisons = (await api("/api/ab/comparisons")).comparisons;
  for (const name of comparisons) $("comparison").add(new Option(name, name));
}

async function upload() {
  const file = $("upload").files[0];
  if (!file) return;
  say($("status"), `uploading ${file.name} ...`);
  try {
    const primer = await api(`/api/primers?filename=${encodeURIComponent(file.name)}`, { method: "POST", body: file });
    const option = new Option(`${file.name} (${primer.notes} notes)`, `upload:${primer.id}`);
    $("primer").add(option);
    $("primer").value = option.value;
    say($("status"), `primer ${file.name} ready`);
  } catch (error) {
    say($("status"), error.message, true);
  }
}

const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));

const sampling = () => ({ temperature: number("temperature"), top_k: number("top-k"), top_p: number("top-p"), seed: number("seed") });

async function generate(event) {
  event.preventDefault();
  const button = $("generate-button");
  button.disabled = true;
  say($("status"), "generating ...");
  const started = performance.now();
  const run = runs.find((r) => r.name === $("run-select").value);
  try {
    piece = await post("/api/generate", {
      run: $("run-select").value, ...sampling(), length: number("length"), primer: $("primer").value,
      ...(run && run.controls ? { key: $("key").value, density: $("density").value.trim(), polyphony: $("polyphony").value.trim(),
        bar_limits: $("bar-limits").checked, key_prior: number("key-prior") } : {}),
    }, { retries: 5, onWait: (why, seconds) => say($("status"), `another piece is being generated; trying again in ${seconds.toFixed(0)} s ...`) });
    say($("infill-status"), "");
    showPiece(started, (seconds) => say($("status"), `${piece.events} events, ${piece.seconds.toFixed(1)} s of audio ` +
      `(seed ${piece.seed}); playable ${seconds} s after Generate`));
  } catch (error) {
    say($("status"), error.message, true);
  } finally {
    button.disabled = false;
  }
}

// The piece in the player; `ready(seconds)` says so once its audio can play, `seconds` after `started`. A piece
// of a run trained with infilling (its vocabulary has <fim_middle>) gets the "Fill bars a-b" form, which fills
// bars of this piece with POST /api/infill; a filled piece says which bars were filled.
function showPiece(started, ready) {
  $("player").src = piece.urls.audio;
  $("player").dataset.seconds = piece.seconds;
  $("roll-png").src = piece.urls.png;
  $("dl-midi").href = piece.urls.midi;
  $("dl-musicxml").href = piece.urls.musicxml;
  $("dl-audio").href = piece.urls.audio;
  $("piece").hidden = false;
  const filled = piece.infill;
  $("piece-filled").hidden = !filled;
  $("piece-filled").textContent = filled ? `bars ${filled.bars[0]}-${filled.bars[1]} filled` +
    (filled.exact ? "" : ` (${filled.filled_duration} of ${filled.duration} quarter notes; the rest is silent)`) : "";
  const run = runs.find((r) => r.name === piece.run);
  $("infill-form").hidden = !(run && run.infill);
  const bars = piece.bars;
  for (const id of ["infill-first", "infill-last"]) {
    if (!(Number($(id).value) >= 1 && Number($(id).value) <= bars)) $(id).value = Math.min(2, Math.max(1, bars));
  }
  $("infill-of").textContent = `of ${bars} bar${bars === 1 ? "" : "s"}`;
  $("player").addEventListener("canplay", () => {
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    $("player").dataset.readyAfter = seconds;
    ready(seconds);
  }, { once: true });
  drawRoll(0);
}

async function fillBars(event) {
  event.preventDefault();
  if (!piece) return;
  const button = $("infill-button");
  button.disabled = true;
  const bars = `${$("infill-first").value.trim()}-${$("infill-last").value.trim()}`;
  say($("infill-status"), `filling bars ${bars} ...`);
  const started = performance.now();
  try {
    const source = piece;
    piece = await post("/api/infill", { run: source.run, piece: `piece:${source.id}`, bars, ...sampling() }, {
      retries: 5, onWait: (why, seconds) => say($("infill-status"), `another piece is being generated; trying again in ${seconds.toFixed(0)} s ...`),
    });
    showPiece(started, (seconds) => say($("infill-status"), `bars ${piece.infill.bars.join("-")} filled with ` +
      `${piece.events} events (seed ${piece.seed}); playable ${seconds} s after Fill`));
  } catch (error) {
    say($("infill-status"), error.message, true);
  } finally {
    button.disabled = false;
  }
}

function drawRoll(seconds) {
  if (!piece) return;
  const canvas = $("roll");
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const pitches = piece.notes.map((n) => n[2]);
  const low = Math.min(...pitches, 60) - 1, high = Math.max(...pitches, 72) + 1;
  const x = (quarters) => (quarters / Math.max(piece.quarters, 1)) * width;
  const y = (pitch) => height - ((pitch - low) / (high - low)) * height;
  context.clearRect(0, 0, width, height);
  // Given notes grey, generated ones blue: a primer's opening, or for a filled piece all but the filled bars.
  const gap = piece.infill ? [piece.infill.onset - piece.start, piece.infill.offset - piece.start] : null;
  const given = (onset) => (gap ? onset < gap[0] || onset >= gap[1] : onset < piece.primer_quarters);
  context.fillStyle = gap ? "#fdf6d8" : "#e3e6ee";
  context.fillRect(gap ? x(gap[0]) : 0, 0, gap ? x(gap[1]) - x(gap[0]) : x(piece.primer_quarters), height);
  const now = (seconds * piece.tempo) / 60;
  for (const [onset, duration, pitch] of piece.notes) {
    const sounding = onset <= now && now < onset + duration;
    context.fillStyle = sounding ? "#e4572e" : given(onset) ? "#777" : "#2b6cb0";
    context.fillRect(x(onset), y(pitch) - 2, Math.max(1, x(duration) - 1), 4);
  }
  context.fillStyle = "#e4572e";
  context.fillRect(x(now), 0, 2, height);
}

function follow() {
  drawRoll($("player").currentTime);
  if (!$("player").paused) requestAnimationFrame(follow);
}

async function vote(choice) {
  if (await blind.vote(choice)) await loadResults();
}

const fixed = (value, digits = 3) => (value === null || value === undefined ? "-" : value.toFixed(digits));

async function loadResults() {
  const { comparisons } = await api("/api/ab/results");
  $("results-table").tBodies[0].innerHTML = comparisons.map((c) =>
    `<tr><td>${escape(c.name)}</td><td class="votes">${c.votes}</td><td>${c.listeners}</td><td>${fixed(c.preference)}</td>` +
    `<td>${c.ci95 ? fixed(c.ci95[0]) + " - " + fixed(c.ci95[1]) : "-"}</td><td>${c.p_value === null ? "-" : c.p_value.toPrecision(3)}</td></tr>`).join("");
}

$("run-select").addEventListener("change", showRun);
$("upload").addEventListener("change", upload);
$("generate-form").addEventListener("submit", generate);
$("infill-form").addEventListener("submit", fillBars);
$("player").addEventListener("play", follow);
$("player").addEventListener("seeked", () => drawRoll($("player").currentTime));
$("ab-next").addEventListener("click", () => blind.next($("comparison").value));
$("vote-a").addEventListener("click", () => vote("a"));
$("vote-b").addEventListener("click", () => vote("b"));
$("refresh-results").addEventListener("click", loadResults);
loadRuns().then(loadResults).catch((error) => say($("status"), error.message, true));
