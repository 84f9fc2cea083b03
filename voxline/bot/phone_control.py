"""What a phone call's own controls do: hang up after a goodbye, transfer, press keys.

These back the built-in tools (``end_call``, ``transfer_call``, ``send_dtmf``)
and the ``max_call_secs`` limit on Twilio calls.
"""

from __future__ import annotations

import httpx
from loguru import logger
from pipecat.frames.frames import EndFrame
from pipecat.pipeline.worker import PipelineWorker

from voxline import logcontent
from voxline.processors.frames import spoken_line
from voxline.transports.twilio import TwilioStream
from voxline.transports.twilio_output import MarkGate
from voxline.transports.twilio_webhook import TwilioRestClient, dial_twiml

GOODBYE_TIMEOUT_SECS = 15.0


async def say_goodbye_and_hang_up(
    worker: PipelineWorker,
    stream: TwilioStream,
    gate: MarkGate,
    rest: TwilioRestClient | None,
    goodbye: str,
    *,
    interruptible: bool = True,
) -> None:
    """Say ``goodbye``, wait until Twilio confirms it played, then end the call.

    "Played" means Twilio acknowledged the marks of the goodbye's own words (or the
    caller talked over it), not merely that the audio queued before it drained.
    With Twilio credentials the call is completed through the REST API; without
    them, ending the ``<Connect>`` stream is what ends the call. Either way the
    call's pipeline ends.
    """
    since = gate.mark()
    await worker.queue_frame(spoken_line(goodbye, interruptible=interruptible))
    if not await gate.wait_heard(goodbye, since, timeout=GOODBYE_TIMEOUT_SECS):
        if gate.interruptions > since[1]:
            logger.info(f"call {stream.call_sid}: the caller talked over the goodbye")
        else:
            logger.warning(f"call {stream.call_sid}: goodbye not confirmed; hanging up")
    if rest is not None:
        try:
            await rest.hang_up(stream.call_sid)
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            logger.error(f"call {stream.call_sid}: REST hang-up failed ({exc}); closing the stream")
    await worker.queue_frame(EndFrame())


class TwilioCallControl:
    """The call controls of one Twilio call.

    Args:
        stream: the call's media stream (its call SID).
        gate: the call's mark gate (to know when the goodbye has played).
        rest: Twilio's REST API, or None without credentials.
        goodbye: what to say before hanging up when no other words are given.
        goodbye_interruptible: whether the caller can talk over the goodbye.
    """

    def __init__(
        self,
        *,
        stream: TwilioStream,
        gate: MarkGate,
        rest: TwilioRestClient | None,
        goodbye: str,
        goodbye_interruptible: bool = True,
    ):
        self._stream = stream
        self._goodbye_interruptible = goodbye_interruptible
        self._gate = gate
        self._rest = rest
        self._goodbye = goodbye
        self._ending = False
        self.worker: PipelineWorker | None = None

    @property
    def call_sid(self) -> str:
        """The call's Twilio id."""
        return self._stream.call_sid

    async def end_call(self, goodbye: str = "") -> None:
        """Say goodbye, then hang up; once per call (a second request while the
        goodbye plays, e.g. the LLM calling ``end_call`` again, is ignored)."""
        if self.worker is None:
            raise RuntimeError("the call is not running")
        if self._ending:
            logger.info(f"call {self._stream.call_sid}: already ending")
            return
        self._ending = True
        await say_goodbye_and_hang_up(
            self.worker,
            self._stream,
            self._gate,
            self._rest,
            goodbye or self._goodbye,
            interruptible=self._goodbye_interruptible,
        )

    async def transfer_call(self, number: str) -> None:
        """Redirect the live call to ``number`` with TwiML ``<Dial>``.

        Raises:
            RuntimeError: without Twilio credentials, or when Twilio refuses.
        """
        if self._rest is None:
            raise RuntimeError("transfer needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        logger.info(f"call {self._stream.call_sid}: transferring to {logcontent.number(number)}")
        await self._rest.redirect(self._stream.call_sid, dial_twiml(number))

    async def send_dtmf(self, digits: str) -> None:
        """Media streams cannot send keypad tones back to Twilio.

        Raises:
            RuntimeError: always, with the reason the LLM can relay.
        """
        raise RuntimeError("sending keypad tones is not supported on Twilio media streams")


def run_lengths(events) -> str:
    """``connected start media*250 mark ...``: the event log, compressed, in order."""
    runs: list[list] = []
    for event in events:
        if runs and runs[-1][0] == event:
            runs[-1][1] += 1
        else:
            runs.append([event, 1])
    return " ".join(name if count == 1 else f"{name}*{count}" for name, count in runs)
