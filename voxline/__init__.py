"""voxline: real-time voice bots on shared, batched model engines."""

__version__ = "0.1.0"
