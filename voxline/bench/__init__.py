"""``voxline bench``: simulated phone callers against a running server, and stock pipecat.

N callers that speak Twilio's Media Streams protocol (the same client as
``voxline dial``) call a server at once, each for K turns, in espeak-ng voices
that no test uses; the bench reports what the callers heard (voice-to-voice
latency, audio underruns, refused calls) beside what the server reports on
``/metrics`` (per-stage latency, memory). With ``--baseline-pipecat`` the same
callers then call a stock pipecat bot started locally with the same models.
"""
