"""Live play in headless Chromium: call and response through a fake MIDI keyboard, measured.

Per-token step time in the Worker (p50/p95), time from the phrase's end to the first answer note, how early
each answer was ready before its beat, late answers, and main-thread long tasks (Long Tasks API) while the
session runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import page_harness
from page_harness import REPO, call


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python tools/bench_live.py",
        description="Serve RUN/export/web (python -m keras_music.export --run-dir RUN --web) with isolation headers, "
                    "play TURNS phrases on a fake Web MIDI keyboard in headless Chromium and measure the answers: "
                    "Worker step time, phrase end -> first answer note, readiness before the beat, late answers, "
                    "main-thread long tasks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run-dir", required=True, metavar="DIR", help="run whose export/web/ to measure")
    parser.add_argument("--turns", type=int, default=50, metavar="N", help="call-and-response turns")
    parser.add_argument("--tempo", type=float, default=120.0, help="bpm")
    parser.add_argument("--answer-bars", type=int, default=1, metavar="N", help="bars of each answer")
    parser.add_argument("--silence-beats", type=float, default=1.0, metavar="B",
                        help="silence that ends a phrase, in beats")
    parser.add_argument("--model", default=None, help="model file (default: the export's default model)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phrases and of the answers")
    parser.add_argument("--chromium", default=page_harness.CHROMIUM, help="Chromium binary")
    parser.add_argument("--chromedriver", default=page_harness.CHROMEDRIVER, help="chromedriver binary")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    for name in ("turns", "answer_bars"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name.replace('_', '-')}: expected a positive integer")
    return args


def percentile(values, share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def summary(values) -> dict:
    return {"p50": statistics.median(values), "p95": percentile(values, 0.95), "max": max(values),
            "min": min(values), "n": len(values)}


def measure(result: dict) -> dict:
    turns, session = result["turns"], result["session"]
    sampled_steps = [ms for turn in turns for ms in turn["stepMs"][len(turn["primerIds"]):]]
    primer_steps = [ms for turn in turns for ms in turn["stepMs"][:len(turn["primerIds"])]]
    spq = session["secondsPerQuarter"]
    first_note = [(turn["firstNoteAt"] - turn["phraseEnd"]) * 1000 for turn in turns if turn["firstNoteAt"]]
    to_beat = [(turn["answerAt"] - turn["phraseEnd"]) * 1000 for turn in turns]
    ready_before = [(turn["answerAt"] - turn["resultAt"]) * 1000 for turn in turns]
    on_beat = sum(abs((t["answerAt"] - session["origin"]) / spq - t["beat"]) < 1e-9 and not t["late"] for t in turns)
    start = min(turn["requestedAt"] for turn in turns)
    start_ms = min(turn["clock"]["performanceTime"] + (turn["requestedAt"] - turn["clock"]["contextTime"]) * 1000
                   for turn in turns)
    long_tasks = session["longTasks"]
    return {
        "turns": len(turns), "late": session["late"], "on_their_beat": on_beat,
        "where": turns[0]["where"], "answer_events": session["answerEvents"],
        "step_ms": summary(sampled_steps), "primer_step_ms": summary(primer_steps) if primer_steps else None,
        "tokens_per_answer": summary([len(turn["sampled"]) for turn in turns]),
        "primer_tokens": summary([len(turn["primerIds"]) for turn in turns]),
        "generate_ms": summary([turn["generateMs"] for turn in turns]),
        "queued_ms": summary([turn["queuedMs"] for turn in turns]),
        "phrase_end_to_first_note_ms": summary(first_note),
        "phrase_end_to_answer_beat_ms": summary(to_beat),
        "ready_before_beat_ms": summary(ready_before),
        "long_tasks_supported": session["longTasksSupported"],
        "long_tasks": len(long_tasks), "long_tasks_over_50ms": sum(t["duration"] > 50 for t in long_tasks),
        "longest_task_ms": max((t["duration"] for t in long_tasks), default=0.0),
        "long_task_list": [{"ms": round(t["duration"]), "state": t["state"],
                            "at_s": round(t["start"] / 1000 - start_ms / 1000, 2)} for t in long_tasks],
        "session_seconds": max(turn["answerAt"] for turn in turns) - start,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, REPO)
    from keras_music import storage
    from keras_music.studio import routes

    found = page_harness.exported_site(args.run_dir)
    if found is None:
        return 1
    site, described = found
    model = args.model or described["default_model"]
    server = page_harness.BackgroundServer(routes.create_web_app(site, isolate=True))
    driver = page_harness.headless_chromium(chromium=args.chromium, chromedriver=args.chromedriver)
    driver.set_script_timeout(max(600, args.turns * 30))
    page_harness.install_fake_midi(driver, "keyboard")
    load_before = os.getloadavg()[0]
    try:
        info = page_harness.open_page(driver, f"{server.url}/?model={model}")
        ready = call(driver, "kerasMusic.live.ready")
        beat_ms = 60000 / args.tempo
        phrases = page_harness.random_phrases(args.turns, seed=args.seed, beat_ms=beat_ms)
        settings = {"tempo": args.tempo, "mode": "silence", "silenceBeats": args.silence_beats,
                    "answerBars": args.answer_bars, "seed": args.seed, "temperature": 0.9, "topK": 0, "topP": 1,
                    "click": True, "synth": True}
        result = page_harness.live_session(driver, phrases, settings)
        chromium = driver.capabilities.get("browserVersion")
    finally:
        driver.quit()
        server.stop()
    figures = measure(result)
    figures.update({"run_dir": args.run_dir, "model": model, "state_shape": info["stateShape"],
                    "vocabulary_size": info["vocabularySize"], "worker_load_ms": ready.get("loadMs"),
                    "chromium": chromium, "tempo": args.tempo, "answer_bars": args.answer_bars,
                    "silence_beats": args.silence_beats, "load_average": [load_before, os.getloadavg()[0]]})
    report(figures)
    if args.json:
        storage.write_json(args.json, figures)
    return 0


def report(f: dict) -> None:
    def line(name, s, unit="ms"):
        return f"{name}: p50 {s['p50']:.2f} {unit}, p95 {s['p95']:.2f} {unit}, max {s['max']:.2f} {unit} (n = {s['n']})"

    print(f"live play on {f['run_dir']} ({f['model']}, state {f['state_shape']}, {f['vocabulary_size']} tokens), "
          f"Chromium {f['chromium']}, {os.cpu_count()} CPUs, load average {f['load_average'][0]:.1f} -> "
          f"{f['load_average'][1]:.1f}")
    print(f"{f['turns']} turns at {f['tempo']:g} bpm, {f['answer_bars']}-bar answers ({f['answer_events']} events "
          f"at most), a phrase ends after {f['silence_beats']:g} beat(s) of silence; generation in the "
          f"{f['where']} (loaded in {f['worker_load_ms'] or 0:.0f} ms)")
    print(line("step time in the worker (sampled tokens)", f["step_ms"]))
    print(line("tokens per answer", f["tokens_per_answer"], "tokens"))
    print(line("answer generation (primer + tokens)", f["generate_ms"]))
    print(line("phrase end (last key up) -> answer's beat", f["phrase_end_to_answer_beat_ms"]))
    print(line("phrase end (last key up) -> first answer note", f["phrase_end_to_first_note_ms"]))
    ready = f["ready_before_beat_ms"]
    print(f"answer ready before its beat: min {ready['min']:.0f} ms, p50 {ready['p50']:.0f} ms (n = {ready['n']})")
    print(f"answers on their beat: {f['on_their_beat']} of {f['turns']}; late: {f['late']}")
    if f["long_tasks_supported"]:
        print(f"main-thread long tasks during the session: {f['long_tasks']} (over 50 ms: "
              f"{f['long_tasks_over_50ms']}; longest {f['longest_task_ms']:.0f} ms)"
              + "".join(f"; {t['ms']} ms at {t['at_s']} s, while {t['state']}" for t in f["long_task_list"]))
    else:
        print("main-thread long tasks: this browser has no Long Tasks API")


if __name__ == "__main__":
    sys.exit(main())
