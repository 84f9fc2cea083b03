"""Handlers for the corpus's tool specs: one is fine, the others are not callables."""

NOT_A_FUNCTION = 42


def ok() -> dict[str, bool]:
    """A valid handler, so that the spec's other mistake is the one reported."""
    return {"ok": True}
