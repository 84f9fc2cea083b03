"""Turn-taking: speculation and the end-of-turn model vs a fixed silence (issue 14).

The same 20 caller utterances (8 with a 0.6-1.0 s pause in mid-sentence) run twice
through the embedded stack (Whisper tiny.en, SmolLM2 on the embedded llama.cpp,
Piper), one call per utterance, with two versions of the bank persona:

* **off**: ``turn: {model: none, speculate: false}``: the turn ends after a fixed
  0.4 s of silence and nothing starts before that;
* **on**: the defaults: the Smart Turn v3.2 model decides at ``early_secs`` (0.2 s)
  of silence, STT, the LLM and the first TTS audio start there and play at the
  commit; an unfinished turn waits up to ``stop_secs`` (1.2 s).

The callers are spoken by espeak-ng (several voices, speeds and pitches; not the
Piper voice the bot and the tests use), resampled to 16 kHz, each voiced part
trimmed of its own leading and trailing silence so that a pause is exactly the
silence inserted. Paused utterances pause after words the Smart Turn model judges
unfinished ("I was wondering if you could", "... um").

Measured per mode:

1. server-side voice-to-voice of the reply to the whole utterance (``talk()`` with
   one shared :class:`~voxline.bot.runtime.Runtime`);
2. half-sentence replies: paused utterances where the caller heard the bot answer the
   first half: its voice before the caller's last word (in the pause), or a reply whose
   caller words hold nothing of the second half. What was heard is the bot's audio as
   played and the call's LLM context at the end, cut to what was played: a reply
   withdrawn before a sound of it played is no reply. An utterance without a pause is
   "answered more than once" on the same evidence;
3. WER of the caller transcripts against the text espeak-ng said;
4. latency heard by a phone caller: ``voxline serve`` with one number per mode,
   called with the Twilio-protocol caller, one call at a time (caller's last voiced
   frame sent -> first voiced bot frame received);
5. barge-in: each espeak-ng voice says "Wait, stop." 1.5 s into a long greeting (the
   "on" settings): how soon after the caller's onset the bot's audio went quiet.

    .venv/bin/python -m benchmarks.turn_latency            # 20 utterances, 8 phone calls a mode
    .venv/bin/python -m benchmarks.turn_latency --quick    # 6 utterances, 3 phone calls a mode
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import p50, p95, serve_voxline  # noqa: E402
from tests.servers import ServerProcess  # noqa: E402
from tests.speech import normalize  # noqa: E402
from voxline.bench.callers import (  # noqa: E402
    SAMPLE_RATE,
    UTTERANCES,
    Utterance,
    caller_clip,
    espeak,
    silence,
)
from voxline.bench.calls import bot_voiced_at  # noqa: E402
from voxline.bot.runtime import Runtime  # noqa: E402
from voxline.bot.talk import TalkResult, TalkTimeoutError, talk  # noqa: E402
from voxline.personas import Persona, load_persona  # noqa: E402
from voxline.processors.turn_trace import TurnTrace  # noqa: E402
from voxline.transports.levels import is_voiced  # noqa: E402
from voxline.transports.twilio_caller import TwilioCaller  # noqa: E402

TOKEN = "turn-latency-benchmark-token"
MODES = ("off", "on")
NUMBERS = {"off": "+15550100040", "on": "+15550100041"}
# One short sentence: the caller waits for it before speaking, 40 times.
GREETING = "Northwind Bank, how can I help?"
FILLERS = {"um", "uh", "erm", "hmm"}
"""Said by the callers, left out of WER: Whisper drops them as often as not."""

# espeak-ng voice, words per minute, pitch.
VOICES = [
    ("en-us", 150, 50),
    ("en-gb", 140, 45),
    ("en-us+f3", 165, 60),
    ("en-us+m3", 175, 40),
    ("en-gb+f2", 155, 55),
    ("en-us", 145, 58),
    ("en-gb", 170, 48),
]


QUICK = [0, 1, 2, 3, 4, 5]
PHONE = [0, 1, 2, 3, 4, 5, 8, 9]
PHONE_QUICK = [0, 1, 2]


# --- the callers' audio -------------------------------------------------------------


def longest_gap_secs(audio: np.ndarray) -> float:
    """The longest run of unvoiced 20 ms frames inside a clip (its pauses)."""
    size = SAMPLE_RATE // 50
    pcm = (audio[: audio.size // size * size] * 32767).astype(np.int16).reshape(-1, size)
    voiced = [is_voiced(frame) for frame in pcm]
    last = len(voiced) - voiced[::-1].index(True) if any(voiced) else 0
    longest = run = 0
    for flag in voiced[:last]:
        run = 0 if flag else run + 1
        longest = max(longest, run)
    return longest / 50


# --- the personas ---------------------------------------------------------------------


BARGE_IN_GREETING = (
    "Hello, you have reached Northwind Bank. I can help you with your balance, your cards, "
    "your transfers and our branch opening hours. Please tell me what you need today."
)
"""Long enough to be talked over: callers say "Wait, stop." 1.5 s into it."""


def write_personas(tmp: Path) -> dict[str, Path]:
    """The bank persona at temperature 0 with a one-sentence greeting, off and on, and
    "barge": on, with a long greeting to interrupt."""
    bank = yaml.safe_load((ROOT / "personas" / "bank_support.yaml").read_text())
    bank["greeting"] = GREETING
    bank["llm"]["temperature"] = 0
    bank["tools_dir"] = str(ROOT / "tools")
    # Each mode takes its own default stop_secs (0.4 s without a model, 1.2 s with one).
    turn = {key: value for key, value in bank["turn"].items() if key != "stop_secs"}
    variants = {
        # The turn-taking before speculation: a fixed silence ends the turn, and only
        # then does anything (Whisper included) start.
        "off": {**turn, "model": "none", "speculate": False, "question_ends_turn": False},
        "on": turn,
    }
    paths = {}
    for mode, settings in variants.items():
        path = tmp / f"bank_turn_{mode}.yaml"
        path.write_text(yaml.safe_dump({**bank, "name": f"bank_turn_{mode}", "turn": settings}))
        paths[mode] = path
    barge = tmp / "bank_turn_barge.yaml"
    barge.write_text(
        yaml.safe_dump(
            {**bank, "name": "bank_turn_barge", "greeting": BARGE_IN_GREETING, "turn": turn}
        )
    )
    paths["barge"] = barge
    return paths


# --- one call through talk() ------------------------------------------------------------


@dataclass
class Run:
    """One utterance through one mode."""

    index: int
    mode: str
    turns: list[TurnTrace] = field(default_factory=list)
    context: list[dict] = field(default_factory=list)
    spoke_before_the_end: bool = False
    """The caller heard the bot's voice between their first and their last word."""
    error: str | None = None

    @property
    def replies(self) -> list[TurnTrace]:
        return [turn for turn in self.turns if turn.bot_text.strip()]

    @property
    def answers(self) -> list[str]:
        """The caller's words each reply they heard answered (the words since the reply
        before it), from the context cut to what was played; the greeting answers none."""
        answered, words = [], []
        for message in self.context:
            content = str(message.get("content") or "").strip()
            if message.get("role") == "user" and content:
                words.append(content)
            elif message.get("role") == "assistant" and content and words:
                answered.append(" ".join(words))
                words = []
        return answered

    @property
    def caller_text(self) -> str:
        return " ".join(turn.caller_text for turn in self.turns if turn.caller_text)

    @property
    def voice_to_voice(self) -> float | None:
        """Of the reply to the caller's last words: the last turn that has one."""
        for turn in reversed(self.turns):
            value = turn.latencies_ms()["voice_to_voice"]
            if value is not None:
                return value
        return None

    def half_sentence(self, utterance: Utterance) -> bool:
        """The bot answered the first half of a paused utterance on its own."""
        if not utterance.paused:
            return False
        return self.answered_early or any(first_half_only(text, utterance) for text in self.answers)

    @property
    def answered_early(self) -> bool:
        """The caller heard more than one reply, or the bot before they were done."""
        return self.spoke_before_the_end or len(self.answers) > 1


