"""The HTTP side of ``voxline serve``: the Twilio webhook and media streams, WebRTC
signaling and the widget, admission control, health, metrics and request limits.

``voxline.bot`` keeps the shared Runtime and one call's assembly; this package
answers the network and hands each admitted call to it.
"""
