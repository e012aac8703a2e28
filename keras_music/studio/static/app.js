// The studio page: every action goes through the JSON API the README documents.
"use strict";
const $ = (id) => document.getElementById(id);
let runs = [];
let piece = null;

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

function say(element, text, isError = false) {
  element.textContent = text;
  element.className = isError ? "error" : "";
}

function table(values) {
  const rows = Object.entries(values || {}).map(([k, v]) =>
    `<tr><td>${k}</td><td>${typeof v === "number" && !Number.isInteger(v) ? v.toFixed(4) : v}</td></tr>`);
  return rows.length ? `<table>${rows.join("")}</table>` : "";
}

function showRun() {
  const run = runs.find((r) => r.name === $("run-select").value);
  if (!run) return;
  $("run-info").innerHTML = `<p>${run.representation} representation, ${run.vocabulary_size} tokens, ${run.held_out} held-out pieces</p>` +
    (Object.keys(run.metrics).length ? "<h3>Training</h3>" + table(run.metrics) : "") +
    (Object.keys(run.evaluation).length ? "<h3>Evaluation</h3>" + table(run.evaluation) : "<p>No evaluation yet.</p>") +
    (run.web_url ? `<p><a id="web-link" href="${run.web_url}">Open the in-browser version</a>: the same model generating on your device with LiteRT.js.</p>` : "");
  $("curves").hidden = !run.curves_url;
  if (run.curves_url) $("curves").src = run.curves_url;
  const options = [["held_out", "opening of a random held-out piece"], ["none", "none"]];
  for (let i = 0; i < run.held_out; i++) options.push([`held_out:${i}`, `held-out piece ${i + 1}`]);
  const uploaded = [...$("primer").options].filter((o) => o.value.startsWith("upload:")).map((o) => [o.value, o.text]);
  $("primer").innerHTML = "";
  for (const [value, text] of options.concat(uploaded)) $("primer").add(new Option(text, value));
}

async function loadRuns() {
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
  try {
    piece = await post("/api/generate", {
      run: $("run-select").value, temperature: number("temperature"), top_k: number("top-k"),
      top_p: number("top-p"), length: number("length"), seed: number("seed"), primer: $("primer").value,
    });
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

let pair = null;
async function nextPair() {
  say($("ab-status"), "preparing a pair ...");
  $("ab-next").disabled = true;
  try {
    pair = await post("/api/ab/next", { comparison: $("comparison").value || undefined });
    $("ab-a").src = pair.a.audio_url;
    $("ab-b").src = pair.b.audio_url;
    $("ab-question").textContent = pair.question;
    $("ab-reason").value = "";
    $("ab-pair").hidden = false;
    for (const id of ["vote-a", "vote-b"]) $(id).disabled = false;
    say($("ab-status"), "listen to both, then answer");
  } catch (error) {
    say($("ab-status"), error.message, true);
  } finally {
    $("ab-next").disabled = false;
  }
}

async function vote(choice) {
  if (!pair) return;
  for (const id of ["vote-a", "vote-b"]) $(id).disabled = true;
  try {
    await post("/api/ab/vote", { pair_id: pair.pair_id, choice, reason: $("ab-reason").value });
    say($("ab-status"), `vote ${choice.toUpperCase()} recorded`);
    pair = null;
    $("ab-pair").hidden = true;
    await loadResults();
  } catch (error) {
    say($("ab-status"), error.message, true);
  }
}

const fixed = (value, digits = 3) => (value === null || value === undefined ? "-" : value.toFixed(digits));

async function loadResults() {
  const { comparisons } = await api("/api/ab/results");
  $("results-table").tBodies[0].innerHTML = comparisons.map((c) =>
    `<tr><td>${c.name}</td><td class="votes">${c.votes}</td><td>${fixed(c.preference)}</td>` +
    `<td>${c.ci95 ? fixed(c.ci95[0]) + " - " + fixed(c.ci95[1]) : "-"}</td><td>${c.p_value === null ? "-" : c.p_value.toPrecision(3)}</td></tr>`).join("");
}

$("run-select").addEventListener("change", showRun);
$("upload").addEventListener("change", upload);
$("generate-form").addEventListener("submit", generate);
$("player").addEventListener("play", follow);
$("player").addEventListener("seeked", () => drawRoll($("player").currentTime));
$("ab-next").addEventListener("click", nextPair);
$("vote-a").addEventListener("click", () => vote("a"));
$("vote-b").addEventListener("click", () => vote("b"));
$("refresh-results").addEventListener("click", loadResults);
loadRuns().then(loadResults).catch((error) => say($("status"), error.message, true));
