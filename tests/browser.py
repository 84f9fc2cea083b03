"""A real headless Chromium for WebRTC tests: started by us, driven over CDP by Playwright.

Chromium is started with our own flags (not Playwright's launcher) so its process is ours to stop
by process group; Playwright only connects to it. Its fake microphone plays a WAV
file once (``%noloop``), then silence.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Chromium:
    """One headless Chromium whose microphone is ``microphone_wav``."""

    def __init__(self, microphone_wav: Path, *, width: int = 1024, height: int = 768):
        self.profile = Path(tempfile.mkdtemp(prefix="voxline-chromium-"))
        self.process = subprocess.Popen(
            [
                CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone_wav}%noloop",
                "--autoplay-policy=no-user-gesture-required",
                "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                f"--window-size={width},{height}", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.cdp_url = f"http://127.0.0.1:{self._debugging_port()}"

    def _debugging_port(self, timeout: float = 30.0) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.is_file() and (lines := marker.read_text().splitlines()):
                return int(lines[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            time.sleep(0.05)  # polling a file Chromium writes once, with a deadline
        self.stop()
        raise RuntimeError("chromium did not open its debugging port")

    def kill(self) -> None:
        """SIGKILL the whole browser, as if the machine vanished: no goodbye."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Stop the browser by its process group and delete its profile."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
