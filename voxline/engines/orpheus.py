"""Orpheus TTS: a token stream from an OpenAI-compatible server, turned into 24 kHz audio.

Orpheus is a Llama fine-tune whose output tokens are SNAC codec codes: each
``<custom_token_N>`` (token id 128256 + N) with N >= 10 is one code, seven per
audio frame of 2 048 samples at 24 kHz, spread over SNAC's three codebooks. This
module speaks that protocol:

* :func:`orpheus_prompt` formats a request the way Orpheus was trained;
* :func:`stream_orpheus_tokens` streams ``/v1/completions`` (vLLM serving an
  Orpheus checkpoint) and yields the custom-token numbers; closing it closes the
  HTTP response, so the server stops generating;
* :class:`OrpheusFrames` maps tokens to codes and cuts the sliding windows: once
  28 codes (4 frames) exist and every 7 codes after, the last 28 are decoded
  and only samples [2048:4096] are kept — one frame with context on both sides —
  while the first window also gives the first frame and the end of the stream
  gives the last two, so no audio is lost.

Decoding itself is the shared SNAC engine's job (:mod:`voxline.engines.snac`).
No pipecat imports here.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import numpy as np

SAMPLE_RATE = 24_000
CODES_PER_FRAME = 7
SAMPLES_PER_FRAME = 2048
WINDOW_FRAMES = 4
WINDOW_CODES = WINDOW_FRAMES * CODES_PER_FRAME
CODEBOOK_SIZE = 4096
AUDIO_TOKEN_OFFSET = 10
END_OF_SPEECH = 2  # <custom_token_2>, token id 128258
VOICES = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")
_CUSTOM_TOKEN = re.compile(r"<custom_token_(\d+)>")


class OrpheusError(RuntimeError):
    """The Orpheus server failed, or streamed something that is not speech."""


@dataclass(frozen=True)
class OrpheusSampling:
    """Sampling settings Orpheus was tuned for (temperature 0.4-0.6, top_p 0.9, rep. >= 1.1)."""

    temperature: float = 0.6
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_tokens: int = 2048


def orpheus_prompt(voice: str, text: str) -> str:
    """The text prompt of one utterance: start-of-human, ``voice: text``, end markers.

    Token ids 128259, 128009, 128260, 128261, 128257 are written as the tokens a
    text-taking server (vLLM) maps back to them.
    """
    return (
        f"<custom_token_3><|begin_of_text|>{voice}: {text}<|eot_id|>"
        "<custom_token_4><custom_token_5><custom_token_1>"
    )


def token_to_code(number: int, index: int) -> int | None:
    """The SNAC code of the ``index``-th accepted audio token ``<custom_token_number>``.

    Returns None when the token is not a valid code for its position (0..4095).
    """
    code = number - AUDIO_TOKEN_OFFSET - (index % CODES_PER_FRAME) * CODEBOOK_SIZE
    return code if 0 <= code < CODEBOOK_SIZE else None


def frames_to_codebooks(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split codes of whole frames (``[..., 7 * F]``) into SNAC's three codebooks.

    A frame's seven codes go: codebook 0 gets f0; codebook 1 gets f1, f4;
    codebook 2 gets f2, f3, f5, f6. Returns arrays of shape ``[..., F]``,
    ``[..., 2F]`` and ``[..., 4F]``.
    """
    frames = codes.reshape(*codes.shape[:-1], -1, CODES_PER_FRAME)
    lead = codes.shape[:-1]
    first = frames[..., 0]
    second = frames[..., [1, 4]].reshape(*lead, -1)
    third = frames[..., [2, 3, 5, 6]].reshape(*lead, -1)
    return first, second, third


@dataclass
class AudioSlice:
    """Which samples of a decoded window to keep."""

    codes: np.ndarray
    start: int
    stop: int


@dataclass
class OrpheusFrames:
    """Turns custom-token numbers into the windows to decode, in order.

    Feed tokens with :meth:`push`; each returns the windows that became ready.
    :meth:`finish` returns what is left at the end of the stream.
    """

    codes: list[int] = field(default_factory=list)
    rejected: int = 0
    ended: bool = False
    _decoded_first: bool = False

    def push(self, number: int) -> list[AudioSlice]:
        """Accept one custom token; return windows now ready (at most one)."""
        if self.ended:
            return []
        if number == END_OF_SPEECH:
            self.ended = True
            return []
        if number < AUDIO_TOKEN_OFFSET:
            return []  # other control tokens carry no audio
        code = token_to_code(number, len(self.codes))
        if code is None:
            self.rejected += 1
            return []
        self.codes.append(code)
        count = len(self.codes)
        if count < WINDOW_CODES or count % CODES_PER_FRAME:
            return []
        window = np.asarray(self.codes[-WINDOW_CODES:], dtype=np.int64)
        if not self._decoded_first:
            # The very first window also gives frame 0, which no later window covers.
            self._decoded_first = True
            return [AudioSlice(window, 0, 2 * SAMPLES_PER_FRAME)]
        return [AudioSlice(window, SAMPLES_PER_FRAME, 2 * SAMPLES_PER_FRAME)]

    def finish(self) -> list[AudioSlice]:
        """The frames no window has given yet: the last two, or all of a short stream."""
        whole = len(self.codes) // CODES_PER_FRAME
        if whole == 0:
            return []
        if whole < WINDOW_FRAMES:
            codes = np.asarray(self.codes[: whole * CODES_PER_FRAME], dtype=np.int64)
            return [AudioSlice(codes, 0, whole * SAMPLES_PER_FRAME)]
        # The window of the last four frames was decoded when its last code came and
        # gave its second frame; its last two frames are still owed.
        window = np.asarray(
            self.codes[(whole - WINDOW_FRAMES) * CODES_PER_FRAME : whole * CODES_PER_FRAME],
            dtype=np.int64,
        )
        return [AudioSlice(window, 2 * SAMPLES_PER_FRAME, WINDOW_FRAMES * SAMPLES_PER_FRAME)]


async def stream_orpheus_tokens(
    client: httpx.AsyncClient,
    base_url: str,
    *,
    model: str,
    voice: str,
    text: str,
    sampling: OrpheusSampling,
) -> AsyncIterator[int]:
    """Stream the custom-token numbers Orpheus generates for ``text``.

    Closing the iterator (an interruption) closes the HTTP response: the server
    sees the client go and stops generating.

    Raises:
        OrpheusError: the server refused, was unreachable or broke off the stream.
    """
    url = base_url.rstrip("/") + "/v1/completions"
    body = {
        "model": model,
        "prompt": orpheus_prompt(voice, text),
        "stream": True,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "repetition_penalty": sampling.repetition_penalty,
        "stop_token_ids": [128256 + END_OF_SPEECH],
    }
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code >= 400:
                detail = (await response.aread()).decode(errors="replace")[:200]
                raise OrpheusError(f"{url} answered HTTP {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                for number in _custom_tokens(payload):
                    yield number
    except httpx.HTTPError as exc:
        raise OrpheusError(
            f"Orpheus stream from {url} failed: {type(exc).__name__}: {exc}"
        ) from None


def _custom_tokens(payload: str) -> list[int]:
    try:
        event = json.loads(payload)
        text = "".join(choice.get("text") or "" for choice in event.get("choices", []))
    except (ValueError, AttributeError, TypeError):
        raise OrpheusError(
            f"Orpheus server sent an event that is not JSON: {payload[:80]!r}"
        ) from None
    return [int(number) for number in _CUSTOM_TOKEN.findall(text)]
