"""The web export in headless Chromium: step time per model file, time to first note, download size, both runtime builds."""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import time
import urllib.parse

import page_harness
from page_harness import REPO, call

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python tools/bench_web.py",
        description="Serve RUN/export/web (built by python -m keras_music.export --run-dir RUN --web) and measure it "
                    "in headless Chromium: per-step time of each .tflite file with the default and the threaded "
                    "LiteRT.js build (median and p95), time from opening the page to the first note, what a "
                    "visitor downloads (and gzipped), and whether each build generates the reference generator's "
                    "tokens.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run-dir", required=True, metavar="DIR", help="run whose export/web/ to measure")
    parser.add_argument("--steps", type=int, default=400, metavar="N", help="sampled tokens per timed generation")
    parser.add_argument("--repeats", type=int, default=3, metavar="N",
                        help="timed generations per model and build, and cold page loads for the first note")
    parser.add_argument("--seeds", type=int, default=10, metavar="N",
                        help="seeds whose sampled tokens (temperature 1, 200 events) are compared with the reference")
    parser.add_argument("--chromium", default=page_harness.CHROMIUM, help="Chromium binary")
    parser.add_argument("--chromedriver", default=page_harness.CHROMEDRIVER, help="chromedriver binary")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name}: expected a positive integer, got {getattr(args, name)}")
    if args.seeds < 0:
        parser.error(f"argument --seeds: expected an integer >= 0, got {args.seeds}")
    return args


def visit(driver, url: str, cold: bool = False) -> dict:
    """Open the page with the browser's cache off (`cold`) or on; returns what it loaded."""
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": cold})
    return page_harness.open_page(driver, url)


def percentile(values, share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def python_step_ms(reference, path: str, vocabulary_size: int, steps: int) -> float:
    """Median ms per step of the same file with the Python ai-edge-litert interpreter, for comparison."""
    model = reference.StepModel(path, vocabulary_size)
    state, token, times = model.initial_state(), 2, []
    for _ in range(steps + 5):
        started = time.perf_counter()
        probabilities, state = model.step(token, state)
        times.append((time.perf_counter() - started) * 1000)
        token = int(probabilities.argmax()) or 2
    return statistics.median(times[5:])


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, REPO)
    from keras_music import storage
    from keras_music.studio import routes

    found = page_harness.exported_site(args.run_dir)
    if found is None:
        return 1
    site, described = found
    reference = page_harness.reference_generator()
    vocabulary = reference.load_vocabulary(os.path.join(site, "vocab.json"))
    isolated = page_harness.BackgroundServer(routes.create_web_app(site, isolate=True))
    plain = page_harness.BackgroundServer(routes.create_web_app(site, isolate=False))
    driver = page_harness.headless_chromium(chromium=args.chromium, chromedriver=args.chromedriver)
    driver.set_script_timeout(600)
    driver.execute_cdp_cmd("Network.enable", {})
    load_before = os.getloadavg()[0]
    results = {"run_dir": args.run_dir, "steps": args.steps, "repeats": args.repeats, "runtime": described["runtime"],
               "chromium": driver.capabilities.get("browserVersion"), "models": {}, "builds": {}}
    try:
        results["visit"] = measure_visits(driver, plain.url, site, args.repeats)
        results["models"] = measure_steps(driver, isolated.url, site, described, reference, vocabulary, args)
        results["builds"] = check_builds(driver, plain.url, isolated.url, site, described, reference, vocabulary,
                                         args.seeds)
    finally:
        driver.quit()
        isolated.stop()
        plain.stop()
    results["load_average"] = [load_before, os.getloadavg()[0]]
    report(results, described)
    if args.json:
        storage.write_json(args.json, results)
    return 0


