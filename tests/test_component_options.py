"""Component options are validated once, by each type's pydantic model.

A bad value (wrong type, out of bounds, nan/inf, an empty list, an unknown key) is one
``ConfigError`` naming ``components.NAME.KEY``; through the CLI it is one line, exit 2, no
traceback, and no night left ``running``.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from overnight.components import ComponentSpec, NonEmptyStr, Options, resolve_factory
from overnight.errors import ConfigError

from .conftest import make_project, run_cli

NAN, INF = math.nan, math.inf

# (type, options, the key the error must name). Each is one way a night went wrong or a
# value was silently misread before: an IndexError, a file named "5", a pool of -3
# connections, bool("false") == True, a timeout of nan.
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("database", {"url": 5}, "url"),
    ("database", {"url": ""}, "url"),
    ("database", {"dsn": ["postgresql://h/db"]}, "dsn"),
    ("database", {"url": "postgresql://u@127.0.0.1:99999/x"}, "url"),
    ("database", {"pool_size": -3}, "pool_size"),
    ("database", {"pool_size": 0}, "pool_size"),
    ("database", {"pool_size": 100_000}, "pool_size"),
    ("database", {"pool_size": True}, "pool_size"),
    ("database", {"pool_size": 2.5}, "pool_size"),
    ("database", {"connect_timeout": NAN}, "connect_timeout"),
    ("database", {"connect_timeout": INF}, "connect_timeout"),
    ("database", {"connect_timeout": 61}, "connect_timeout"),
    ("database", {"connect_timeout": "10"}, "connect_timeout"),
    ("database", {"probe_timeout": 0}, "probe_timeout"),
    ("database", {"restart_command": ["pg_ctlcluster", "15", "main", "restart"]}, "restart_command"),
    ("database", {"pool_sise": 3}, "pool_sise"),
    ("database", {"fault_proxy": "false"}, "fault_proxy"),
    ("llm", {"models": []}, "models"),
    ("llm", {"models": [""]}, "models.0"),
    ("llm", {"models": "GigaChat"}, "models"),
    ("llm", {"model": "GigaChat-Ultra", "models": ["GigaChat"]}, "model"),
    ("llm", {"api_key_envs": []}, "api_key_envs"),
    ("llm", {"api_key_env": "B", "api_key_envs": ["A"]}, "api_key_env"),
    ("llm", {"provider": "bard"}, "provider"),
    ("llm", {"verify_ssl": "false"}, "verify_ssl"),
    ("llm", {"sandbox": 1}, "sandbox"),
    ("llm", {"timeout": INF}, "timeout"),
    ("llm", {"timeout": 0}, "timeout"),
    ("llm", {"timeout": 200, "timeout_max": 120}, "timeout"),
    ("llm", {"timeout_max": 1e9}, "timeout_max"),
    ("llm", {"base_url": ""}, "base_url"),
    ("llm", {"temperature": 0.2}, "temperature"),
    ("websearch", {"sandbox": "yes"}, "sandbox"),
    ("websearch", {"endpoint": ""}, "endpoint"),
    ("websearch", {"endpoint": 443}, "endpoint"),
    ("websearch", {"sandbox": True, "timeout": NAN}, "timeout"),
    ("websearch", {"sandbox": True, "timeout_max": 0}, "timeout_max"),
    ("websearch", {"sandbox": True, "query_param": ""}, "query_param"),
    ("websearch", {"sandbox": True, "params": {"lang": {"ru": True}}}, "params"),
    ("websearch", {"sandbox": True, "params": {"n": INF}}, "params"),
    ("websearch", {"sandbox": True, "fields": {"titel": "name"}}, "fields.titel"),
    ("websearch", {"sandbox": True, "fallback_cache": ""}, "fallback_cache"),
    ("websearch", {"sandbox": True, "replay": "nowhere.json"}, "replay"),
    ("websearch", {}, "endpoint"),
    ("vectorstore", {"dimensions": 0}, "dimensions"),
    ("vectorstore", {"dimensions": 10**7}, "dimensions"),
    ("vectorstore", {"dimensions": 256.0}, "dimensions"),
    ("vectorstore", {"timeout": 61}, "timeout"),
    ("vectorstore", {"timeout": -INF}, "timeout"),
    ("vectorstore", {"embedder": "word2vec"}, "embedder"),
    ("vectorstore", {"embedder": "component:"}, "embedder"),
    ("vectorstore", {"url": 6333}, "url"),
    ("vectorstore", {"path": ""}, "path"),
    ("system", {"min_free_disk_gb": -1}, "min_free_disk_gb"),
    ("system", {"min_free_disk_gb": "5"}, "min_free_disk_gb"),
    ("system", {"min_available_memory_gb": NAN}, "min_available_memory_gb"),
    ("system", {"path": 3}, "path"),
    ("system", {"patth": "."}, "patth"),
]


def _build(type_name: str, options: dict[str, Any], tmp_path: Path, name: str = "dep") -> Any:
    factory = resolve_factory(type_name, "test")
    return factory(ComponentSpec(name, dict(options), tmp_path / "nights", base_dir=tmp_path))


@pytest.mark.parametrize(("type_name", "options", "key"), BAD, ids=[f"{t}-{k}" for t, _, k in BAD])
def test_a_bad_option_names_its_key(
    tmp_path: Path, type_name: str, options: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _build(type_name, options, tmp_path)
    message = str(info.value)
    assert message.startswith(f"components.dep.{key}: "), message
    assert "\n" not in message
    assert not (tmp_path / "5").exists()  # url = 5 once became a SQLite file named 5


def test_agent_keys_are_left_to_the_agent_and_a_typo_lists_what_the_type_takes(tmp_path: Path) -> None:
    agent_keys = {"probe_period": 5, "probe_timeout": 2, "failure_threshold": 2, "escalation": "abort"}
    for type_name in ("database", "llm", "websearch", "vectorstore", "system"):
        extra = {"sandbox": True} if type_name in ("llm", "websearch") else {}
        _build(type_name, {**agent_keys, **extra}, tmp_path)  # accepted: the agent validates them
    with pytest.raises(ConfigError) as info:
        _build("vectorstore", {"dimension": 128}, tmp_path)
    assert "dimensions" in str(info.value) and "unknown option" in str(info.value)


def test_defaults_and_meanings_are_kept(tmp_path: Path) -> None:
    db = _build("database", {}, tmp_path, name="db")
    assert db.url.endswith("/nights/db.sqlite3") and db.pool_size == 5 and db.probe_timeout == 5
    assert db.knobs.get("connect_timeout") == 10
    rel = _build("database", {"dsn": "data/app.sqlite3", "pool_size": 2}, tmp_path)
    assert (
        Path(rel.url.split(":///", 1)[1]) == (tmp_path / "data" / "app.sqlite3").resolve()
    )  # config's folder
    assert rel.pool_size == 2
    llm = _build("llm", {"provider": "openai", "model": "gpt-4o"}, tmp_path)
    assert llm.knobs.describe()["model"] == {"value": "gpt-4o", "choices": ["gpt-4o"]}
    assert llm.knobs.describe()["timeout"] == {"value": 60, "min": 1, "max": 120}
    assert llm.knobs.get("api_key_env") == "OPENAI_API_KEY" and llm.verify_ssl is True
    low = _build("llm", {"sandbox": True, "timeout_max": 30}, tmp_path)
    assert low.knobs.describe()["timeout"] == {"value": 30, "min": 1, "max": 30}  # the default, lowered
    search = _build("websearch", {"sandbox": True, "fields": {"title": "name"}, "params": {"n": 3}}, tmp_path)
    assert search.fields == {"title": "name", "url": "url", "snippet": "snippet"}
    assert search.params == {"n": 3} and search.knobs.get("timeout") == 60
    vectors = _build("vectorstore", {}, tmp_path, name="vectors")
    assert vectors.path == tmp_path / "nights" / "qdrant" / "vectors" and vectors.dimensions == 256
    system = _build("system", {"min_free_disk_gb": 1}, tmp_path)
    assert (system.min_free_disk_gb, system.min_available_memory_gb, system.path) == (
        1,
        1,
        tmp_path / "nights",
    )


def test_a_secret_is_never_echoed(tmp_path: Path) -> None:
    for type_name, options in (
        ("llm", {"api_key": ["sk-canary-8c1f"]}),
        ("llm", {"api_key": 80808080}),
        ("vectorstore", {"api_key": {"value": "sk-canary-8c1f"}}),
        ("websearch", {"sandbox": True, "api_key": 80808080}),
    ):
        with pytest.raises(ConfigError) as info:
            _build(type_name, options, tmp_path)
        assert str(info.value).startswith("components.dep.api_key: ")
        assert "canary" not in str(info.value) and "80808080" not in str(info.value)


# A user's own component, validated the same way (the pattern README shows).
class InventoryOptions(Options):
    base_url: NonEmptyStr
    timeout: float = Field(10.0, ge=1, le=60)
    password: int | None = None  # an odd type, so that a string under it is a type error


def test_a_users_component_validates_the_same_way(tmp_path: Path) -> None:
    from overnight import Component

    class Inventory(Component):
        type_name = "inventory"

        def __init__(self, spec: ComponentSpec) -> None:
            super().__init__(spec)
            self.opts = self.options(InventoryOptions)

    def build(**options: Any) -> Inventory:
        return Inventory(ComponentSpec("inv", options, tmp_path))

    ok = build(base_url="http://127.0.0.1:1", probe_period=3, repairs={"unavailable": ["reconnect"]})
    assert ok.opts.timeout == 10 and ok.opts.base_url == "http://127.0.0.1:1"
    for options, key in (
        ({}, "base_url"),
        ({"base_url": "http://x", "timeout": NAN}, "timeout"),
        ({"base_url": "http://x", "timeout": True}, "timeout"),
        ({"base_url": "http://x", "tiemout": 5}, "tiemout"),
        ({"base_url": "http://x", "password": "hunter2-canary"}, "password"),
    ):
        with pytest.raises(ConfigError) as info:
            build(**options)
        assert str(info.value).startswith(f"components.inv.{key}: "), info.value
        assert "hunter2" not in str(info.value)


# -- through the CLI ------------------------------------------------------------------------

SCENARIO = """
async def cycle(ctx):
    pass
