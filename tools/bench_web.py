"""The web export in headless Chromium: step time per model file, time to first note, download size, both runtime builds."""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MODELS = ("model.tflite", "model_float16.tflite", "model_dynamic.tflite")


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
                        help="seeds whose sampled tokens (temperature 1, 200 steps) are compared with the reference")
    parser.add_argument("--chromium", default=CHROMIUM, help="Chromium binary")
    parser.add_argument("--chromedriver", default=CHROMEDRIVER, help="chromedriver binary")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name}: expected a positive integer, got {getattr(args, name)}")
    if args.seeds < 0:
        parser.error(f"argument --seeds: expected an integer >= 0, got {args.seeds}")
    return args


class Server:
    """A web export served by the studio's static app in a thread (with or without COOP/COEP)."""

    def __init__(self, directory: str, isolate: bool):
        import uvicorn

        from keras_music.studio import app as studio_app

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(studio_app.create_web_app(directory, isolate=isolate),
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def browser(chromium: str, chromedriver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_script_timeout(600)
    driver.execute_cdp_cmd("Network.enable", {})
    return driver


def call(driver, expression):
    answer = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"Promise.resolve().then(() => {expression})"
        ".then((value) => done({value}), (error) => done({error: String(error && error.message || error)}));")
    if "error" in answer:
        raise RuntimeError(f"{expression}: {answer['error']}")
    return answer.get("value")


def open_page(driver, url: str, cold: bool = False) -> dict:
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": cold})
    driver.get(url)
    return call(driver, "kerasMusic.ready")


def percentile(values, share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def load_reference():
    spec = importlib.util.spec_from_file_location("reference_generator",
                                                  os.path.join(REPO, "export", "reference_generator.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    from keras_music import export, web_export

    site = os.path.join(export.export_dir(args.run_dir), web_export.WEB_DIR)
    if not os.path.isfile(os.path.join(site, web_export.SITE_FILE)):
        print(f"{site} holds no web export: run python -m keras_music.export --run-dir {args.run_dir} --web",
              file=sys.stderr)
        return 1
    with open(os.path.join(site, web_export.SITE_FILE)) as handle:
        described = json.load(handle)
    models = [m["name"] for m in described["models"]]
    reference = load_reference()
    vocabulary = reference.load_vocabulary(os.path.join(site, "vocab.json"))
    references = {name: reference.StepModel(os.path.join(site, "models", name), len(vocabulary["tokens"]))
                  for name in models}
    isolated, plain = Server(site, isolate=True), Server(site, isolate=False)
    driver = browser(args.chromium, args.chromedriver)
    load_before = os.getloadavg()[0]
    results = {"run_dir": args.run_dir, "steps": args.steps, "repeats": args.repeats, "runtime": described["runtime"],
               "chromium": driver.capabilities.get("browserVersion"), "models": {}, "builds": {}}
    try:
        # 1. Cold visits from a host without isolation headers (any static host), cache off: the visitor's wait.
        # The first one is also the browser's first page (nothing compiled, no code cache).
        visits = []
        for _ in range(args.repeats + 1):
            info = open_page(driver, plain.url + "/", cold=True)
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
        on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(site) for f in files)
        first, later = visits[0], visits[1:]
        results["visit"] = {
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
            "site_bytes_on_disk": on_disk,
        }
        # 2. Per-step time of each file with each build, on the isolated host (5 us timer resolution).
        for build in ("default", "threaded"):
            for name in models:
                info = open_page(driver, f"{isolated.url}/?build={build}&model={name}")
                if info["build"] != build:
                    raise RuntimeError(f"asked for the {build} build, got {info['build']}: {info['notes']}")
                call(driver, "kerasMusic.benchmark({steps: 100, seed: 99})")  # untimed: the page's JIT warms up
                steps, per_token = [], []
                for repeat in range(args.repeats):
                    timed = call(driver, f"kerasMusic.benchmark({{steps: {args.steps}, seed: {repeat}}})"
                                         ".then((r) => ({stepMs: r.stepMs, last: kerasMusic.last}))")
                    steps += timed["stepMs"][1:]  # the first step feeds the primer
                    per_token.append(timed["last"]["generateMs"] / len(timed["stepMs"]))
                entry = results["models"].setdefault(name, {"bytes": next(m["bytes"] for m in described["models"]
                                                                          if m["name"] == name)})
                entry[build] = {"step_ms_median": statistics.median(steps), "step_ms_p95": percentile(steps, 0.95),
                                "token_ms_with_sampling": statistics.median(per_token), "steps": len(steps),
                                "model_load_ms": info["modelLoadMs"]}
        for name in models:
            results["models"][name]["python_litert_step_ms"] = python_step_ms(
                reference, os.path.join(site, "models", name), len(vocabulary["tokens"]), args.steps)
        # 3. Does each build work, and give the reference generator's tokens?
        checks = (("default", plain.url + "/"), ("threaded", isolated.url + "/?build=threaded"),
                  ("threaded requested without isolation", plain.url + "/?build=threaded"))
        for label, url in checks:
            info = open_page(driver, url)
            model = references[info["model"]]
            greedy = call(driver, "kerasMusic.generate({seed: 1, length: 200, topK: 1, keepGoing: true})")
            expected, _ = reference.generate(model, vocabulary, [2], 200, 1.0, 1, 1, stop_at_boundary=False)
            same = 0
            for seed in range(args.seeds):
                page = call(driver, f"kerasMusic.generate({{seed: {seed}, length: 200, temperature: 1, "
                                    "keepGoing: true})")
                ids, _ = reference.generate(model, vocabulary, [2], 200, 1.0, 0, seed, stop_at_boundary=False)
                same += page == ids[1:]
            results["builds"][label] = {"works": True, "build": info["build"],
                                        "cross_origin_isolated": info["crossOriginIsolated"], "notes": info["notes"],
                                        "greedy_equal": greedy == expected[1:], "sampled_equal": same,
                                        "seeds": args.seeds}
    finally:
        driver.quit()
        isolated.stop()
        plain.stop()

    results["load_average"] = [load_before, os.getloadavg()[0]]
    visit = results["visit"]
    mib = 2 ** 20
    print(f"web export of {args.run_dir}: LiteRT.js {described['runtime']['version']}, Chromium {results['chromium']}, "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end")
    first = visit["first_visit"]
    print(f"the browser's first visit (default build, {described['default_model']}): ready in "
          f"{first['ready_ms']:.0f} ms (model compiled in {first['model_load_ms']:.0f} ms, warm-up step "
          f"{first['warmup_ms']:.0f} ms), first note at {first['first_note_ms']:.0f} ms after opening the page")
    print(f"later visits (no cache, median of {args.repeats}): ready in "
          f"{visit['ready_ms']:.0f} ms (warm-up step {visit['warmup_ms']:.0f} ms), first note at "
          f"{visit['first_note_ms']:.0f} ms after opening the page (400 tokens asked, {visit['generated_tokens']} "
          f"generated in {visit['generate_ms']:.0f} ms)")
    print(f"downloaded: {visit['download_bytes'] / mib:.2f} MiB in {len(visit['files'])} files "
          f"({visit['download_gzip_bytes'] / mib:.2f} MiB if the host gzips); the whole site is "
          f"{visit['site_bytes_on_disk'] / mib:.1f} MiB on disk (all three models and runtime builds)")
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
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