def measure_visits(driver, url: str, site: str, repeats: int) -> dict:
    """Cold visits from a host without isolation headers (any static host), cache off: the visitor's wait.

    The first one is also the browser's first page (nothing compiled, no code cache).
    """
    visits = []
    for _ in range(repeats + 1):
        info = visit(driver, url + "/", cold=True)
        piece = call(driver, "kerasMusic.compose({seed: 0, length: 400, temperature: 1, topK: 0, topP: 1, "
                             "keepGoing: false}).then(() => kerasMusic.last)")
        entries = driver.execute_script(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
            ".map(e => ({name: e.name, transfer: e.transferSize, encoded: e.encodedBodySize, "
            "decoded: e.decodedBodySize}))")
        visits.append({"ready_ms": info["readyMs"], "model_load_ms": info["modelLoadMs"],
                       "warmup_ms": info["warmupMs"], "first_note_ms": piece["firstNoteAt"],
                       "generate_ms": piece["generateMs"], "tokens": len(piece["sampled"]), "entries": entries})
    fetched = visits[-1]["entries"]
    paths = [urllib.parse.urlparse(e["name"]).path.lstrip("/") or "index.html" for e in fetched]
    gzip_bytes = 0
    for path in paths:
        with open(os.path.join(site, *path.split("/")), "rb") as handle:
            gzip_bytes += len(gzip.compress(handle.read(), compresslevel=6, mtime=0))
    first, later = visits[0], visits[1:]
    return {
        "first_visit": {key: first[key] for key in ("ready_ms", "model_load_ms", "warmup_ms", "first_note_ms",
                                                     "generate_ms")},
        "ready_ms": statistics.median(v["ready_ms"] for v in later),
        "first_note_ms": statistics.median(v["first_note_ms"] for v in later),
        "first_note_ms_all": [round(v["first_note_ms"], 1) for v in later],
        "warmup_ms": statistics.median(v["warmup_ms"] for v in later),
        "generate_ms": statistics.median(v["generate_ms"] for v in later),
        "generated_tokens": visits[-1]["tokens"],
        "files": sorted(paths),
        "download_bytes": sum(e["encoded"] for e in fetched),
        "download_gzip_bytes": gzip_bytes,
        "site_bytes_on_disk": sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(site) for f in files),
    }


def measure_steps(driver, url: str, site: str, described: dict, reference, vocabulary: dict, args) -> dict:
    """Per-step time of each model file with each build on the isolated host (5 us timer resolution), and with
    the Python interpreter."""
    models = {}
    for build in ("default", "threaded"):
        for entry in described["models"]:
            info = visit(driver, f"{url}/?build={build}&model={entry['name']}")
            if info["build"] != build:
                raise RuntimeError(f"asked for the {build} build, got {info['build']}: {info['notes']}")
            call(driver, "kerasMusic.benchmark({steps: 100, seed: 99})")  # untimed: the page's JIT warms up
            steps, per_token = [], []
            for repeat in range(args.repeats):
                timed = call(driver, f"kerasMusic.benchmark({{steps: {args.steps}, seed: {repeat}}})"
                                     ".then((r) => ({stepMs: r.stepMs, last: kerasMusic.last}))")
                steps += timed["stepMs"][1:]  # the first step feeds the primer
                per_token.append(timed["last"]["generateMs"] / len(timed["stepMs"]))
            models.setdefault(entry["name"], {"bytes": entry["bytes"]})[build] = {
                "step_ms_median": statistics.median(steps), "step_ms_p95": percentile(steps, 0.95),
                "token_ms_with_sampling": statistics.median(per_token), "steps": len(steps),
                "model_load_ms": info["modelLoadMs"]}
    for name, figures in models.items():
        figures["python_litert_step_ms"] = python_step_ms(reference, os.path.join(site, "models", name),
                                                          len(vocabulary["tokens"]), args.steps)
    return models