def caller_span(result: TalkResult) -> tuple[float, float]:
    """The caller's first and last voiced frame, on the call's clock."""
    if not result.caller_voiced:
        return 0.0, 0.0
    return min(result.caller_voiced), max(result.caller_voiced)


def voiced_between(result: TalkResult, start: float, end: float) -> bool:
    """Whether the bot's audio as played has a voiced 20 ms frame in [start, end)."""
    frame = result.sample_rate // 50
    for index in range(int(start * 50), int(end * 50)):
        piece = result.audio[index * frame : (index + 1) * frame]
        if piece.size == frame and is_voiced(piece):
            return True
    return False


def first_half_only(caller_text: str, utterance: Utterance) -> bool:
    """``caller_text`` holds no word that only the second half of ``utterance`` has."""
    first = set(normalize(utterance.first).split())
    second = [word for word in normalize(utterance.second).split() if word not in first]
    heard = set(normalize(caller_text).split())
    return not heard.intersection(second)


async def run_talks(
    utterances: list[tuple[int, Utterance, np.ndarray]], personas: dict[str, Persona], tmp: Path
) -> tuple[dict[str, list[Run]], list[BargeIn]]:
    """Every utterance through both modes, alternating which goes first; then the
    barge-ins."""
    runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
    async with Runtime() as runtime:
        for persona in personas.values():
            await runtime.prepare(persona)
        warm = np.concatenate([silence(0.2), utterances[1][2]])
        for mode in MODES:  # first runs of Whisper, the LLM and Piper in this process
            await talk(personas[mode], runtime, warm, SAMPLE_RATE, timeout=60)
        for position, (index, utterance, audio) in enumerate(utterances):
            order = MODES if position % 2 == 0 else MODES[::-1]
            for mode in order:
                run = Run(index, mode)
                began = time.monotonic()
                try:
                    # A call id of its own, as every call of voxline serve has: the
                    # server's prompt cache must not serve one mode the question the
                    # other mode's call asked (~45 against ~150 ms to a first token).
                    facts = {"Channel": "benchmark", "Call id": f"turn-{position}-{mode}"}
                    result = await talk(
                        personas[mode], runtime, audio, SAMPLE_RATE, timeout=60, facts=facts
                    )
                    run.turns = result.turns
                    run.context = result.context
                    run.spoke_before_the_end = voiced_between(result, *caller_span(result))
                except TalkTimeoutError as exc:
                    run.error = str(exc)
                runs[mode].append(run)
                describe(run, utterance, time.monotonic() - began)
        interruptions = await barge_ins(personas["barge"], runtime, tmp)
    return runs, interruptions


