"""A tool module that fails while it is imported, as a broken deployment would."""

raise RuntimeError("the booking database is not configured")
