"""A real browser as a client of the viewer: headless Chromium driven by Playwright, recording
every frame the server sends it. Used by the browser test, ``benchmarks/viewer_fps.py`` and the
README's screenshot (one harness for all three).

Playwright cannot download its own browser here, so it is pointed at an installed Chromium
(Debian's ``chromium`` package: ``/usr/bin/chromium``; or ``TURBONERF_CHROMIUM``). WebGL in headless
Chromium needs SwiftShader (``--enable-unsafe-swiftshader``); ``--no-sandbox`` lets it run as root.

Frames are counted at the client: every websocket message is decoded as viser's wire format
(16-byte header, zstd-compressed msgpack, raw buffers) and each ``BackgroundImageMessage`` is
recorded with its arrival time and JPEG size. The camera updates the page sends (msgpack
``ViewerCameraMessage``) are recorded with their times: the camera has stopped at the last one
(viser's controls ease the camera for a while after the mouse stops).

CPU priority: the browser draws WebGL in software on the same cores as the renderer it watches.
Chromium starts its processes in new sessions, and Linux's scheduler autogroups (on by default)
share the CPU between sessions, not processes: a busy browser took half of the 2-core machine
whatever its nice value, and a 60 ms lego frame took 150-270 ms (BENCHMARKS.md). ``nice`` lowers
the browser's share (its sessions' autogroup nice and every thread's nice), as a browser on
another machine or with a GPU leaves the cores to the server.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHROMIUM_ARGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--ignore-gpu-blocklist"]


def find_chromium() -> str | None:
    """Path of an installed Chromium (``TURBONERF_CHROMIUM``, else ``chromium`` /
    ``chromium-browser`` / ``google-chrome`` on PATH), or None."""
    env = os.environ.get("TURBONERF_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_unavailable() -> str | None:
    """Why a browser test cannot run here (missing Playwright or Chromium), or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install 'turbonerf[dev]')"
    if find_chromium() is None:
        return "no Chromium found (apt-get install chromium, or set TURBONERF_CHROMIUM)"
    return None