@dataclass
class BargeIn:
    """One "Wait, stop." over the greeting: how soon the caller stopped hearing the bot."""

    voice: str
    heard_ms: float | None = None  # the caller's onset -> the bot's audio went quiet
    server_ms: float | None = None  # the onset -> the turn-taker interrupted the bot
    reason: str = ""


async def barge_ins(persona: Persona, runtime: Runtime, tmp: Path) -> list[BargeIn]:
    """Every voice says "Wait, stop." 1.5 s into the long greeting, once."""
    results = []
    for voice in VOICES:
        clip = np.concatenate([espeak("Wait, stop.", voice, tmp), silence(0.2)])
        outcome = BargeIn(" ".join(map(str, voice)))
        try:
            result = await talk(
                persona, runtime, clip, SAMPLE_RATE, timeout=60, over_greeting_after_secs=1.5
            )
        except TalkTimeoutError as exc:
            outcome.reason = f"ERROR {exc}"
        else:
            onset = result.caller_voiced[0]
            quiet = result.bot_quiet_from(onset)
            if quiet is not None:
                outcome.heard_ms = round((quiet - onset) * 1000)
            interrupted = [t.barge_in_ms for t in result.turns if t.barge_in_ms is not None]
            outcome.server_ms = interrupted[0] if interrupted else None
        results.append(outcome)
        print(
            f"[barge-in {outcome.voice}] heard={outcome.heard_ms}ms "
            f"server={outcome.server_ms}ms {outcome.reason}",
            flush=True,
        )
    return results


def describe(run: Run, utterance: Utterance, secs: float) -> None:
    """One line per run: what was heard and answered, and the turn-taking events."""
    v2v = run.voice_to_voice
    pieces = [
        f"[{run.index:>2} {run.mode:>3}]",
        f"v2v={v2v:.0f}ms" if v2v is not None else "v2v=-",
        f"turns={len(run.turns)} replies={len(run.replies)} heard={len(run.answers)}"
        + (" spoke-early" if run.spoke_before_the_end else ""),
    ]
    if run.error:
        pieces.append(f"ERROR {run.error}")
    for turn in run.turns:
        taking = turn.as_dict()["turn_taking"]
        decisions = ",".join(f"{d['p']:.2f}" for d in taking["decisions"])
        pieces.append(
            f"| {turn.caller_text!r} -> {turn.bot_text.strip()[:40]!r} "
            f"spec={taking['speculative_starts']} cancel={','.join(taking['cancellations'])} "
            f"p=[{decisions}] commit={taking['commit_reason']} reused={taking['reused']}"
            + (" INTERRUPTED" if turn.interrupted else "")
        )
    if run.half_sentence(utterance):
        pieces.append("HALF-SENTENCE REPLY")
    print(" ".join(pieces) + f" ({secs:.0f}s)", flush=True)


# --- phone calls through voxline serve ---------------------------------------------------


@dataclass
class Heard:
    """One phone call: the caller's heard latency, or why it does not count."""

    index: int
    mode: str
    latency_ms: float | None = None
    over_caller: bool = False  # the bot was already speaking at the caller's last word
    error: str | None = None


