"""The Runtime: loads the shared engines once per process and owns their lifetime.

Every call's pipeline is built from engines the Runtime hands out: one Whisper
model per model name, one Piper voice per voice, one LLM endpoint per server.
Engines load on first use by a persona (``prepare``), so a process that serves
one persona loads one set. Closing the Runtime stops the embedded LLM server
and releases the engines' threads, whether it closes normally, on Ctrl-C or on
an exception (use it as an ``async with`` block).

The embedded LLM server is the one ``engines.llm.backend`` names; the commands
resolve an unset backend first (``ServerConfig.for_command``: vLLM for ``serve``,
llama.cpp for ``talk``), and a Runtime given an unset one runs llama.cpp, the
engine that starts in a second.

An embedded server that dies is restarted by its supervisor
(:class:`~voxline.engines.server_process.SupervisedServer`); once it answers again,
the Runtime warms every persona's prompt prefix on it again. :class:`ServerHealth`
checks, on an interval, that every LLM and TTS server the personas use answers:
``/health/ready`` reads its verdict instead of asking the servers on every probe.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from types import TracebackType

from loguru import logger

from voxline import logcontent
from voxline.bot.call_events import CallEvents
from voxline.bot.llm_servers import LLMServers
from voxline.config import ServerConfig
from voxline.cpu_budget import CpuBudget
from voxline.engines import http_clients
from voxline.engines.lines import LineMemory
from voxline.engines.llm import (
    LLMEndpoint,
    check_endpoint,
)
from voxline.engines.piper import PiperEngine
from voxline.engines.server_process import LLMServerError, Progress
from voxline.engines.snac import SNACDecoder, load_snac
from voxline.engines.turn_model import EndOfTurnEngine, TurnModelError
from voxline.engines.whisper import WhisperEngine
from voxline.models import (
    ModelNotAvailableError,
    PiperVoiceFiles,
    resolve_piper,
    resolve_turn_model,
    resolve_whisper,
)
from voxline.personas import Persona
from voxline.processors.turn import TurnCounters


class Runtime:
    """Shared engines for every call served by this process.

    Args:
        config: the server configuration (engine settings, capacity).
        progress: told, one line at a time, what a slow start-up is doing (a model
            conversion, the LLM server loading, each persona's prefix warm-up).
    """

    def __init__(self, config: ServerConfig | None = None, progress: Progress | None = None):
        self.config = config or ServerConfig()
        logcontent.configure(self.config.log_content)
        self._progress = progress
        self._whisper: dict[str, WhisperEngine] = {}
        self._piper: dict[str, PiperEngine] = {}
        self._snac: SNACDecoder | None = None
        self._turn_models: dict[str, EndOfTurnEngine | None] = {}
        self.turn_counters = TurnCounters()
        self.calls = CallEvents()
        """Every call's start, turns and end, to its listeners (records, traces, dashboard)."""
        self.errors: Counter[str] = Counter()
        """Errors in every call's pipeline by kind (``stt``, ``llm``, ``tts``, ...): metrics."""
        self.llm = LLMServers(self.config, progress)
        """The LLM servers of the prepared personas: their clients, endpoints and pids."""
        self._tts_endpoints: set[LLMEndpoint] = set()
        self._lines: dict[tuple[str, ...], LineMemory] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Runtime:
        await http_clients.warm()  # the TLS context every HTTP client shares, off the loop
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def prepare(self, persona: Persona) -> None:
        """Load (once) every engine ``persona`` needs, and start or check its servers."""
        async with self._lock:
            started = time.monotonic()
            loaded = await asyncio.to_thread(self._load_local_engines, persona)
            if loaded:
                self._report(
                    f"persona {persona.name}: loaded {', '.join(loaded)} in "
                    f"{time.monotonic() - started:.1f} s"
                )
            await self.llm.prepare(persona)
            if persona.tts.engine == "orpheus" and persona.tts.base_url:
                # Fail at start, naming the URL, rather than in the first caller's ear.
                tts = LLMEndpoint(persona.tts.base_url, persona.tts.model)
                await check_endpoint(tts)
                self._tts_endpoints.add(tts)
            if self.config.engines.remember_lines:
                self._voice_lines(persona).want(persona.fixed_lines)

    def _load_local_engines(self, persona: Persona) -> list[str]:
        """Load what ``persona`` needs and no other persona loaded yet; say what was loaded."""
        loaded: list[str] = []
        if persona.stt.model not in self._whisper:
            settings = self.config.engines.whisper
            path = resolve_whisper(persona.stt.model)
            logger.info(f"loading whisper {persona.stt.model} from {path}")
            self._whisper[persona.stt.model] = WhisperEngine(
                path,
                device=settings.device,
                compute_type=settings.compute_type,
                cpu_threads=settings.cpu_threads or 1,
                num_workers=settings.num_workers or self.config.engines.budget.whisper_workers,
                max_batch=settings.max_batch,
                max_wait_ms=settings.max_wait_ms,
                max_queue=settings.max_queue,
                min_window_secs=settings.min_window_secs,
                share_queue=settings.share_queue,
            )
            self._whisper[persona.stt.model].warm_up()
            loaded.append(f"whisper {persona.stt.model}")
        if persona.turn.uses_model and persona.turn.model not in self._turn_models:
            budget = self.config.engines.budget
            self._turn_models[persona.turn.model] = _load_turn_model(persona, budget)
            loaded.append(f"end-of-turn model {persona.turn.model}")
        if persona.tts.engine == "orpheus" and self._snac is None:
            settings = self.config.engines.snac
            logger.info(f"loading SNAC decoder {settings.model} on {settings.device}")
            self._snac = SNACDecoder(
                load_snac(settings.model, device=settings.device),
                device=settings.device,
                max_batch=settings.max_batch,
                max_wait_ms=settings.max_wait_ms,
                max_queue=settings.max_queue,
            )
            self._snac.warm_up()
            loaded.append("SNAC decoder")
        if persona.tts.engine == "piper" and persona.tts.voice not in self._piper:
            files = resolve_piper(persona.tts.voice)
            if not isinstance(files, PiperVoiceFiles):
                files = _download_piper_voice(files)
            logger.info(f"loading piper voice {persona.tts.voice} from {files.model}")
            piper = self.config.engines.piper  # counts from the CPU budget (voxline/cpu_budget.py)
            self._piper[persona.tts.voice] = PiperEngine(
                files.model,
                files.config,
                use_cuda=piper.use_cuda,
                workers=piper.workers or 1,
                threads=piper.threads,
                max_queue=piper.max_queue,
                max_phonemes=piper.max_phonemes,
                busy_first_phonemes=piper.busy_first_phonemes,
                urgent_secs=None if piper.urgent_ms is None else piper.urgent_ms / 1000,
                urgent_before_first=piper.urgent_before_first,
            )
            self._piper[persona.tts.voice].warm_up()
            loaded.append(f"piper voice {persona.tts.voice}")
        return loaded

    def _report(self, line: str) -> None:
        if self._progress is not None:
            self._progress(line)

    async def check_servers(self, timeout: float = 2.0) -> list[LLMServerError]:
        """Ask every LLM and TTS server in use whether it answers; what is wrong, if anything.

        A server that took the connection but answered late is an
        :class:`~voxline.engines.server_process.LLMServerBusyError` among them.
        """
        endpoints = {backend.endpoint for backend in self.llm.backends}
        endpoints |= self._tts_endpoints

        async def problem(endpoint: LLMEndpoint) -> LLMServerError | None:
            try:
                await check_endpoint(endpoint, timeout=timeout)
            except LLMServerError as exc:
                return exc
            return None

        found = await asyncio.gather(*(problem(endpoint) for endpoint in endpoints))
        return sorted((error for error in found if error is not None), key=str)

    def whisper(self, persona: Persona) -> WhisperEngine:
        """The shared Whisper engine for ``persona`` (after :meth:`prepare`)."""
        return self._whisper[persona.stt.model]

    def end_of_turn(self, persona: Persona) -> EndOfTurnEngine | None:
        """The shared end-of-turn model for ``persona``, or None for ``turn.model: none``."""
        if not persona.turn.uses_model:
            return None
        return self._turn_models[persona.turn.model]

    @property
    def end_of_turn_engines(self) -> dict[str, EndOfTurnEngine]:
        """Every loaded end-of-turn model by name, for metrics."""
        return {name: engine for name, engine in self._turn_models.items() if engine is not None}

    def piper(self, persona: Persona) -> PiperEngine:
        """The shared Piper voice for ``persona`` (after :meth:`prepare`)."""
        return self._piper[persona.tts.voice]

    def lines(self, persona: Persona) -> LineMemory | None:
        """The fixed lines ``persona``'s voice keeps once a call has spoken them whole
        (after :meth:`prepare`), or None with ``engines.remember_lines: false``."""
        return self._voice_lines(persona) if self.config.engines.remember_lines else None

    def _voice_lines(self, persona: Persona) -> LineMemory:
        tts = persona.tts
        key = (
            ("orpheus", tts.base_url or "", tts.model, tts.voice or "")
            if tts.engine == "orpheus"
            else ("piper", tts.voice or "")
        )
        return self._lines.setdefault(key, LineMemory())

    @property
    def remembered_lines(self) -> dict[str, tuple[int, int]]:
        """Per voice name, for metrics: lines kept and requests played from memory (an
        Orpheus voice served by two servers is one name: its memories are summed)."""
        totals: dict[str, tuple[int, int]] = {}
        for key, memory in self._lines.items():
            kept, played = totals.get(key[-1], (0, 0))
            totals[key[-1]] = (kept + len(memory), played + memory.played)
        return totals

    def snac(self) -> SNACDecoder:
        """The shared SNAC decoder (after :meth:`prepare` of an Orpheus persona)."""
        if self._snac is None:
            raise RuntimeError("no Orpheus persona was prepared: the SNAC decoder is not loaded")
        return self._snac

    @property
    def piper_engines(self) -> dict[str, PiperEngine]:
        """Every loaded Piper voice by voice name, for metrics."""
        return dict(self._piper)

    @property
    def whisper_engines(self) -> dict[str, WhisperEngine]:
        """Every loaded Whisper engine by model name, for metrics."""
        return dict(self._whisper)

    async def close(self) -> None:
        """Stop launched servers and release engine threads. Safe to call twice."""
        await self.llm.close()
        whisper, piper = list(self._whisper.values()), list(self._piper.values())
        self._whisper, self._piper = {}, {}
        for whisper_engine in whisper:
            await whisper_engine.close()
        for piper_engine in piper:
            piper_engine.close()
        snac, self._snac = self._snac, None
        if snac is not None:
            await snac.close()
        turn_models, self._turn_models = list(self._turn_models.values()), {}
        for turn_model in turn_models:
            if turn_model is not None:
                await turn_model.close()


class TurnModelUnavailableError(ModelNotAvailableError):
    """The persona's end-of-turn model cannot be loaded (one line naming the file)."""


def _load_turn_model(persona: Persona, budget: CpuBudget) -> EndOfTurnEngine | None:
    """Load the persona's end-of-turn model, with the CPU budget's workers and threads;
    without it, refuse or fall back as the persona says."""
    settings = persona.turn
    try:
        path = resolve_turn_model(settings.model)
        logger.info(f"loading end-of-turn model {settings.model} from {path}")
        return EndOfTurnEngine(
            path,
            threshold=settings.model_threshold,
            threads=budget.turn_threads,
            workers=budget.turn_workers,
        )
    except (ModelNotAvailableError, TurnModelError) as exc:
        if settings.model_fallback:
            logger.warning(f"persona {persona.name}: {exc}; ending turns on silence alone")
            return None
        raise TurnModelUnavailableError(
            f"persona {persona.name}: {exc} (set turn.model_fallback: true to run without it)"
        ) from None


def _download_piper_voice(voice: str) -> PiperVoiceFiles:
    """Fetch a Piper voice by name into the user's cache (user machines only)."""
    from piper.download_voices import download_voice

    cache = Path.home() / ".cache" / "voxline" / "piper"
    cache.mkdir(parents=True, exist_ok=True)
    model = cache / f"{voice}.onnx"
    if not model.is_file():
        download_voice(voice, cache)
    return PiperVoiceFiles(model=model, config=cache / f"{voice}.onnx.json")
