// The listener page: only the blind test. ?comparison=SIDE%20vs%20SIDE picks the comparison (default: the studio's first).
"use strict";
const comparison = new URLSearchParams(location.search).get("comparison") || undefined;
let votes = 0;

async function vote(choice) {
  if (!(await blind.vote(choice))) return;
  votes += 1;
  $("ab-count").textContent = `${votes} answer${votes === 1 ? "" : "s"} recorded. Thank you!`;
  $("ab-next").textContent = "Next pair";
  await blind.next(comparison);
}

$("ab-next").addEventListener("click", () => blind.next(comparison));
$("vote-a").addEventListener("click", () => vote("a"));
$("vote-b").addEventListener("click", () => vote("b"));