def browser_processes(pid: int) -> list[int]:
    """The Chromium processes descended from ``pid`` (read from /proc; Linux): Playwright's driver
    (node) stays as it is, since it carries the frames' arrival events."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError):  # gone meanwhile
                continue
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        found += kids
        frontier = kids
    return [p for p in found if "chrom" in _exe_name(p)]


def _exe_name(pid: int) -> str:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return ""


def lower_priority(pids: list[int], nice: int) -> int:
    """Give processes ``pids`` the CPU priority ``nice`` (all their threads, and the scheduler
    autogroup of any that sits in another session than this process); returns how many threads
    were changed. Does nothing where /proc has no such files (not Linux)."""
    own_group = _autogroup(Path("/proc/self/autogroup"))
    changed = 0
    for pid in pids:
        group = Path(f"/proc/{pid}/autogroup")
        try:
            theirs = _autogroup(group)
            if own_group is not None and theirs is not None and theirs != own_group:
                group.write_text(str(nice))
            for task in Path(f"/proc/{pid}/task").iterdir():
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
                changed += 1
        except (OSError, ValueError):  # gone meanwhile, or not allowed: leave it
            continue
    return changed


def _autogroup(path: Path) -> str | None:
    """The scheduler autogroup named in ``path`` (a /proc/<pid>/autogroup file, e.g.
    "/autogroup-208 nice 0"), or None where the file is missing, unreadable or empty (kernels and
    sandboxes without autogroups)."""
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    return fields[0] if fields else None


def background_frames(payload: bytes) -> list[np.ndarray]:
    """Each background image in one viser websocket message (bytes), as uint8 [H, W, 3]."""
    import msgspec
    import zstandard
    from PIL import Image

    if len(payload) < 16:
        return []
    inner_size = int.from_bytes(payload[:8], "little")
    compressed_size = int.from_bytes(payload[8:16], "little")
    inner = zstandard.ZstdDecompressor().decompress(payload[16:16 + compressed_size], max_output_size=inner_size)
    batch = msgspec.msgpack.decode(inner)
    buffers = _binary_buffers(payload, 16 + compressed_size, batch.get("binaryBufferLengths", ()))
    images = []
    for msg in batch.get("messages", ()):
        if msg.get("type") != "BackgroundImageMessage" or msg.get("rgb_data") is None:
            continue
        data = msg["rgb_data"]
        if isinstance(data, dict) and "__binary_index" in data:
            data = buffers[data["__binary_index"]]
        images.append(np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB")))
    return images


def is_camera_update(payload: bytes) -> bool:
    """Whether a message the page sent (viser's client sends plain msgpack) is a camera update."""
    import msgspec

    try:
        message = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError:
        return False
    return isinstance(message, dict) and message.get("type") == "ViewerCameraMessage"


def _binary_buffers(payload: bytes, offset: int, lengths) -> list[bytes]:
    out = []
    for n in lengths:
        offset += (8 - offset % 8) % 8
        out.append(payload[offset:offset + n])
        offset += n
    return out


@dataclass
class Frame:
    """A background image received by the browser: when (``time.perf_counter()``) and its size."""

    t: float
    width: int
    height: int


@dataclass
class BrowserClient:
    """Headless Chromium with the viewer page open (a context manager).

    Attributes:
        url: the viewer's address.
        viewport: (width, height) of the page in CSS pixels.
        frames: every background image received so far.
        last_image: the latest one, uint8 [H, W, 3].
    """

    url: str
    viewport: tuple[int, int] = (640, 480)
    nice: int = 0
    """CPU priority of the browser's processes (0: as the server's; 19: only what the server leaves)"""
    frames: list[Frame] = field(default_factory=list)
    last_image: np.ndarray | None = None
    camera_updates: list[float] = field(default_factory=list)
    """when (``time.perf_counter()``) the page sent each camera update to the server"""

    def __enter__(self) -> "BrowserClient":
        from playwright.sync_api import sync_playwright

        reason = browser_unavailable()
        if reason:
            raise RuntimeError(reason)
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS)
            self.page = self._browser.new_page(viewport={"width": self.viewport[0], "height": self.viewport[1]})
            self.page.on("websocket", self._watch)
            self.page.goto(self.url, timeout=120_000, wait_until="domcontentloaded")  # a loaded CPU serves slowly
            if self.nice:  # after the page opened: its renderer process exists by now
                lower_priority(browser_processes(os.getpid()), self.nice)
        except BaseException:
            self._pw.stop()
            raise
        return self

    def _watch(self, ws) -> None:
        ws.on("framereceived", self._on_message)
        ws.on("framesent", self._on_sent)

    def _on_sent(self, payload) -> None:
        if not isinstance(payload, str) and is_camera_update(payload):
            self.camera_updates.append(time.perf_counter())

    def _on_message(self, payload) -> None:
        if isinstance(payload, str):
            return
        now = time.perf_counter()
        for image in background_frames(payload):
            self.frames.append(Frame(now, image.shape[1], image.shape[0]))
            self.last_image = image

    def open_another_tab(self):
        """A second tab on the same page (another viser client; its frames are not recorded)."""
        page = self._browser.new_page(viewport={"width": self.viewport[0], "height": self.viewport[1]})
        page.goto(self.url, timeout=120_000, wait_until="domcontentloaded")
        return page

    def close_notifications(self) -> None:
        """Close viser's notifications (e.g. "Software WebGL rendering detected") if there are any."""
        buttons = self.page.locator("button[class*=closeButton]")
        for i in range(buttons.count()):
            try:
                buttons.nth(i).click(timeout=2000)
            except Exception:  # gone meanwhile, or not clickable: nothing to close
                pass

    def pump(self, seconds: float) -> None:
        """Let the browser run (and its events arrive) for ``seconds``."""
        self.page.wait_for_timeout(max(1, int(seconds * 1000)))

    def wait_for_frames(self, n: int, timeout: float, after: float = 0.0) -> bool:
        """Wait until ``n`` frames arrived after time ``after``; False on timeout."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            if sum(1 for f in self.frames if f.t > after) >= n:
                return True
            self.pump(0.02)
        return sum(1 for f in self.frames if f.t > after) >= n

    def screenshot(self, path: Path | None = None) -> np.ndarray:
        """The page as uint8 [H, W, 3] (also written to ``path`` as PNG when given)."""
        from PIL import Image

        png = self.page.screenshot(path=str(path) if path else None)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def __exit__(self, *exc) -> None:
        try:
            self._browser.close()
        finally:
            self._pw.stop()
