"""The ledger: the one durable record every report is computed from."""

from .reader import Readable, ReadOnlyLedger
from .schema import SCHEMA_VERSION
from .store import Ledger, normalize_url

__all__ = ["SCHEMA_VERSION", "Ledger", "ReadOnlyLedger", "Readable", "normalize_url"]