async def phone_calls(
    url: str, utterances: list[tuple[int, Utterance, np.ndarray]]
) -> dict[str, list[Heard]]:
    """Each utterance called in to each mode's number, one call at a time."""
    calls: dict[str, list[Heard]] = {mode: [] for mode in MODES}
    for position, (index, _, audio) in enumerate(utterances):
        order = MODES if position % 2 == 0 else MODES[::-1]
        for mode in order:
            heard = Heard(index, mode)
            caller = TwilioCaller(url, auth_token=TOKEN, number=NUMBERS[mode])
            try:
                result = await caller.call(audio, SAMPLE_RATE, hang_up_after_quiet=-1, timeout=90)
            except Exception as exc:  # reported; the next call goes on
                heard.error = f"{type(exc).__name__}: {exc}"
            else:
                if not result.turns or result.turns[-1].latency_ms is None:
                    heard.error = "no answer heard"
                else:
                    turn = result.turns[-1]
                    heard.latency_ms = turn.latency_ms
                    heard.over_caller = bot_voiced_at(
                        result.heard, turn.caller_end - 0.3, turn.caller_end
                    )
            calls[mode].append(heard)
            status = heard.error or (
                f"heard={heard.latency_ms:.0f}ms"
                + (" (bot already speaking at the caller's last word)" if heard.over_caller else "")
            )
            print(f"[{index:>2} {mode:>3}] phone {status}", flush=True)
            await asyncio.sleep(1.0)  # let the server end the call before the next one
    return calls


def serve(personas: dict[str, Path], tmp: Path, llm: str | None) -> tuple[ServerProcess, str]:
    """``voxline serve`` with one number a mode, on its default LLM backend or ``llm``."""
    numbers = {NUMBERS[mode]: personas[mode] for mode in MODES}
    return serve_voxline(
        tmp,
        numbers=numbers,
        default_persona=personas["off"],
        token=TOKEN,
        max_calls=2,
        engines={"llm": {"backend": llm}} if llm else None,
    )


