"""The optional LLM judge: does the call, as heard, satisfy a statement?

The judge reads the transcript of both sides as heard and the scenario's
``judge`` statement, and answers with a JSON verdict. It runs on the persona's
own LLM server by default, or on any OpenAI-compatible server (the scenario
file's ``judge.base_url``, ``judge.model``, ``judge.api_key_env``). A small model
is a weak judge: use a capable one for verdicts that matter.
"""

from __future__ import annotations

import json
import os
import re

import httpx
from pydantic import BaseModel, ValidationError

from voxline.scenarios.spec import Judge

JUDGE_PROMPT = """You grade a phone call between a caller and a voice bot.
Read the transcript and decide whether this statement is true of the bot:
STATEMENT: {statement}

TRANSCRIPT:
{transcript}

Answer with JSON only: {{"verdict": "yes" or "no", "reason": "one short sentence"}}"""

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"enum": ["yes", "no"]}, "reason": {"type": "string"}},
    "required": ["verdict", "reason"],
}


class Verdict(BaseModel):
    """The judge's answer."""

    verdict: str
    reason: str = ""

    @property
    def passed(self) -> bool:
        """Whether the judge found the statement true."""
        return self.verdict.strip().lower().startswith("yes")


class JudgeError(RuntimeError):
    """The judge's server did not answer, or not with a verdict."""


def transcript_text(transcript: list[tuple[str, str]]) -> str:
    """``bot: ...`` / ``caller: ...`` lines."""
    return "\n".join(f"{who}: {words}" for who, words in transcript)


async def judge(
    statement: str,
    transcript: list[tuple[str, str]],
    settings: Judge,
    *,
    default_base_url: str,
    default_model: str,
    timeout: float = 60.0,
) -> Verdict:
    """Ask the judge whether ``statement`` holds for the call.

    Raises:
        JudgeError: no verdict could be had (server down, an answer that is not one).
    """
    base_url = (settings.base_url or default_base_url).rstrip("/")
    if not base_url.endswith("/v1"):
        base_url += "/v1"
    headers = {}
    if settings.api_key_env and (key := os.environ.get(settings.api_key_env)):
        headers["Authorization"] = f"Bearer {key}"
    prompt = JUDGE_PROMPT.format(statement=statement, transcript=transcript_text(transcript))
    body = {
        "model": settings.model or default_model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0.0,
        "max_tokens": 80,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA},
        },
    }
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            url = f"{base_url}/chat/completions"
            response = await client.post(url, json=body, headers=headers)
            if response.is_error:
                # Not every server takes a JSON schema (llama.cpp's answers 500): ask again
                # without it; the prompt asks for the same JSON.
                del body["response_format"]
                response = await client.post(url, json=body, headers=headers)
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"] or ""
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JudgeError(f"the judge at {base_url} did not answer: {first_line}") from None
    return parse_verdict(content)


def parse_verdict(content: str) -> Verdict:
    """The verdict in the judge's answer: its JSON object, or a bare yes or no first.

    Raises:
        JudgeError: the answer holds neither.
    """
    match = re.search(r"\{.*\}", content, re.DOTALL)
    try:
        return Verdict.model_validate(json.loads(match.group(0) if match else content))
    except (ValueError, ValidationError):
        pass
    bare = re.match(r"\W*(yes|no)\b\W*(.*)", content, re.IGNORECASE | re.DOTALL)
    if bare:
        return Verdict(verdict=bare.group(1).lower(), reason=bare.group(2).strip()[:200])
    raise JudgeError(f"the judge's answer is not a verdict: {content[:200]!r}")
