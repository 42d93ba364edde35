"""Fault injection: deliberate failures that stay home (loopback or the project's test hosts).

``plan`` parses fault plans (``--faults``, ``--inject``), ``injectors`` makes real faults
on the components' real connections, ``driver`` injects them on time during a night and
always undoes them, ``timeline`` matches each to the incident it caused. The TCP fault
proxy and the HTTP fault layer live in the leaf package ``overnight.chaos`` (components
wrap their clients with them) and are re-exported here.

``register_injector`` adds a user's own injector (a subclass of ``Injector`` that says
which components and fault kinds it serves); fault plans can then target a user's own
component type without any change to overnight.
"""

from ..chaos.http import HttpFault, HttpFaults, fault_transport
from ..chaos.http_proxy import HttpFaultProxy
from ..chaos.proxy import FaultProxy, FaultProxyStats, is_loopback
from .injectors import FaultsSettings, InjectEnv, Injector, register_injector, registered_injectors
from .plan import FaultSpec, collect, load_plan, parse_inject
from .timeline import fault_timeline

__all__ = [
    "FaultProxy",
    "FaultProxyStats",
    "FaultSpec",
    "FaultsSettings",
    "HttpFault",
    "HttpFaultProxy",
    "HttpFaults",
    "InjectEnv",
    "Injector",
    "collect",
    "fault_timeline",
    "fault_transport",
    "is_loopback",
    "load_plan",
    "parse_inject",
    "register_injector",
    "registered_injectors",
]
