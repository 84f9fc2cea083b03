"""Northwind Bank's tool handlers: balances and recent transactions from a SQLite file.

The example database is created with a few demo customers the first time a tool
runs, at ``$NORTHWIND_DB`` or ``~/.cache/voxline/northwind_bank.sqlite``. A real
bank would point these functions at its own systems; the tool specs
(``get_balance.yaml``, ``list_recent_transactions.yaml``) stay the same.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

_CREATE = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, card_last4 TEXT, date_of_birth TEXT);
CREATE TABLE accounts (customer_id INTEGER, kind TEXT, balance_cents INTEGER);
CREATE TABLE transactions (
    customer_id INTEGER, kind TEXT, booked_on TEXT, description TEXT, amount_cents INTEGER
);
"""
_CUSTOMERS = [(1, "Maria Lopez", "4821", "1984-03-12"), (2, "James Chen", "1177", "1990-11-02")]
_ACCOUNTS = [(1, "checking", 124_350), (1, "savings", 1_502_000), (2, "checking", 8_725)]
_TRANSACTIONS = [
    (1, "checking", "2026-11-20", "Green Grocer", -4_312),
    (1, "checking", "2026-11-19", "Salary Northwind Logistics", 310_000),
    (1, "checking", "2026-11-18", "City Electric", -8_950),
    (1, "checking", "2026-11-16", "Coffee Corner", -475),
    (1, "savings", "2026-11-01", "Monthly transfer", 50_000),
    (2, "checking", "2026-11-21", "Metro Card", -2_500),
    (2, "checking", "2026-11-15", "Bookshop", -1_899),
]
_lock = threading.Lock()


def database_path() -> Path:
    """Where the example database lives."""
    default = Path.home() / ".cache" / "voxline" / "northwind_bank.sqlite"
    return Path(os.environ.get("NORTHWIND_DB", default))


def _connect() -> sqlite3.Connection:
    path = database_path()
    with _lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            with sqlite3.connect(partial) as db:
                db.executescript(_CREATE)
                db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", _CUSTOMERS)
                db.executemany("INSERT INTO accounts VALUES (?, ?, ?)", _ACCOUNTS)
                db.executemany("INSERT INTO transactions VALUES (?, ?, ?, ?, ?)", _TRANSACTIONS)
            partial.replace(path)
    return sqlite3.connect(path)


def _customer(db: sqlite3.Connection, card_last4: str, date_of_birth: str) -> int:
    row = db.execute(
        "SELECT id FROM customers WHERE card_last4 = ? AND date_of_birth = ?",
        (card_last4, date_of_birth),
    ).fetchone()
    if row is None:
        raise LookupError("no customer matches that card and date of birth; ask the caller again")
    return int(row[0])


def _dollars(cents: int) -> str:
    return f"{cents / 100:.2f}"


def get_balance(card_last4: str, date_of_birth: str, account: str = "checking") -> dict:
    """The balance of a verified caller's account."""
    with _connect() as db:
        customer = _customer(db, card_last4, date_of_birth)
        row = db.execute(
            "SELECT balance_cents FROM accounts WHERE customer_id = ? AND kind = ?",
            (customer, account),
        ).fetchone()
    if row is None:
        raise LookupError(f"the caller has no {account} account")
    return {"account": account, "balance": _dollars(row[0]), "currency": "USD"}


def list_recent_transactions(
    card_last4: str, date_of_birth: str, account: str = "checking", limit: int = 3
) -> dict:
    """The latest transactions of a verified caller's account, newest first."""
    with _connect() as db:
        customer = _customer(db, card_last4, date_of_birth)
        rows = db.execute(
            "SELECT booked_on, description, amount_cents FROM transactions "
            "WHERE customer_id = ? AND kind = ? ORDER BY booked_on DESC LIMIT ?",
            (customer, account, limit),
        ).fetchall()
    return {
        "account": account,
        "transactions": [
            {"date": day, "description": text, "amount": _dollars(cents)}
            for day, text, cents in rows
        ],
    }
