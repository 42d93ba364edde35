"""The public API a scenario author types against: pinned, so a change to it is deliberate
(as httpx's test_exported_members does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import overnight

EXPECTED = {
    "Component",
    "ComponentSpec",
    "ConfigError",
    "CycleContext",
    "CycleInput",
    "DatabaseHandle",
    "InfraError",
    "LLMHandle",
    "NightContext",
    "ProductFailure",
    "ProtectedSettingError",
    "ProtectedSettings",
    "SystemHandle",
    "VectorStoreHandle",
    "Verdict",
    "WebSearchHandle",
    "__version__",
    "register_component_type",
    # A component's fault proxy hooks: tcp_endpoint() and route_via() from its URL.
    "url_endpoint",
    "url_via",
}


def test_exported_members() -> None:
    assert set(overnight.__all__) == EXPECTED
    for name in overnight.__all__:
        member = getattr(overnight, name)
        if name != "__version__":
            assert member.__module__.startswith("overnight."), name


async def test_handles_are_the_types_the_components_hand_out(tmp_path: Path) -> None:
    from overnight.components.database import DatabaseComponent
    from overnight.components.system import SystemComponent

    db = DatabaseComponent(overnight.ComponentSpec("db", {}, tmp_path))
    system = SystemComponent(overnight.ComponentSpec("system", {}, tmp_path))
    await db.connect()
    try:
        assert isinstance(db.handle, overnight.DatabaseHandle)
        assert isinstance(system.handle, overnight.SystemHandle)
    finally:
        await db.close()


def test_importing_overnight_does_not_load_the_clients() -> None:
    # A scenario's `import overnight` stays light; the handles load their clients on use.
    code = "import sys, overnight; print(sorted(m for m in ('qdrant_client', 'openai', 'gigachat') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
