"""Whether the bot is speaking, and when what it was saying is over.

pipecat's output transport reports the bot stopped speaking whenever its queue has been
empty for 0.35 s. On a loaded machine that happens between two sentences, when the next
one's synthesis is late: the bot has paused, it has not finished. What it says is over
when it goes quiet after TTS closed what it was saying (the context's
``TTSStoppedFrame``), or when TTS closes it while the bot is quiet after such a pause
and no audio came since. A call torn down (a hang-up) stops its audio without it having
played out.
"""

from __future__ import annotations


class BotSpeech:
    """The bot's speech as the latency tracer follows it, frame by frame."""

    def __init__(self) -> None:
        self.speaking = False
        self.torn_down = False
        """The call was cancelled (the caller hung up): nothing more plays."""
        self._synthesizing = False  # a TTS context is open: more audio may come
        self._paused = False  # quiet with TTS open, and no audio came since

    def started(self) -> None:
        """The transport started a speaking period."""
        self.speaking, self._paused = True, False

    def stopped(self) -> bool:
        """The transport says the bot stopped speaking: True when what it said is over."""
        self.speaking = False
        if self._synthesizing:
            self._paused = True
            return False
        return True

    def synthesis_started(self) -> None:
        """TTS opened a context (a reply, a line)."""
        self._synthesizing = True

    def audio_synthesized(self) -> None:
        """TTS produced audio: a pause in the bot's speech has more to come."""
        self._paused = False

    def synthesis_stopped(self) -> bool:
        """TTS closed its context: True when that ends a pause, so what was said is over."""
        self._synthesizing = False
        ended, self._paused = self._paused, False
        return ended

    def dropped(self) -> None:
        """What TTS was synthesizing was dropped without a stop (an interruption, or a
        withdrawn speculation)."""
        self._synthesizing = self._paused = False

    @property
    def over(self) -> bool:
        """Quiet, with nothing more to synthesize, and the call not torn down."""
        return not self.speaking and not self._synthesizing and not self.torn_down
