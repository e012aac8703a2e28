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
  $("controls").hidden = !run.controls;
  $("key").innerHTML = "";
  for (const [value, text] of [["", "any"]].concat((run.controls ? run.controls.keys : []).map((k) => [k, k]))) {
    $("key").add(new Option(text, value));
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

async function generate(event) {
  event.preventDefault();
  const button = $("generate-button");
  button.disabled = true;
  say($("status"), "generating ...");
  const started = performance.now();
  const run = runs.find((r) => r.name === $("run-select").value);
  try {
    piece = await post("/api/generate", {
      run: $("run-select").value, temperature: number("temperature"), top_k: number("top-k"),
      top_p: number("top-p"), length: number("length"), seed: number("seed"), primer: $("primer").value,
      ...(run && run.controls ? { key: $("key").value, density: $("density").value.trim(), polyphony: $("polyphony").value.trim() } : {}),
    }, { retries: 5, onWait: (why, seconds) => say($("status"), `another piece is being generated; trying again in ${seconds.toFixed(0)} s ...`) });
    $("player").src = piece.urls.audio;
    $("player").dataset.seconds = piece.seconds;
    $("roll-png").src = piece.urls.png;
    $("dl-midi").href = piece.urls.midi;
    $("dl-musicxml").href = piece.urls.musicxml;
    $("dl-audio").href = piece.urls.audio;
    $("piece").hidden = false;
    $("player").addEventListener("canplay", () => {
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      $("player").dataset.readyAfter = seconds;
      say($("status"), `${piece.events} events, ${piece.seconds.toFixed(1)} s of audio (seed ${piece.seed}); playable ${seconds} s after Generate`);
    }, { once: true });
    drawRoll(0);
  } catch (error) {
    say($("status"), error.message, true);
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
  context.fillStyle = "#e3e6ee";
  context.fillRect(0, 0, x(piece.primer_quarters), height);
  const now = (seconds * piece.tempo) / 60;
  for (const [onset, duration, pitch] of piece.notes) {
    const sounding = onset <= now && now < onset + duration;
    context.fillStyle = sounding ? "#e4572e" : onset < piece.primer_quarters ? "#777" : "#2b6cb0";
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
$("player").addEventListener("play", follow);
$("player").addEventListener("seeked", () => drawRoll($("player").currentTime));
$("ab-next").addEventListener("click", () => blind.next($("comparison").value));
$("vote-a").addEventListener("click", () => vote("a"));
$("vote-b").addEventListener("click", () => vote("b"));
$("refresh-results").addEventListener("click", loadResults);
loadRuns().then(loadResults).catch((error) => say($("status"), error.message, true));
