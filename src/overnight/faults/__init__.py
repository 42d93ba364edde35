"""Fault injection: deliberate failures that stay home (loopback or the project's test hosts).

``plan`` parses fault plans (``--faults``, ``--inject``), ``injectors`` makes real faults
on the components' real connections, ``driver`` injects them on time during a night and
always undoes them, ``timeline`` matches each to the incident it caused. ``FaultProxy``
and the HTTP fault layer (``http``) can also be used on their own.
"""

from .http import HttpFault, HttpFaults, fault_transport
from .plan import FaultSpec, collect, load_plan, parse_inject
from .proxy import FaultProxy, FaultProxyStats, is_loopback
from .timeline import fault_timeline

__all__ = [
    "FaultProxy",
    "FaultProxyStats",
    "FaultSpec",
    "HttpFault",
    "HttpFaults",
    "collect",
    "fault_timeline",
    "fault_transport",
    "is_loopback",
    "load_plan",
    "parse_inject",
]
