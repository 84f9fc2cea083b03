"""Call records: every call's persona, line, transcript as heard, tool calls and turn traces.

* :mod:`voxline.records.settings`: the ``records:`` config and ``records_url``.
* :mod:`voxline.records.store`: the database (SQLite or PostgreSQL through SQLAlchemy's
  asyncio engine): schema, writes, and the query API (:meth:`RecordStore.recent_calls`,
  :meth:`RecordStore.call`).
* :mod:`voxline.records.writer`: :class:`RecordWriter`, the call listener that writes
  records as calls go, off the audio path, through a bounded queue.
* :mod:`voxline.records.cli`: ``voxline calls list`` and ``voxline calls show``.

See docs/records.md.
"""
