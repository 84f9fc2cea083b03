"""pipecat's SmallWebRTC transport with a playout gate on its output.

A browser call's bot text must reach the LLM context only once its audio was sent, as
a phone call's does through Twilio's marks (:mod:`voxline.transports.playout`), so that
after a barge-in the bot never believes it said what the caller never heard.
"""

from __future__ import annotations

from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.transport import (
    SmallWebRTCOutputTransport,
    SmallWebRTCTransport,
)

from voxline.transports.playout import PlayoutGateMixin


class PlayoutOutputTransport(PlayoutGateMixin, SmallWebRTCOutputTransport):
    """SmallWebRTC's output with a playout gate: text reaches the context once sent.

    pipecat's outgoing track (``RawAudioTrack``) queues each written frame as 10 ms
    pieces that aiortc takes one by one, in real time, to encode and send; the
    write returns when the frame's last piece is taken. The playout position is
    the audio written minus the pieces still queued on the track.
    """

    def __init__(self, client, params: TransportParams, **kwargs):
        super().__init__(client, params, **kwargs)
        self._written = 0.0
        self._init_gate(self)

    def written_secs(self) -> float:
        """Seconds of bot audio handed to the outgoing track."""
        return self._written

    def played_secs(self) -> float:
        """Seconds of bot audio sent to the browser: written minus still queued."""
        return max(0.0, self._written - self._queued_secs())

    def _queued_secs(self) -> float:
        track = getattr(self._client, "_audio_output_track", None)
        queue = getattr(track, "_chunk_queue", None)
        return 0.01 * len(queue) if queue else 0.0

    async def write_audio_frame(self, frame) -> bool:
        """Count the frame as written while the track holds it; report the new position."""
        if not await self.hold.wait(frame):
            return False
        duration = frame.num_frames / max(1, frame.sample_rate)
        self._written += duration
        written = await super().write_audio_frame(frame)
        if not written:
            self._written -= duration  # no peer to send it to: nobody heard it
        await self._audio_written()
        return written


class PlayoutWebRTCTransport(SmallWebRTCTransport):
    """pipecat's SmallWebRTC transport whose output is :class:`PlayoutOutputTransport`."""

    def output(self) -> PlayoutOutputTransport:
        """The output transport, with the playout gate."""
        if not self._output:
            self._output = PlayoutOutputTransport(
                self._client, self._params, name=self._output_name
            )
        assert isinstance(self._output, PlayoutOutputTransport)
        return self._output
