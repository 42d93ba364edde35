"""The command line: ``overnight run | demo | init | nights | report | diff | faults | serve | doctor |
sandbox``.

Exit codes: 0 every cycle that ran passed; 1 a product failure, an unrepaired infra
error, a timeout or a harness error (or no cycle finished); 2 a usage or config error;
3 overnight itself failed (for example the ledger became unreachable); 130 / 143 the night
was stopped by SIGINT / SIGTERM. Nights stopped by 3, 130 or 143 continue with ``--resume``.

The package holds no logic of its own: one module per command group parses the flags and
calls the engine, the ledger, the report or the components; ``main`` is the one door
every error leaves by.
"""

from .app import app
from .main import main

__all__ = ["app", "main"]
