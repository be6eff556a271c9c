"""Where the CPU goes while the viewer renders its full frame beside headless Chromium.

Drags the camera as ``benchmarks/viewer_fps.py`` does, then, for each full-resolution frame job
after a drag: its wall time, the time inside the NerfTree marcher, and the cores each thread of
this process (the renderer's numba threads among them) and the browser's processes used meanwhile
(sampled from /proc every 10 ms; Linux). ``--browser-nice`` lowers the browser's priority as
``viewer_fps.py --browser-nice`` does. One JSON object on stdout (and in ``--out``).

    python benchmarks/viewer_cpu_share.py --run RUN --baked --browser-nice 19
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from viewer_fps import drag  # noqa: E402

import turbonerf.bake.march_cpu as march_cpu  # noqa: E402
from turbonerf.app.runs import TreeOptions  # noqa: E402
from turbonerf.app.view import ViewOptions, start_view  # noqa: E402
from turbonerf.viewer import server as viewer_server  # noqa: E402
from turbonerf.viewer.browser import BrowserClient, browser_processes, browser_unavailable  # noqa: E402


def thread_ticks(pids: list[int]) -> dict[tuple[int, int], int]:
    """(pid, tid) -> user + system clock ticks so far."""
    out = {}
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            rest = stat[stat.rindex(")") + 2 :].split()
            out[(pid, int(tid))] = int(rest[11]) + int(rest[12])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--baked", action="store_true", help="the run's default tree")
    p.add_argument("--max-res", type=int, default=400)
    p.add_argument("--browser-nice", type=int, default=0)
    p.add_argument("--cycles", type=int, default=4)
    p.add_argument("--viewport", type=int, default=600)
    p.add_argument("--out", type=Path, help="write the results as JSON (stdout also carries viser's banner)")
    args = p.parse_args()
    reason = browser_unavailable()
    if reason:
        raise SystemExit(reason)

    jobs, marches = [], []  # (start, end, full) of frame jobs; (start, end) of marcher calls
    work, march = viewer_server.ClientSession.work, march_cpu.march_cpu

    def timed_work(session, job, deadline=float("inf")):
        t0 = time.perf_counter()
        spent = work(session, job, deadline)
        jobs.append((t0, t0 + spent, job.full, job.finished))
        return spent

    def timed_march(*a, **k):
        t0 = time.perf_counter()
        out = march(*a, **k)
        marches.append((t0, time.perf_counter()))
        return out

    viewer_server.ClientSession.work = timed_work
    march_cpu.march_cpu = timed_march
    samples = []
    server = start_view(args.run, ViewOptions(port=0, baked=args.baked, tree=TreeOptions(None), max_res=args.max_res))
    try:
        with BrowserClient(server.url, viewport=(args.viewport, args.viewport), nice=args.browser_nice) as browser:
            if not browser.wait_for_frames(1, timeout=120):
                raise SystemExit("no frame reached the browser")
            for session in server.clients():
                session.show_frustums.value = False
            browser.pump(2.0)
            pids = [os.getpid(), *browser_processes(os.getpid())]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    samples.append((time.perf_counter(), thread_ticks(pids)))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            starts = []
            for _ in range(args.cycles):
                starts.append(drag(browser, 3.0, (args.viewport // 3, args.viewport // 2)))
                end = time.perf_counter() + 1.0
                while time.perf_counter() < end:
                    browser.pump(0.01)
            stop.set()
            sampler.join()
    finally:
        server.stop()

    hz = os.sysconf("SC_CLK_TCK")
    rows = []
    for t_stop in starts:  # the first finished full frame after each drag
        job = next((j for j in jobs if j[2] and j[3] and j[0] > t_stop - 0.5 and j[1] > t_stop), None)
        if job is None or job[1] - job[0] < 0.03:
            continue
        a = min(samples, key=lambda s: abs(s[0] - job[0]))
        b = min(samples, key=lambda s: abs(s[0] - job[1]))
        span = b[0] - a[0]
        if span <= 0:
            continue
        cores = {k: (v - a[1].get(k, v)) / hz / span for k, v in b[1].items()}
        ours = sorted((c for (pid, _), c in cores.items() if pid == os.getpid()), reverse=True)
        rows.append({
            "job_ms": 1000 * (job[1] - job[0]),
            "march_ms": 1000 * sum(m1 - m0 for m0, m1 in marches if job[0] <= m0 and m1 <= job[1]),
            "renderer_busiest_threads_cores": [round(c, 2) for c in ours[:3]],
            "browser_cores": round(sum(c for (pid, _), c in cores.items() if pid != os.getpid()), 2),
        })
    result = {"run": str(args.run), "browser_nice": args.browser_nice, "max_res": args.max_res,
              "job_ms_median": statistics.median(r["job_ms"] for r in rows) if rows else None, "full_frames": rows}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
