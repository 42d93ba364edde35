"""Chaos that stays home: the TCP fault proxy (in HTTP mode too) and the HTTP fault layer
inside a client.

A leaf package (it imports nothing of overnight's), so components may wrap their clients
with it without depending on fault plans, the driver or the ledger (``overnight.faults``).
"""

from .http import HTTP_FAULT_KINDS, STATUSES, HttpFault, HttpFaults, fault_transport
from .http_proxy import HttpFaultProxy
from .proxy import FaultProxy, FaultProxyStats, is_loopback

__all__ = [
    "HTTP_FAULT_KINDS",
    "STATUSES",
    "FaultProxy",
    "FaultProxyStats",
    "HttpFault",
    "HttpFaultProxy",
    "HttpFaults",
    "fault_transport",
    "is_loopback",
]
