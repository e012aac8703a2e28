"""The small-corpus quality table: fine-tuned from a base run against trained from scratch, at one time budget.

A folder of piano MIDI files (piano-midi.de, as in the README) is split by a hash of each file's
name into three disjoint sets: HELD (the held-out pieces every run is scored on), a POOL whose
first 20, 50 and 100 pieces are the "user's folders", and the rest, which trains the base run
with the Bach chorales. Then, one after another on the same machine:

1. the base run: `train --data bach --data BASE --held-out HELD` with `data.full_vocabulary`;
2. per folder size N: `train --data POOL_N --held-out HELD` from scratch and
   `train --init-from BASE_RUN --data POOL_N --held-out HELD`, each with the same time budget;
3. `evaluate` on every run (held-out perplexity per token and per event, Kneser-Ney n-grams of orders
   1-12 fit on the run's own training pieces, music metrics of generated pieces against HELD).

The table (OUT/table.md, OUT/table.json) puts them side by side: perplexities, the best n-gram and
the LSTM's ratio to it, the overlapping areas of the four metrics, and how much the generated
pieces restate their material (longest repetition, restatement rate) next to the held-out
pieces' own values. Runs already finished in OUT are reused, so an interrupted table resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from keras_music import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOUR = ("pitch_entropy", "groove_consistency", "scale_consistency", "note_transition_logprob")
RESTATING = ("longest_repetition", "restatement_rate")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python tools/small_corpus.py",
        description="Split a piano MIDI folder into held-out pieces, a pool of user folders (first N pieces) and "
                    "a base corpus; train a base run, then per folder size a run from scratch and a fine-tune of "
                    "the base at the same time budget; evaluate all and write OUT/table.md and OUT/table.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--piano", required=True, metavar="DIR", help="folder of piano MIDI files (recursive)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the folders, runs and table go")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 100], metavar="N",
                        help="user folder sizes (each folder holds the smaller ones)")
    parser.add_argument("--held-out", type=int, default=30, metavar="N", help="held-out pieces")
    parser.add_argument("--budget", type=float, default=5.0, metavar="MINUTES",
                        help="training budget of every scratch and fine-tune run")
    parser.add_argument("--base-budget", type=float, default=20.0, metavar="MINUTES", help="the base run's budget")
    parser.add_argument("--num-samples", type=int, default=30, metavar="N",
                        help="generated pieces per run for the music metrics (each as long as a held-out piece)")
    parser.add_argument("--temperature", type=float, default=0.9, help="sampling temperature of the metrics")
    parser.add_argument("--set", action="append", default=[], metavar="K=V",
                        help="extra setting for every run (e.g. data.seq_length=256)")
    parser.add_argument("--long-window", type=int, default=0, metavar="TOKENS",
                        help="also fine-tune the largest folder with data.seq_length=TOKENS at the same budget (a row "
                             "on whether longer training windows make the model restate its material; 0: no)")
    parser.add_argument("--carry-state", action="store_true",
                        help="also fine-tune the largest folder with train.carry_state=true at the same budget (a row "
                             "on whether carrying the LSTM state across windows makes the model restate its material)")
    parser.add_argument("--only", choices=("base", "scratch", "finetune"), action="append", default=None,
                        help="train only these kinds of run (default: all); the table uses whatever is in OUT")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.piano):
        parser.error(f"--piano {args.piano}: not a folder")
    if any(n < 1 for n in args.sizes) or args.held_out < 1:
        parser.error("--sizes and --held-out must be positive")
    return args


def rank(files: list[str]) -> list[str]:
    """The files in the order of a hash of their names (relative paths): the split never depends on listing order."""
    return sorted(files, key=lambda name: hashlib.sha256(name.encode()).hexdigest())


def split_folder(piano: str, out: str, held: int, sizes: list[int]) -> dict[str, str]:
    """Copies of the files into OUT/folders/{held-out,base,pool-N}; returns their paths by name."""
    found = sorted(os.path.relpath(os.path.join(root, name), piano)
                   for root, _, names in os.walk(piano) for name in names if name.lower().endswith((".mid", ".midi")))
    ranked = rank(found)
    pool_size = max(sizes)
    if len(ranked) < held + pool_size + 1:
        raise SystemExit(f"{piano} has {len(ranked)} MIDI files: expected more than {held + pool_size} "
                         f"(--held-out {held} plus the largest of --sizes {pool_size})")
    groups = {"held-out": ranked[:held], "base": ranked[held + pool_size:]}
    for size in sizes:
        groups[f"pool-{size}"] = ranked[held:held + size]
    folders = {}
    for name, members in groups.items():
        folder = os.path.join(out, "folders", name)
        if not os.path.isdir(folder):
            partial = folder + ".partial"
            shutil.rmtree(partial, ignore_errors=True)
            for member in members:
                target = os.path.join(partial, member.replace(os.sep, "_"))
                os.makedirs(partial, exist_ok=True)
                shutil.copyfile(os.path.join(piano, member), target)
            os.replace(partial, folder)
        folders[name] = folder
    return folders


def finished(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "model.keras")) and os.path.isfile(os.path.join(run_dir, "metrics.json"))


def call(argv: list[str], log: str) -> float:
    """Runs `python -m ...argv` with its output in `log`; returns the seconds it took (exits on failure)."""
    started = time.time()
    with open(log, "a") as handle:
        handle.write("$ python -m " + " ".join(argv) + "\n")
        handle.flush()
        code = subprocess.call([sys.executable, "-m", *argv], stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    if code:
        raise SystemExit(f"python -m {' '.join(argv)} exited {code}: see {log}")
    return time.time() - started


def train(run_dir: str, sources: list[str], held: str, budget: float, extra: list[str], log: str,
          init_from: str | None = None, base: bool = False) -> None:
    if finished(run_dir):
        return
    argv = ["keras_music.train", "--run-dir", run_dir, "--quiet", "--held-out", held]
    for source in sources:
        argv += ["--data", source]
    if init_from:
        argv += ["--init-from", init_from]
    settings = [f"train.time_budget_minutes={budget}", "train.lr_schedule=cosine_budget", "train.num_samples=0",
                *(["data.full_vocabulary=true"] if base else []), *extra]
    for setting in settings:
        argv += ["--set", setting]
    print(f"training {os.path.basename(run_dir)} ({budget:g} min)", flush=True)
    call(argv, log)


def evaluate(run_dir: str, num_samples: int, temperature: float, log: str) -> dict:
    out = os.path.join(run_dir, "evaluation")
    result = os.path.join(out, "evaluation.json")
    if not os.path.isfile(result):
        print(f"evaluating {os.path.basename(run_dir)}", flush=True)
        call(["keras_music.evaluate", "--run-dir", run_dir, "--out", out, "--num-samples", str(num_samples),
              "--temperature", str(temperature), "--controls-samples", "0", "--quiet"], log)
    with open(result) as handle:
        return json.load(handle)


def row(name: str, run_dir: str, evaluation: dict, temperature: float) -> dict:
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    with open(os.path.join(run_dir, "prepared.json")) as handle:
        prepared = json.load(handle)
    lstm = evaluation["model_quality"]
    ngram = evaluation["ngram"]
    best = ngram["orders"][str(ngram["best_order"])]
    music = evaluation["music_metrics"]
    key = f"{float(temperature):g}"
    generated, real = music["generated"][key]["summary"], music["real"]["summary"]
    return {
        "run": name, "run_dir": os.path.relpath(run_dir), "train_pieces": prepared["pieces"]["train"],
        "train_tokens": prepared["tokens"]["train"], "held_out_pieces": prepared["pieces"]["validation"],
        "vocabulary": prepared["vocabulary_size"], "epochs": metrics.get("epochs"),
        "best_epoch": metrics.get("best_epoch"), "train_minutes": round(metrics.get("train_seconds", 0) / 60, 2),
        "stopped": metrics.get("stopped"), "perplexity": lstm["perplexity"],
        "event_perplexity": lstm["event_perplexity"], "best_ngram_order": ngram["best_order"],
        "ngram_perplexity": best["perplexity"], "ngram_event_perplexity": best["event_perplexity"],
        "ratio": evaluation["lstm_vs_ngram"]["perplexity_ratio"],
        "overlap": {m: music["comparison"][key][m]["overlapping_area"] for m in FOUR},
        "restating": {m: {"generated": generated[m]["mean"], "held_out": real[m]["mean"]} for m in RESTATING},
        "init_from": (metrics.get("init_from") or {}).get("run"),
    }


def fmt(value, digits=2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def render(rows: list[dict], args) -> str:
    lines = ["| run | training pieces (tokens) | epochs in budget | perplexity / token | / event | best n-gram "
             "(order) | LSTM / n-gram | OA pitch entropy | OA groove | OA scale | OA transition | longest "
             "repetition gen / held-out | restatement gen / held-out |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        oa = r["overlap"]
        rep, rest = r["restating"]["longest_repetition"], r["restating"]["restatement_rate"]
        lines.append(
            f"| {r['run']} | {r['train_pieces']} ({r['train_tokens']:,}) | {r['epochs']} ({r['train_minutes']:g} min) | "
            f"{fmt(r['perplexity'])} | {fmt(r['event_perplexity'], 0)} | {fmt(r['ngram_perplexity'])} "
            f"({r['best_ngram_order']}) | {fmt(r['ratio'], 3)} | {fmt(oa['pitch_entropy'])} | "
            f"{fmt(oa['groove_consistency'])} | {fmt(oa['scale_consistency'])} | "
            f"{fmt(oa['note_transition_logprob'])} | {fmt(rep['generated'], 1)} / {fmt(rep['held_out'], 1)} | "
            f"{fmt(rest['generated'], 3)} / {fmt(rest['held_out'], 3)} |")
    pairs = []
    for size in args.sizes:
        scratch = next((r for r in rows if r["run"] == f"scratch-{size}"), None)
        tuned = next((r for r in rows if r["run"] == f"finetune-{size}"), None)
        if scratch and tuned:
            pairs.append(f"- {size} pieces: fine-tuned perplexity {100 * (1 - tuned['perplexity'] / scratch['perplexity']):.1f}% "
                         f"lower than from scratch ({fmt(tuned['perplexity'])} against {fmt(scratch['perplexity'])}).")
    return "\n".join(lines + [""] + pairs) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "log.txt")
    folders = split_folder(args.piano, out, args.held_out, sorted(args.sizes))
    held = folders["held-out"]
    runs = os.path.join(out, "runs")
    wanted = set(args.only or ("base", "scratch", "finetune"))
    base_dir = os.path.join(runs, "base")
    if "base" in wanted:
        train(base_dir, ["bach", folders["base"]], held, args.base_budget, args.set, log, base=True)
    order = [("base", base_dir)] if finished(base_dir) else []
    for size in sorted(args.sizes):
        for kind in ("scratch", "finetune"):
            run_dir = os.path.join(runs, f"{kind}-{size}")
            if kind in wanted and (kind == "scratch" or finished(base_dir)):
                train(run_dir, [folders[f"pool-{size}"]], held, args.budget, args.set, log,
                      init_from=base_dir if kind == "finetune" else None)
            if finished(run_dir):
                order.append((f"{kind}-{size}", run_dir))
    variants = []
    if args.long_window:
        variants.append((f"window{args.long_window}", f"{args.long_window}-token windows",
                         f"data.seq_length={args.long_window}"))
    if args.carry_state:
        variants.append(("carry-state", "state carried across windows", "train.carry_state=true"))
    size = max(args.sizes)
    for suffix, label, setting in variants if finished(base_dir) else []:
        run_dir = os.path.join(runs, f"finetune-{size}-{suffix}")
        if "finetune" in wanted:
            train(run_dir, [folders[f"pool-{size}"]], held, args.budget, [*args.set, setting], log, init_from=base_dir)
        if finished(run_dir):
            order.append((f"finetune-{size}, {label}", run_dir))
    rows = [row(name, run_dir, evaluate(run_dir, args.num_samples, args.temperature, log), args.temperature)
            for name, run_dir in order]
    storage.write_json(os.path.join(out, "table.json"), {"settings": vars(args), "rows": rows})
    table = render(rows, args)
    storage.write_text(os.path.join(out, "table.md"), table)
    print(table)


if __name__ == "__main__":
    main()
