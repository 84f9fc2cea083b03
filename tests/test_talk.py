"""``voxline talk`` end to end, and the embedded LLM server's lifetime.

These run the real pipeline in real time: Piper speaks the caller, Silero cuts
the utterance, Whisper transcribes it, SmolLM2 on a real llama.cpp server
answers, Piper speaks the reply, and Whisper checks what the caller heard.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

from tests.conftest import BANK_PERSONA, VOXLINE
from tests.speech import rms_dbfs, speech_16k, synthesize_wav, wer
from voxline.bot.runtime import Runtime
from voxline.engines.whisper import SAMPLE_RATE, WhisperEngine
from voxline.models import resolve_whisper
from voxline.personas import Persona, load_persona
from voxline.processors.sentence_chunker import SentenceChunker

QUESTION = "Hi, what is my account balance?"
SERVER_PID = re.compile(r"llama\.cpp server pid (\d+) starting")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def transcribe(audio: np.ndarray, rate: int) -> str:
    engine = WhisperEngine(resolve_whisper("tiny.en"))
    samples = audio.astype(np.float32) / 32768.0
    samples = soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)
    return engine.transcribe_blocking(samples, language="en").text


@pytest.mark.slow
def test_talk_answers_a_spoken_question(tmp_path, voxline_env):
    caller = synthesize_wav(QUESTION, tmp_path / "caller.wav")
    output = tmp_path / "reply.wav"
    result = subprocess.run(
        [VOXLINE, "talk", "--persona", str(BANK_PERSONA), "--input", str(caller),
         "--output", str(output), "--json"],
        capture_output=True, text=True, env=voxline_env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["persona"] == "bank_support"
    assert len(document["turns"]) == 1, document
    turn = document["turns"][0]
    print(f"\ncaller: {turn['caller']}\nbot: {turn['bot']}\nlatency: {turn['latency_ms']}")

    assert wer(QUESTION, turn["caller"]) <= 0.2, turn["caller"]
    assert turn["bot"], "the bot said nothing"
    for stage in ("stt", "llm_first_token", "tts_first_audio", "voice_to_voice"):
        assert turn["latency_ms"][stage] is not None and turn["latency_ms"][stage] > 0, stage

    audio, rate = soundfile.read(str(output), dtype="int16")
    assert rate == 22050
    assert audio.size / rate == pytest.approx(document["output_secs"], abs=0.05)
    assert rms_dbfs(audio) > -40, "the reply WAV holds no speech"
    heard = transcribe(audio, rate)
    said = f"{document['greeting']} {turn['bot']}"
    print(f"heard in reply.wav: {heard}")
    assert wer(said, heard) <= 0.35, (said, heard)

    pids = [int(pid) for pid in SERVER_PID.findall(result.stderr)]
    assert len(pids) == 1, result.stderr
    assert not process_alive(pids[0]), "the llama.cpp server outlived voxline talk"


def start_talk(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    """Start ``talk`` and return once its LLM server answers, with the server's pid."""
    caller = synthesize_wav(QUESTION, tmp_path / "caller.wav")
    process = subprocess.Popen(
        [VOXLINE, "talk", "--persona", str(BANK_PERSONA), "--input", str(caller),
         "--output", str(tmp_path / "reply.wav")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stderr is not None
    server_pid = None
    deadline = time.monotonic() + 120
    for line in process.stderr:
        if match := SERVER_PID.search(line):
            server_pid = int(match.group(1))
        if "llama.cpp server ready" in line:
            break
        assert time.monotonic() < deadline, "the LLM server did not start"
    assert server_pid is not None and process_alive(server_pid)
    return process, server_pid


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_talk_stops_the_llm_server(tmp_path, voxline_env, signum, code):
    process, server_pid = start_talk(tmp_path, voxline_env)
    try:
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert not process_alive(server_pid), "the llama.cpp server outlived voxline talk"


@pytest.mark.slow
async def test_runtime_stops_the_llm_server_on_an_exception():
    persona = load_persona(BANK_PERSONA)
    server_pid = None
    with pytest.raises(RuntimeError, match="boom"):
        async with Runtime() as runtime:
            await runtime.prepare(persona)
            [server_pid] = runtime.llm.pids
            assert process_alive(server_pid)
            raise RuntimeError("boom")
    assert server_pid is not None
    assert not process_alive(server_pid)


def chunks_after(reply: str, kept: str, persona: Persona) -> list[str]:
    """The chunks the persona's chunker cuts from ``reply`` after its first ``kept``
    words, each at its longest: the call's chunker may cut sooner on time, never later.
    """
    chunker = SentenceChunker(
        min_first_words=persona.chunking.min_first_words,
        max_chars=persona.chunking.max_chars,
    )
    if kept:
        chunker.push("Okay. ")  # past its first chunk, which has rules of its own
    rest = " ".join(reply.split()[len(kept.split()) :])
    return [*chunker.push(rest), *filter(None, [chunker.flush()])]


def words(text: str) -> list[str]:
    return [w for w in re.sub(r"[^a-z0-9' ]", " ", text.lower()).split() if w]


@pytest.mark.slow
async def test_barge_in_leaves_in_the_context_only_the_chunks_the_caller_heard():
    """The caller talks over the reply: the reply's assistant message keeps the chunks
    whose audio played and ends within one chunk of where the audio stopped."""
    from voxline.bot.talk import talk

    persona = load_persona(BANK_PERSONA)
    question = speech_16k("Can you tell me about your branch opening hours and your card services?")
    interruption = speech_16k("Wait, stop. I have another question.")
    async with Runtime() as runtime:
        result = await talk(
            persona,
            runtime,
            question,
            16_000,
            barge_in=interruption,
            barge_in_after_secs=4.0,
            timeout=120,
        )
        # The interrupted reply, cut into chunks as the chunker cut it for TTS, and how
        # long the persona's voice takes to say each.
        [reply] = [turn for turn in result.turns if turn.interrupted]
        voice = runtime.piper(persona)

        def secs(text: str) -> float:
            return len(voice.synthesize_all(text)) / 2 / voice.sample_rate if text else 0.0

        messages = [m for m in result.context if m["role"] in ("user", "assistant")]
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        after = messages[first_user + 1] if first_user + 1 < len(messages) else None
        kept = after["content"] if after is not None and after["role"] == "assistant" else ""
        following = chunks_after(reply.bot_text, kept, persona)
        kept_secs, next_secs = secs(kept), secs(following[0]) if following else 0.0

    # The caller's two utterances on the call's clock: the question, then the barge-in.
    voiced = result.caller_voiced
    gap = next(i for i in range(1, len(voiced)) if voiced[i] - voiced[i - 1] > 1.0)
    question_end, barge_in_start, barge_in_end = voiced[gap - 1], voiced[gap], voiced[-1]
    # What the caller heard of the reply: the bot audio played after the question and
    # before the answer to the barge-in (which takes more than a second to come).
    heard = sum(
        secs for start, secs in result.bot_frames if question_end < start < barge_in_end + 0.5
    )

    print(
        f"\nreply: {reply.bot_text!r}\nbarge-in at {barge_in_start - question_end:.2f} s "
        f"after the question; heard {heard:.2f} s of the reply\nkept in the context: "
        f"{kept!r} ({kept_secs:.2f} s); next chunk {following[:1]} ({next_secs:.2f} s)"
    )
    # The caller spoke over the reply once 4 s of it had played (talk's barge_in_after_secs
    # counts from the reply's first audio, not from the end of the question's tail).
    reply_start = min(start for start, _ in result.bot_frames if start > question_end)
    assert 3.9 <= barge_in_start - reply_start <= 4.5, (barge_in_start, reply_start)
    assert heard > 1.5, "the caller heard too little of the reply for a barge-in"
    assert words(reply.bot_text)[: len(words(kept))] == words(kept), (kept, reply.bot_text)
    assert following, "the barge-in came after the whole reply"
    # Every kept chunk was played; the chunk playing when the caller spoke is the only
    # heard one left out.
    assert kept_secs <= heard + 0.3, (kept_secs, heard)
    assert heard <= kept_secs + next_secs + 0.3, (heard, kept_secs, next_secs)
