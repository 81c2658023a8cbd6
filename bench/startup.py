"""`evpilot run` with the default config: time to the first HTTP 200 and peak RSS.

Starts the real command as a subprocess on a free port with a fresh data directory, polls
GET /api/site until it answers 200, and reads the process's peak RSS (VmHWM in
/proc/<pid>/status) right then and again after it has served the status page, the OpenAPI
document and a few seconds of control ticks. Repeats and prints the median.
Goals: first 200 ≤ 3 s, peak RSS ≤ 100 MB.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port

GOAL_START_S = 3.0
GOAL_RSS_MB = 100.0


def command() -> list[str]:
    """The `evpilot` console script next to this interpreter, or `python -m evpilot`."""
    script = Path(sys.executable).with_name("evpilot")
    if script.exists():
        return [str(script)]
    found = shutil.which("evpilot")
    return [found] if found else [sys.executable, "-m", "evpilot"]


def get(port: int, path: str) -> int:
    """Status code of a GET, or 0 if the server is not answering yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return 0
    finally:
        conn.close()


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set size) of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc status")


def once(settle_s: float) -> tuple[float, float, float]:
    """One start: (seconds to first 200, peak RSS at that moment, peak RSS after settling)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="evpilot-bench-") as tmp:
        args = [*command(), "run", "--http", f"127.0.0.1:{port}", "--data-dir", tmp, "--log-level", "WARNING"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"evpilot exited with {proc.returncode}: {proc.stderr.read()}")
                if get(port, "/api/site") == 200:
                    break
                if time.perf_counter() - t0 > 60:
                    raise RuntimeError("no HTTP 200 within 60 s")
                time.sleep(0.01)
            first = time.perf_counter() - t0
            rss_first = peak_rss_mb(proc.pid)
            for path in ("/", "/openapi.json", "/api/chargers", "/api/site"):
                get(port, path)
            time.sleep(settle_s)
            rss_after = peak_rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return first, rss_first, rss_after


def main(argv: list[str] | None = None) -> int:
    """Run the starts and print the medians."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="number of starts (default 5)")
    p.add_argument("--settle", type=float, default=3.0, help="seconds to keep running after the first 200")
    args = p.parse_args(argv)
    print(f"{'run':>3} {'first 200 s':>12} {'RSS at 200 MB':>14} {'peak RSS MB':>12}")
    results = []
    for i in range(args.runs):
        r = once(args.settle)
        results.append(r)
        print(f"{i + 1:3d} {r[0]:12.3f} {r[1]:14.1f} {r[2]:12.1f}", flush=True)
    first = statistics.median(r[0] for r in results)
    rss = statistics.median(r[2] for r in results)
    print(f"median: first 200 {first:.3f} s (goal ≤ {GOAL_START_S:g} s, ratio {first / GOAL_START_S:.2f})")
    print(f"median: peak RSS {rss:.1f} MB (goal ≤ {GOAL_RSS_MB:g} MB, ratio {rss / GOAL_RSS_MB:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
