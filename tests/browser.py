"""A real headless Chromium for WebRTC tests: started by us, driven over CDP by Playwright.

Chromium is started with our own flags (not Playwright's launcher) so its process is ours to stop
by process group; Playwright only connects to it. Its fake microphone plays a WAV
file once (``%noloop``), then silence; without a WAV it is Chromium's fake device, for a page
that brings its own microphone (``SCRIPTED_MICROPHONE``).
"""

from __future__ import annotations

import base64
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

    def __init__(self, microphone_wav: Path | None, *, width: int = 1024, height: int = 768):
        self.profile = Path(tempfile.mkdtemp(prefix="voxline-chromium-"))
        wav = f"--use-file-for-fake-audio-capture={microphone_wav}%noloop"
        wav_flags = [wav] if microphone_wav else []
        self.process = subprocess.Popen(
            [
                CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                *wav_flags,
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


# A microphone the test speaks into on cue: getUserMedia answers with a Web Audio stream, and
# ``window.scriptedMic.play(name)`` plays a clip loaded with ``load_clip`` into it (resolving
# when the clip has played). A caller can then react to what the page hears, which a WAV
# file that starts with the microphone cannot. Add it with ``page.add_init_script``.
SCRIPTED_MICROPHONE = """
(() => {
  const clips = {};
  let context = null, destination = null;
  const ready = () => {
    if (context) { return; }
    context = new AudioContext();
    destination = context.createMediaStreamDestination();
    // A microphone's own hiss (about -80 dBFS), looped: with no source playing, Chromium
    // sends the peer no audio at all, and the server takes the caller for gone.
    const hiss = context.createBuffer(1, context.sampleRate, context.sampleRate);
    const samples = hiss.getChannelData(0);
    for (let i = 0; i < samples.length; i++) { samples[i] = (Math.random() * 2 - 1) * 1e-4; }
    const floor = context.createBufferSource();
    floor.buffer = hiss;
    floor.loop = true;
    floor.connect(destination);
    floor.start();
  };
  navigator.mediaDevices.getUserMedia = async () => { ready(); return destination.stream; };
  window.scriptedMic = {
    load(name, rate, base64) {
      ready();
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const pcm = new Int16Array(bytes.buffer);
      const buffer = context.createBuffer(1, pcm.length, rate);
      const samples = buffer.getChannelData(0);
      for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
      clips[name] = buffer;
      return buffer.duration;
    },
    play(name) {
      const source = context.createBufferSource();
      source.buffer = clips[name];
      source.connect(destination);
      return new Promise((resolve) => {
        source.onended = () => resolve(performance.now());
        source.start();
      });
    },
  };
})();
"""


async def load_clip(page, name: str, pcm16: bytes, rate: int) -> float:
    """Hand the scripted microphone a clip of 16-bit mono PCM; returns its length in seconds."""
    clip = base64.b64encode(pcm16).decode("ascii")
    return await page.evaluate(
        "([name, rate, clip]) => window.scriptedMic.load(name, rate, clip)", [name, rate, clip]
    )
