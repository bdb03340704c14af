"""A headless Chromium driven through the DevTools protocol over a pipe (no extra packages).

``--remote-debugging-pipe`` makes Chromium read protocol commands from file descriptor 3 and
write replies to descriptor 4, each message NUL-terminated JSON: no port, no websocket
client. Tests that need a real browser use :func:`browser_or_skip`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
]


def chromium_path() -> str | None:
    """Chromium's executable: $MVCLI_CHROMIUM, else ``chromium`` / ``chromium-browser`` on PATH."""
    explicit = os.environ.get("MVCLI_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


def browser_or_skip(timeout: float = 60.0) -> Browser:
    """A started :class:`Browser` (close it, or use it in ``with``), else skip the test with
    the reason: no Chromium here, or it cannot start headless."""
    path = chromium_path()
    if path is None:
        explicit = os.environ.get("MVCLI_CHROMIUM")
        pytest.skip(
            f"$MVCLI_CHROMIUM={explicit} is not a file"
            if explicit
            else "no Chromium on PATH (CI installs Debian's `chromium`; or set $MVCLI_CHROMIUM)"
        )
    browser = None
    try:
        browser = Browser(path, timeout=timeout)
        browser.__enter__()
        assert browser.evaluate("1 + 1") == 2
    except (OSError, RuntimeError, TimeoutError, StopIteration) as err:
        if browser is not None:
            browser.close()
        pytest.skip(f"Chromium ({path}) cannot run headless here: {err}")
    return browser


class Browser:
    """One headless Chromium with one page; ``evaluate`` runs JavaScript in it."""

    def __init__(self, executable: str, timeout: float = 60.0, size: tuple[int, int] = (1280, 900)):
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="mvcli-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child sees our pipe ends as its descriptors 3 (commands) and 4 (replies).
        self._process = subprocess.Popen(
            [
                executable,
                *FLAGS,
                f"--user-data-dir={self._profile}",
                f"--window-size={size[0]},{size[1]}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=_dup_to(to_browser_r, from_browser_w),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        self.session: str | None = None

    def __enter__(self) -> Browser:
        try:
            targets = self.send("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            attached = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)
            self.session = attached["sessionId"]
            self.send("Page.enable")
            self.send("Runtime.enable")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.send("Browser.close", _session=False, _timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    # -- the protocol ------------------------------------------------------------------------
    def send(self, method: str, _session: bool = True, _timeout: float | None = None, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if _session and self.session is not None:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (self.timeout if _timeout is None else _timeout)
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from Chromium in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium exited")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, event in enumerate(self._events):
                if event.get("method") == method:
                    return self._events.pop(i)
            self._events.append(self._read(deadline))

    # -- what tests use ------------------------------------------------------------------------
    def open(self, url: str) -> float:
        """Navigate and wait for the load event; returns the seconds it took."""
        self._events.clear()
        start = time.perf_counter()
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"cannot open {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired")
        return time.perf_counter() - start

    def evaluate(self, expression: str, await_promise: bool = False):
        """The value of a JavaScript expression (JSON-serialisable), exceptions raised."""
        result = self.send(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=await_promise,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError(f"JavaScript error: {text}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        import base64

        data = self.send("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)


def _dup_to(read_end: int, write_end: int):
    def child() -> None:
        # Fresh copies first, so neither end is overwritten by the other's dup2.
        read_copy, write_copy = os.dup(read_end), os.dup(write_end)
        os.dup2(read_copy, 3)
        os.dup2(write_copy, 4)

    return child
