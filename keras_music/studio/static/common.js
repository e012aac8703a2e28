// What the studio page and the listener page share: the JSON API with polite retries, and status lines.
"use strict";
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A busy server (503) answers with Retry-After; wait that long (a little jittered, so listeners spread out)
// and ask again, telling the user, up to `retries` times.
async function api(path, options = {}, { retries = 0, onWait = null } = {}) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, options);
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (response.ok) return body;
    if (response.status === 503 && attempt < retries) {
      const seconds = Math.min(10, Number(response.headers.get("Retry-After")) || 2) * (0.75 + Math.random() / 2);
      if (onWait) onWait(body.error || "busy", seconds);
      await sleep(seconds * 1000);
      continue;
    }
    throw new Error(body.error || response.statusText);
  }
}
const post = (path, body, retry = {}) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }, retry);

function say(element, text, isError = false) {
  element.textContent = text;
  element.className = isError ? "error" : "";
}

// One blind round, for whichever page holds the elements ab-pair, ab-a, ab-b, ab-question, ab-reason, ab-status.
const blind = {
  pair: null,
  async next(comparison) {
    say($("ab-status"), "preparing a pair ...");
    $("ab-next").disabled = true;
    try {
      this.pair = await post("/api/ab/next", { comparison: comparison || undefined }, {
        retries: 30, onWait: (why, seconds) => say($("ab-status"), `the excerpts are still being prepared; trying again in ${seconds.toFixed(0)} s ...`),
      });
      $("ab-a").src = this.pair.a.audio_url;
      $("ab-b").src = this.pair.b.audio_url;
      $("ab-question").textContent = this.pair.question;
      $("ab-reason").value = "";
      $("ab-pair").hidden = false;
      for (const id of ["vote-a", "vote-b"]) $(id).disabled = false;
      say($("ab-status"), "listen to both, then answer");
    } catch (error) {
      say($("ab-status"), error.message, true);
    } finally {
      $("ab-next").disabled = false;
    }
  },
  async vote(choice) {
    if (!this.pair) return false;
    for (const id of ["vote-a", "vote-b"]) $(id).disabled = true;
    try {
      await post("/api/ab/vote", { pair_id: this.pair.pair_id, choice, reason: $("ab-reason").value }, { retries: 10 });
      say($("ab-status"), `vote ${choice.toUpperCase()} recorded`);
      this.pair = null;
      $("ab-pair").hidden = true;
      for (const id of ["ab-a", "ab-b"]) $(id).pause();
      return true;
    } catch (error) {
      say($("ab-status"), error.message, true);
      for (const id of ["vote-a", "vote-b"]) $(id).disabled = false;
      return false;
    }
  },
};
