"""Many listeners at once against the studio's blind test: latency of pairs, audio and votes, and what got stored.

    python tools/bench_studio.py --run-dir runs/latest [--listeners 50] [--rounds 5] [--ab-pool 8]

Starts the studio in a child process on 127.0.0.1 (a free port, a temporary output area and vote file),
waits until the A/B pool is rendered, then lets every listener (own cookie jar, so own listener id) ask
for a pair, fetch both excerpts and vote, `--rounds` times, all starting together. Prints p50/p95/max
latency per request kind, the status counts, then checks that every vote is stored once, that a second
vote on a pair is refused, and that the results read the same after restarting the studio.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def request(opener, url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, object, float]:
    """(status, decoded JSON or bytes, seconds) of one request."""
    data = None if body is None else json.dumps(body).encode()
    started = time.perf_counter()
    try:
        with opener.open(urllib.request.Request(url, data=data, method="GET" if data is None else "POST"),
                         timeout=timeout) as response:
            status, payload, kind = response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as error:
        status, payload, kind = error.code, error.read(), error.headers.get("content-type", "")
    seconds = time.perf_counter() - started
    return status, json.loads(payload) if kind.startswith("application/json") else payload, seconds


def percentile(values, share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def wait_for_pool(url: str, timeout: float = 600) -> dict:
    opener = urllib.request.build_opener()
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, pool, _ = request(opener, url + "/api/ab/pool")
        except urllib.error.URLError as error:  # printed its address, not yet accepting
            status, pool = 0, str(error)
        if status == 200 and pool["filled"]:
            return pool
        if time.monotonic() > deadline:
            raise TimeoutError(f"the A/B pool did not fill in {timeout:g} s: {pool}")
        time.sleep(0.2)


def load(url: str, listeners: int = 50, rounds: int = 5, audio: bool = True, comparison: str | None = None) -> dict:
    """Every listener at once: `rounds` times a pair, (its two excerpts), and a vote. Returns what happened."""
    latencies = {"pair": [], "audio": [], "vote": []}
    statuses: dict[str, dict[int, int]] = {kind: {} for kind in latencies}
    votes, lock = [], threading.Lock()
    start = threading.Barrier(listeners)

    def note(kind, status, seconds):
        with lock:
            latencies[kind].append(seconds)
            statuses[kind][status] = statuses[kind].get(status, 0) + 1

    def listener(number):
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        start.wait()
        for round_ in range(rounds):
            status, pair, seconds = request(opener, url + "/api/ab/next", {"comparison": comparison} if comparison else {})
            note("pair", status, seconds)
            if status != 200:
                continue
            if audio:
                for side in ("a", "b"):
                    status, _, seconds = request(opener, url + pair[side]["audio_url"])
                    note("audio", status, seconds)
            choice = "ab"[(number + round_) % 2]
            status, _, seconds = request(opener, url + "/api/ab/vote",
                                         {"pair_id": pair["pair_id"], "choice": choice, "reason": f"listener {number}"})
            note("vote", status, seconds)
            if status == 200:
                with lock:
                    votes.append((pair["pair_id"], pair["comparison"], choice))

    started = time.perf_counter()
    threads = [threading.Thread(target=listener, args=(n,)) for n in range(listeners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.perf_counter() - started, "latencies": latencies, "statuses": statuses, "votes": votes}


def describe(outcome: dict) -> list[str]:
    lines = [f"{len(outcome['votes'])} votes stored in {outcome['seconds']:.1f} s"]
    for kind, values in outcome["latencies"].items():
        if values:
            lines.append(f"{kind:5s}: {len(values):4d} requests, statuses {outcome['statuses'][kind]}, "
                         f"p50 {1000 * percentile(values, .5):6.1f} ms, p95 {1000 * percentile(values, .95):6.1f} ms, "
                         f"max {1000 * max(values):6.1f} ms")
    every = [v for values in outcome["latencies"].values() for v in values]
    lines.append(f"all  : {len(every):4d} requests, p50 {1000 * percentile(every, .5):6.1f} ms, "
                 f"p95 {1000 * percentile(every, .95):6.1f} ms")
    return lines


def start_studio(run_dir: str, work: str, ab_pool: int, ab_seconds: float):
    """The studio in a child process on a free local port; (process, url)."""
    command = [sys.executable, "-m", "keras_music.studio", "--run-dir", run_dir, "--port", "0",
               "--out", os.path.join(work, "out"), "--db", os.path.join(work, "votes.sqlite"),
               "--ab-pool", str(ab_pool), "--ab-seconds", str(ab_seconds)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line.startswith("studio: http://"):
        process.kill()
        raise RuntimeError(f"the studio did not start: {line!r}")
    return process, line.split()[1].rstrip("/")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/latest")
    parser.add_argument("--listeners", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ab-pool", type=int, default=8)
    parser.add_argument("--ab-seconds", type=float, default=20.0)
    parser.add_argument("--no-audio", action="store_true", help="only pairs and votes, not the excerpts")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        process, url = start_studio(args.run_dir, work, args.ab_pool, args.ab_seconds)
        try:
            started = time.perf_counter()
            pool = wait_for_pool(url)
            print(f"pool filled in {time.perf_counter() - started:.1f} s: "
                  + ", ".join(f"{side} {info['rendered']}" for side, info in pool["sides"].items()))
            outcome = load(url, args.listeners, args.rounds, audio=not args.no_audio)
            print(f"{args.listeners} listeners x {args.rounds} rounds (pair{', 2 excerpts' * (not args.no_audio)}, vote)")
            print("\n".join(describe(outcome)))
            opener = urllib.request.build_opener()
            pair_id = outcome["votes"][0][0]
            status, answer, _ = request(opener, url + "/api/ab/vote", {"pair_id": pair_id, "choice": "a"})
            print(f"a second vote on a pair: {status} {answer.get('error')}")
            _, before, _ = request(opener, url + "/api/ab/results")
        finally:
            process.terminate()
            process.wait(30)
        process, url = start_studio(args.run_dir, work, args.ab_pool, args.ab_seconds)
        try:
            wait_for_pool(url)  # up again (the excerpts rendered before the restart are its pool)
            _, after, _ = request(urllib.request.build_opener(), url + "/api/ab/results")
        finally:
            process.terminate()
            process.wait(30)
        for result in after["comparisons"]:
            print(f"{result['name']}: {result['votes']} votes from {result['listeners']} listeners")
        print(f"results identical after a restart: {before == after}")


if __name__ == "__main__":
    main()