# --- figures ------------------------------------------------------------------------------


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate over all utterances, numbers spelled out, fillers left out."""

    def words(text: str) -> str:
        return " ".join(word for word in normalize(text).split() if word not in FILLERS)

    return float(jiwer.wer([words(r) for r in references], [words(h) or "-" for h in hypotheses]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 utterances, 3 phone calls")
    parser.add_argument("--no-phone", action="store_true", help="skip the phone calls")
    parser.add_argument(
        "--llm",
        choices=["vllm", "llama_cpp"],
        help="the phone calls' LLM backend (default: serve's own, vLLM)",
    )
    args = parser.parse_args()
    began = time.monotonic()

    tmp = Path(tempfile.mkdtemp(prefix="turn_latency_"))
    chosen = QUICK if args.quick else list(range(len(UTTERANCES)))
    utterances = []
    for index in chosen:
        utterance = UTTERANCES[index]
        voice = VOICES[index % len(VOICES)]
        audio = caller_clip(utterance, voice, tmp)
        utterances.append((index, utterance, audio))
        gap = longest_gap_secs(audio[: -int(0.2 * SAMPLE_RATE)])
        print(
            f"utterance {index:>2}: {audio.size / SAMPLE_RATE:.1f}s, longest gap {gap:.2f}s, "
            f"{' '.join(map(str, voice))}: {utterance.first!r}"
            + (f" <{utterance.pause:.1f}s> {utterance.second!r}" if utterance.paused else "")
        )

    paths = write_personas(tmp)
    personas = {mode: load_persona(path) for mode, path in paths.items()}
    for mode, persona in personas.items():
        print(
            f"{mode}: turn model={persona.turn.model} speculate={persona.turn.speculate} "
            f"early_secs={persona.turn.early_secs} stop_secs={persona.turn.stop_secs}"
        )
    runs, interruptions = asyncio.run(run_talks(utterances, personas, tmp))
    print(f"talk() runs done after {time.monotonic() - began:.0f}s", flush=True)

    calls: dict[str, list[Heard]] = {mode: [] for mode in MODES}
    if not args.no_phone:
        subset = [item for item in utterances if item[0] in (PHONE_QUICK if args.quick else PHONE)]
        server, url = serve(paths, tmp, args.llm)
        print(f"phone calls: voxline serve, LLM backend {args.llm or 'default (vllm)'}")
        try:
            calls = asyncio.run(phone_calls(url, subset))
        finally:
            code = server.stop()
            if code not in (0, -15):
                print(f"voxline serve exited {code}:\n" + server.output[-3000:])
        print(f"phone calls done after {time.monotonic() - began:.0f}s", flush=True)

    texts = {index: utterance for index, utterance, _ in utterances}
    paused = sum(utterance.paused for utterance in texts.values())
    summary: dict[str, dict[str, float]] = {}
    for mode in MODES:
        v2v = [run.voice_to_voice for run in runs[mode] if run.voice_to_voice is not None]
        heard = [
            call.latency_ms
            for call in calls[mode]
            if call.latency_ms is not None and not call.over_caller
        ]
        turns = [turn for run in runs[mode] for turn in run.turns]
        half = sum(run.half_sentence(texts[run.index]) for run in runs[mode])
        error = corpus_wer(
            [texts[run.index].text for run in runs[mode]], [run.caller_text for run in runs[mode]]
        )
        extra = sum(run.answered_early for run in runs[mode] if not texts[run.index].paused)
        reasons = [turn.commit_reason for turn in turns]
        summary[mode] = {
            "p50": p50(v2v),
            "p95": p95(v2v),
            "heard_p50": p50(heard),
            "half": half,
            "wer": error,
        }
        print(
            f"{mode}: server v2v p50={p50(v2v):.0f}ms p95={p95(v2v):.0f}ms "
            f"(n={len(v2v)}/{len(runs[mode])}, errors={sum(bool(r.error) for r in runs[mode])})"
        )
        print(
            f"{mode}: heard on the phone p50={p50(heard):.0f}ms p95={p95(heard):.0f}ms "
            f"(n={len(heard)}/{len(calls[mode])}, bot already speaking="
            f"{sum(c.over_caller for c in calls[mode])}, "
            f"failed={sum(bool(c.error) for c in calls[mode])})"
        )
        print(
            f"{mode}: half-sentence replies {half}/{paused} paused utterances; "
            f"unpaused utterances answered more than once: {extra}; WER {error:.3f}"
        )
        print(
            f"{mode}: speculative starts={sum(t.speculative_starts for t in turns)} "
            f"cancellations={sum(len(t.cancellations) for t in turns)} "
            f"reused={sum(t.reused for t in turns)} "
            f"commits by model={reasons.count('model')} question={reasons.count('question')} "
            f"sentence={reasons.count('sentence')} silence={reasons.count('silence')} "
            f"turns={len(turns)}"
        )
        stages = ("commit", "stt", "llm_first_token", "first_chunk", "tts_first_audio")
        answered = [turn.latencies_ms() for turn in turns if turn.bot_text.strip()]
        medians = {
            stage: p50([v for t in answered if (v := t[stage]) is not None]) for stage in stages
        }
        print(f"{mode}: stage medians (ms) " + " ".join(f"{k}={v:.0f}" for k, v in medians.items()))
    # "Speculation never makes a caller wait longer than without it": the same utterance,
    # one without a pause (a paused one gets a reply to its first half with "off").
    v2v_of = {
        mode: {run.index: run.voice_to_voice for run in runs[mode] if run.voice_to_voice}
        for mode in MODES
    }
    whole = [i for i in v2v_of["on"] if i in v2v_of["off"] and not texts[i].paused]
    later = sorted(v2v_of["on"][i] - v2v_of["off"][i] for i in whole)
    print(
        f"unpaused utterances answered later with speculation on: "
        f"{sum(d > 0 for d in later)}/{len(whole)}"
        + (f" (on - off: {later[0]:+.0f} to {later[-1]:+.0f} ms)" if later else "")
    )
    stopped = [b.heard_ms for b in interruptions if b.heard_ms is not None]
    print(
        f'barge-in ("Wait, stop." over the greeting): heard p50={p50(stopped):.0f}ms '
        f"p95={p95(stopped):.0f}ms (n={len(stopped)}/{len(interruptions)}); turn-taker "
        f"p50={p50([b.server_ms for b in interruptions if b.server_ms is not None]):.0f}ms"
    )
    print(f"total {time.monotonic() - began:.0f}s")
    off, on = summary["off"], summary["on"]
    print(
        f"turn_latency: off p50={off['p50']:.0f}ms p95={off['p95']:.0f}ms | "
        f"on p50={on['p50']:.0f}ms p95={on['p95']:.0f}ms | ratio={off['p50'] / on['p50']:.2f} | "
        f"heard on p50={on['heard_p50']:.0f}ms | "
        f"half-sentence off={off['half']} on={on['half']} | "
        f"wer off={off['wer']:.3f} on={on['wer']:.3f} | barge-in p50={p50(stopped):.0f}ms"
    )


if __name__ == "__main__":
    main()
