"""A tool module whose import error spans lines: the refusal must still be one line."""

raise RuntimeError("the booking database is not configured.\nSet BOOKING_DSN first.")