def check_builds(driver, plain_url: str, isolated_url: str, site: str, described: dict, reference, vocabulary: dict,
                 seeds: int) -> dict:
    """Does each build work, and give the reference generator's tokens?"""
    references = {entry["name"]: reference.StepModel(os.path.join(site, "models", entry["name"]),
                                                     len(vocabulary["tokens"])) for entry in described["models"]}
    builds = {}
    for label, url in (("default", plain_url + "/"), ("threaded", isolated_url + "/?build=threaded"),
                       ("threaded requested without isolation", plain_url + "/?build=threaded")):
        info = visit(driver, url)
        model = references[info["model"]]
        greedy = call(driver, "kerasMusic.generate({seed: 1, length: 200, topK: 1, keepGoing: true})")
        expected, _ = reference.generate(model, vocabulary, [2], 200, 1.0, 1, 1, stop_at_boundary=False)
        same = 0
        for seed in range(seeds):
            page = call(driver, f"kerasMusic.generate({{seed: {seed}, length: 200, temperature: 1, keepGoing: true}})")
            ids, _ = reference.generate(model, vocabulary, [2], 200, 1.0, 0, seed, stop_at_boundary=False)
            same += page == ids[1:]
        builds[label] = {"works": True, "build": info["build"], "cross_origin_isolated": info["crossOriginIsolated"],
                         "notes": info["notes"], "greedy_equal": greedy == expected[1:], "sampled_equal": same,
                         "seeds": seeds}
    return builds


def report(results: dict, described: dict) -> None:
    later, first, (load_before, load_after) = results["visit"], results["visit"]["first_visit"], results["load_average"]
    mib = 2 ** 20
    print(f"web export of {results['run_dir']}: LiteRT.js {described['runtime']['version']}, Chromium "
          f"{results['chromium']}, {os.cpu_count()} CPUs, load average {load_before:.1f} at the start and "
          f"{load_after:.1f} at the end")
    print(f"the browser's first visit (default build, {described['default_model']}): ready in "
          f"{first['ready_ms']:.0f} ms (model compiled in {first['model_load_ms']:.0f} ms, warm-up step "
          f"{first['warmup_ms']:.0f} ms), first note at {first['first_note_ms']:.0f} ms after opening the page")
    print(f"later visits (no cache, median of {results['repeats']}): ready in "
          f"{later['ready_ms']:.0f} ms (warm-up step {later['warmup_ms']:.0f} ms), first note at "
          f"{later['first_note_ms']:.0f} ms after opening the page (400 tokens asked, {later['generated_tokens']} "
          f"generated in {later['generate_ms']:.0f} ms)")
    print(f"downloaded: {later['download_bytes'] / mib:.2f} MiB in {len(later['files'])} files "
          f"({later['download_gzip_bytes'] / mib:.2f} MiB if the host gzips); the whole site is "
          f"{later['site_bytes_on_disk'] / mib:.1f} MiB on disk (all three models and runtime builds)")
    print()
    header = f"{'model':<22} {'size':>9}  {'build':<9} {'step median':>12} {'step p95':>9} {'token+sampling':>15} " \
             f"{'python litert':>14}"
    print(header)
    print("-" * len(header))
    for name, entry in results["models"].items():
        for build in ("default", "threaded"):
            figures = entry[build]
            print(f"{name:<22} {entry['bytes'] / 1024:>6.0f} KiB  {build:<9} {figures['step_ms_median']:>9.3f} ms "
                  f"{figures['step_ms_p95']:>6.3f} ms {figures['token_ms_with_sampling']:>12.3f} ms "
                  f"{entry['python_litert_step_ms']:>11.3f} ms")
    print()
    for label, figures in results["builds"].items():
        print(f"{label}: works, {figures['build']} build, cross-origin isolated {figures['cross_origin_isolated']}; "
              f"greedy tokens equal the reference: {figures['greedy_equal']}; sampled (T = 1, 200 steps) equal for "
              f"{figures['sampled_equal']} of {figures['seeds']} seeds"
              + (f"; note: {figures['notes'][0]}" if figures["notes"] else ""))


if __name__ == "__main__":
    sys.exit(main())