"""

INVENTORY = """
from pydantic import Field

import overnight
from overnight.components import Options


class InventoryOptions(Options):
    base_url: str = Field(min_length=1)
    timeout: float = Field(10.0, ge=1, le=60)
    token: int | None = None


class Inventory(overnight.Component):
    def __init__(self, spec):
        super().__init__(spec)
        self.opts = self.options(InventoryOptions)
"""


def _refused(res: subprocess.CompletedProcess[str], proj: Path, key: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("overnight: error: ") and f"overnight.toml: {key}: " in line, line
    listing = run_cli(["nights", "--json"], cwd=proj)
    if listing.returncode == 0:  # a ledger exists: no night in it may be left running
        assert [n for n in json.loads(listing.stdout) if n["status"] == "running"] == []
    else:
        assert "no ledger at" in listing.stderr, listing.stderr
    return line


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('[components.llm]\ntype = "llm"\nsandbox = true\nmodels = []\n', "components.llm.models"),
        ('[components.db]\ntype = "database"\npool_size = -3\n', "components.db.pool_size"),
        ('[components.db]\ntype = "database"\nurl = 5\n', "components.db.url"),
        ('[components.db]\ntype = "database"\ncritical = "yes"\n', "components.db.critical"),
        ('[components.search]\ntype = "websearch"\nsandbox = "false"\n', "components.search.sandbox"),
        ('[components.vectors]\ntype = "vectorstore"\ntimeout = inf\n', "components.vectors.timeout"),
    ],
)
def test_cli_refuses_a_bad_builtin_option(tmp_path: Path, table: str, key: str) -> None:
    proj = make_project(tmp_path / "proj", SCENARIO, table)
    _refused(run_cli(["run", "--cycles", "1"], cwd=proj), proj, key)
    assert not (proj / "5").exists()


def test_cli_refuses_a_bad_option_of_a_users_component_without_echoing_a_secret(tmp_path: Path) -> None:
    proj = make_project(
        tmp_path / "proj",
        SCENARIO,
        '[components.inv]\ntype = "inventory:Inventory"\nbase_url = "http://127.0.0.1:1"\n'
        'token = "tok-canary-51d2"\n',
    )
    (proj / "inventory.py").write_text(INVENTORY)
    line = _refused(run_cli(["run", "--cycles", "1"], cwd=proj), proj, "components.inv.token")
    assert "canary" not in line
    (proj / "overnight.toml").write_text(
        (proj / "overnight.toml").read_text().replace('token = "tok-canary-51d2"', "timeout = nan")
    )
    _refused(run_cli(["doctor"], cwd=proj), proj, "components.inv.timeout")
