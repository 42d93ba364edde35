"""Promise 7 end to end: a canary from every place a secret can come from never reaches
any output, through the real CLI, on both ledger back ends.

Each source has its own canary, so a failure names the source that leaked and where.
Each canary is searched raw, URL-encoded and base64-encoded (also at the offsets at
which it sits inside a Basic auth header).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overnight.engine.plan import Plan, _same_but_masked
from overnight.ledger.ops import _json

from .conftest import make_project, run_cli

# One canary per source. The "+", "@" and "/" make their URL-encoded forms differ.
ENV = {
    "CNRY_API_KEY": "cnry+env+apikey+A1",  # ${VAR} under a secret-looking key
    "CNRY_SESSION_TOKEN": "cnry+env+session+B2",  # ${VAR} with a secret-looking name, plain key
    "CNRY_SIGNING_KEY": "cnry+exc+signing+C3",  # only ever surfaced in a raised exception
    "CNRY_DATABASE_URL": "postgresql://app:cnry%40dsn%2Fenv%2BD4@127.0.0.1:9/app",
}
CANARIES = {
    "env ${VAR} under api_key": "cnry+env+apikey+A1",
    "env ${VAR} named *_TOKEN": "cnry+env+session+B2",
    "raised exception message": "cnry+exc+signing+C3",
    "DSN password from env (decoded)": "cnry@dsn/env+D4",
    "DSN password from env (as written)": "cnry%40dsn%2Fenv%2BD4",
    "literal component password": "cnry+lit+password+E5",
    "literal component token": "cnry+lit+token+F6",
    "literal settings api_token": "cnry+settings+apitoken+G7",
    "literal nested settings client_secret": "cnry+settings+nested+H8",
    "DSN password literal (decoded)": "cnry@dsn/lit+J9",
    "DSN password literal (as written)": "cnry%40dsn%2Flit%2BJ9",
    "scenario log line": "cnry+log+webhooktoken+K0",
}

COMPONENT = """
import overnight

class Vault(overnight.Component):
    def __init__(self, spec):
        super().__init__(spec)
        self.options = dict(spec.options)

    @property
    def handle(self):
        return self
"""

SCENARIO = """
import base64
import re
from urllib.parse import quote, unquote, urlsplit

import overnight

def forms(value):
    basic = base64.b64encode(f"app:{value}".encode()).decode()
    return (
        f"raw={value} quoted=https://api.test/v1?k={quote(value, safe='')} "
        f"b64={base64.b64encode(value.encode()).decode()} basic_header_value={basic}"
    )

async def cycle(ctx):
    v = ctx.components["vault"].options
    s = ctx.settings
    dsn_pw = [urlsplit(v[k]).password for k in ("url", "db_url")]
    everyday = [v["api_key"], v["extra"].split()[-1], v["password"], v["token"],
                s["api_token"], s["vendor"]["client_secret"], *dsn_pw, *map(unquote, dsn_pw)]
    async with ctx.step("call"):
        for value in everyday:
            ctx.log.info("using %s", forms(value))
        ctx.log.warning("webhook %s", forms(v["webhook_token"]))
        print("scenario says", forms(v["webhook_token"]), *map(forms, everyday))
        ctx.artifact("request.txt", "\\n".join(forms(value) for value in everyday))
        ctx.artifact("request.json", {"headers": [forms(value) for value in everyday]})
        ctx.metric("weakness", "leaked " + " ".join(everyday))
        if ctx.cycle == 1:
            # What a driver does: the decoded password, and the key, in its message.
            raise RuntimeError(
                f"connection failed for app:{unquote(dsn_pw[0])} signed {forms(v['signing_key'])} "
                + " ".join(forms(value) for value in everyday)
            )
        if ctx.cycle == 2:
            ctx.fail("wrong answer with " + " ".join(forms(value) for value in everyday))
"""

CONFIG = """
[components.vault]
type = "vault:Vault"
critical = false
api_key = "${CNRY_API_KEY}"
extra = "Bearer ${CNRY_SESSION_TOKEN}"
signing_key = "${CNRY_SIGNING_KEY}"
db_url = "${CNRY_DATABASE_URL}"
password = "cnry+lit+password+E5"
token = "cnry+lit+token+F6"
url = "postgresql://app:cnry%40dsn%2Flit%2BJ9@127.0.0.1:9/app"
webhook_token = "cnry+log+webhooktoken+K0"

[settings]
api_token = "cnry+settings+apitoken+G7"
min_sections = 8

[settings.vendor]
client_secret = "cnry+settings+nested+H8"
"""


def encoded_forms(canary: str) -> dict[str, bytes]:
    """The canary as it would appear raw, URL-encoded, or base64-encoded anywhere in a
    stream (base64 at each of the three byte offsets, e.g. after "user:" in Basic auth)."""
    raw = canary.encode()
    forms = {"raw": raw, "url-encoded": quote(canary, safe="").encode()}
    if quote_plus(canary).encode() not in forms.values():
        forms["form-encoded"] = quote_plus(canary).encode()
    for offset in range(3):
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            blob = encode(b"\0" * offset + raw)
            # Only the characters that depend on the canary's bytes alone.
            start, end = -(-8 * offset // 6), 8 * (offset + len(raw)) // 6
            if blob[start:end] not in forms.values():
                forms[f"{name}@{offset}"] = blob[start:end]
    return forms


def find_leaks(places: dict[str, bytes], canaries: dict[str, str] = CANARIES) -> list[str]:
    leaks = []
    for source, canary in canaries.items():
        for form, needle in encoded_forms(canary).items():
            for where, blob in places.items():
                if needle in blob:
                    leaks.append(f"{source} ({form}) in {where}")
    return leaks


def summary(leaks: list[str]) -> str:
    """One line per leaked source: the forms found, and where."""
    forms: dict[str, set[str]] = {}
    places: dict[str, set[str]] = {}
    for leak in leaks:
        head, _, where = leak.partition(" in ")
        source, _, form = head.rpartition(" (")
        forms.setdefault(source, set()).add(form.rstrip(")"))
        places.setdefault(source, set()).add(re.sub(r"night dir \S*/", "night dir .../", where))
    return "\n".join(
        f"{source} [{', '.join(sorted(forms[source]))}]: {'; '.join(sorted(places[source]))}"
        for source in sorted(forms)
    )


def night_dir_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def ledger_bytes(ledger: str) -> dict[str, bytes]:
    if ledger.startswith("postgresql"):
        dump = subprocess.run(["pg_dump", "--no-owner", ledger], capture_output=True, timeout=120)
        assert dump.returncode == 0, dump.stderr
        assert b"CREATE TABLE public.nights" in dump.stdout
        return {"pg_dump of the ledger": dump.stdout}
    folder = Path(ledger).parent
    return {f"ledger file {p.name}": p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_the_canary_test_sees_a_leak() -> None:
    """The search itself finds each form, so a pass below means something."""
    canary = CANARIES["literal component token"]
    basic = base64.b64encode(f"app:{canary}".encode())
    assert find_leaks({"x": b"Authorization: Basic " + basic}) == ["literal component token (base64@1) in x"]
    assert find_leaks({"x": quote(canary, safe="").encode()}) == [
        "literal component token (url-encoded) in x"
    ]


def test_canaries_from_every_source_never_leak(tmp_path: Path, ledger_url: str) -> None:
    proj = make_project(tmp_path / "proj", SCENARIO, CONFIG)
    (proj / "vault.py").write_text(COMPONENT)
    ledger = ledger_url
    outputs: dict[str, bytes] = {}
    run = run_cli(
        ["run", "-v", "--cycles", "3", "--retry-attempts", "0", "--seed", "1", "--ledger", ledger],
        cwd=proj,
        env=ENV,
    )
    # cycle 1 raises (harness error), cycle 2 is a product failure, cycle 3 passes.
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    for args, code in (
        (["report", "--ledger", ledger], 0),
        (["nights", "--ledger", ledger], 0),
        (["nights", "--json", "--ledger", ledger], 0),
        (["doctor", "--json"], 1),  # the component has no probe
        (["run", "--dry-run", "-v", "--ledger", ledger], 1),
    ):
        res = run_cli(args, cwd=proj, env=ENV)
        assert res.returncode == code, (args, res.stdout, res.stderr)
        name = " ".join(a for a in args if a != ledger)
        outputs[f"stdout of {name}"] = res.stdout.encode()
        outputs[f"stderr of {name}"] = res.stderr.encode()
    outputs["stdout of run"] = run.stdout.encode()
    outputs["stderr of run"] = run.stderr.encode()

    night_files = night_dir_files(proj / "night_tests")
    reports = {
        n
        for n in night_files
        if n.split("/")[-1] in ("MORNING_REPORT.md", "report.html", "report.json", "junit.xml")
    }
    assert len(reports) == 2 * 4, sorted(night_files)  # the night and its dry run
    # The nets must not have hidden what the report is for.
    assert b"wrong answer with" in night_files[next(n for n in reports if n.endswith("report.json"))]
    places = {
        **outputs,
        **ledger_bytes(ledger),
        **{f"night dir {k}": v for k, v in night_files.items()},
    }
    canaries = dict(CANARIES)
    if ledger.startswith("postgresql"):  # the ledger's own DSN, given with --ledger
        canaries["ledger URL password"] = urlsplit(ledger).password or ""
    leaks = find_leaks(places, canaries)
    assert not leaks, summary(leaks)


FACTORY = """
import logging, sys
from urllib.parse import unquote, urlsplit

def make(spec):
    key, url = spec.options["api_key"], spec.options["url"]
    how = spec.options["how"]
    if how == "logs":
        logging.getLogger("vendor.sdk").error("handshake with %s using %s", url, key)
    if how == "prints":
        print(f"vendor sdk: {key} {url}")
        print(f"vendor sdk: {key} {url}", file=sys.stderr)
    if how == "exits":
        sys.exit(f"vendor sdk: fatal: key {key} rejected by {url}")
    if how == "decoded":
        raise ValueError(f"authentication failed for password {unquote(urlsplit(url).password)}")
    raise RuntimeError(f"cannot connect to {url} with api_key={key}\\nsecond line {key}")
"""


@pytest.mark.parametrize("how", ["raises", "decoded", "logs", "prints", "exits"])
def test_a_failing_component_factory_leaks_nothing(tmp_path: Path, how: str) -> None:
    proj = make_project(
        tmp_path / "proj",
        "async def cycle(ctx):\n    pass\n",
        '[components.inv]\ntype = "inv:make"\napi_key = "${INV_API_KEY}"\n'
        f'how = "{how}"\nurl = "https://inv:${{INV_PASSWORD}}@127.0.0.1:9/v1"\n',
    )
    (proj / "inv.py").write_text(FACTORY)
    env = {"INV_API_KEY": "cnry+factory+apikey+L1", "INV_PASSWORD": "cnry%40factory%2Fpw%2BM2"}
    for debug in ("", "1"):
        res = run_cli(["run", "--cycles", "1"], cwd=proj, env={**env, "OVERNIGHT_DEBUG": debug})
        assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
        assert "components.inv" in res.stderr
        if not debug:
            assert "Traceback" not in res.stderr, res.stderr
        if how in ("raises", "decoded", "exits") and not debug:
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        if how == "logs":  # the vendor's own log line still shows, masked
            assert "handshake with https://inv:***@127.0.0.1:9/v1 using ***" in res.stderr
        if how == "prints":
            assert "vendor sdk: *** https://inv:***@127.0.0.1:9/v1" in res.stdout
        blob = (res.stdout + res.stderr).encode()
        for canary in ("cnry+factory+apikey+L1", "cnry%40factory%2Fpw%2BM2", "cnry@factory/pw+M2"):
            for form, needle in encoded_forms(canary).items():
                assert needle not in blob, (
                    f"{canary} ({form}) leaked with OVERNIGHT_DEBUG={debug!r}:\n{res.stderr}"
                )


RESUMABLE = """
import asyncio, os
from pathlib import Path

async def cycle(ctx):
    v, s = ctx.components["vault"].options, ctx.settings
    assert (v["password"], v["token"]) == ("lit-pw-1234", "Bearer lit-tok-5678"), v
    assert (s["api_token"], s["vendor"]["client_secret"]) == ("lit-api-9012", "lit-nested-3456"), s
    assert v["db_password"] == "dflt-pw-7890" and v["endpoint"] == "https://u:lit-url-pw@127.0.0.1:9/x"
    if ctx.cycle == 2 and ctx.attempt == 1:
        Path(os.environ["OVN_MARKER"]).write_text("x")
        await asyncio.sleep(3600)
"""

RESUMABLE_CONFIG = """
[components.vault]
type = "vault:Vault"
critical = false
password = "lit-pw-1234"
token = "Bearer lit-tok-5678"
db_password = "${OVN_UNSET_DB_PASSWORD:-dflt-pw-7890}"
endpoint = "https://u:lit-url-pw@127.0.0.1:9/x"

[settings]
api_token = "lit-api-9012"
min_sections = 8

[settings.vendor]
client_secret = "lit-nested-3456"
"""


def test_a_night_with_literal_secrets_resumes_from_its_config_file(tmp_path: Path) -> None:
    """The ledger keeps the config with literal secrets masked, in any table; a killed
    night resumes with the real values read back from the unchanged config file, and is
    refused if anything but a secret changed in it."""
    proj = make_project(tmp_path / "proj", RESUMABLE, RESUMABLE_CONFIG)
    (proj / "vault.py").write_text(COMPONENT)
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-m", "overnight", "run", "--cycles", "3", "--retry-attempts", "0"],
        cwd=proj,
        env={**os.environ, "OVN_MARKER": str(marker)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, "the night ended before cycle 2"
        assert time.monotonic() < deadline, "cycle 2 never started"
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=30)
    db = b"".join(p.read_bytes() for p in (proj / "night_tests").glob("overnight.db*"))  # with its WAL
    for literal in (
        "lit-pw-1234",
        "lit-tok-5678",
        "lit-api-9012",
        "lit-nested-3456",
        "dflt-pw-7890",
        "lit-url-pw",
    ):
        assert literal.encode() not in db, literal
    assert b"${OVN_UNSET_DB_PASSWORD:-***}" in db  # the reference stays, its default is masked

    config = proj / "overnight.toml"
    original = config.read_text()
    config.write_text(original.replace("min_sections = 8", "min_sections = 7"))
    changed = run_cli(["run", "--resume"], cwd=proj, env={"OVN_MARKER": str(tmp_path / "unused")})
    assert changed.returncode == 2 and "changed since the night started" in changed.stderr, changed.stderr
    config.write_text(original)
    res = run_cli(["run", "--resume"], cwd=proj, env={"OVN_MARKER": str(tmp_path / "unused")})
    assert res.returncode == 0, res.stderr
    report = json.loads(next((proj / "night_tests").glob("*/report.json")).read_text())
    assert report["totals"]["passed"] == 3 and report["status"] == "completed"


_KEYS = st.sampled_from(
    ["password", "api_token", "token", "url", "name", "max_tokens", "api_key_env", "dsn", "note"]
)
_TEXT = st.text(alphabet="abcXYZ019@:/+-_ {}$", max_size=12)
_VALUE = st.one_of(
    _TEXT,
    st.builds(
        lambda a, v, b: f"{a}${{{v}}}{b}", _TEXT, st.sampled_from(["PW", "HOST", "DB_PASSWORD"]), _TEXT
    ),
    st.builds(lambda v, d: f"${{{v}:-{d}}}", st.sampled_from(["PW", "HOST", "API_TOKEN"]), _TEXT),
    st.builds(lambda p: f"postgresql://u:{p}@h/db", _TEXT.filter(lambda t: "@" not in t and " " not in t)),
    st.integers(),
)
_TABLE = st.recursive(
    st.dictionaries(_KEYS, _VALUE, max_size=4),
    lambda inner: st.dictionaries(
        st.sampled_from(["components", "settings", "notify", "vendor"]), inner, max_size=3
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(raw=_TABLE)
def test_what_the_ledger_keeps_is_the_config_but_masked(raw: dict[str, Any]) -> None:
    """Whatever the config, the stored plan matches the file it came from except where a
    secret was masked, so a night with literal secrets resumes from that file."""
    plan = Plan(
        scenario="s:cycle", cycles=1, parallel=1, retry_attempts=0, cycle_timeout=1.0, max_hours=1.0,
        until=None, seed=1, night_dir="/tmp/n", config_raw=raw,
    )  # fmt: skip
    stored = json.loads(_json(json.loads(plan.to_json())) or "")["config_raw"]  # as create_night does
    assert _same_but_masked(stored, raw)
    for key, written, kept in _leaves(raw, stored):
        if not isinstance(written, str):
            continue
        # Every ${VAR} reference stays, so the night resumes from the environment ...
        assert _REF_ANY.findall(written) == _REF_ANY.findall(kept)
        if key in ("password", "api_token", "token"):  # ... and no literal text under a secret key does
            assert _REF_MASKED.sub("", kept).replace("***", "") == "", (written, kept)


_REF_ANY = re.compile(r"\$\{([A-Za-z_]\w*)(?::-[^}]*)?\}")
_REF_MASKED = re.compile(r"\$\{([A-Za-z_]\w*)(?::-(?:\*\*\*)?)?\}")


def _leaves(raw: Any, stored: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(raw, dict):
        return [leaf for k in raw for leaf in _leaves(raw[k], stored[k], k)]
    return [(key, raw, stored)]


# -- redact's shortcut ---------------------------------------------------------------------

_NAME_PART = st.sampled_from(
    ["pass", "Pass", "PWD", "passed", "PASSED", "PassEd", "password", "PassWord", "secret", "token", "Token", "key", "KEY", "auth", "oauth", "cookie", "api",
     "apikey", "credential", "url", "env", "db", "user", "id", "name", "x", "Bearer", "basic"]
)  # fmt: skip
_NAMES = st.lists(_NAME_PART, min_size=1, max_size=4).flatmap(
    lambda words: st.sampled_from(["_", "-", ".", ""]).map(lambda sep: sep.join(words))
)


@settings(max_examples=500, deadline=None)
@given(_NAMES, st.sampled_from(["", "ed", "Ed", "_x", "d"]))
def test_every_secret_looking_name_holds_a_hint(name: str, tail: str) -> None:
    """redact skips its assignment pass when may_name_a_secret says no: that is only
    sound if every name is_secret_key accepts (also inside longer text) says yes."""
    from overnight.redaction import _STRONG, _WEAK, is_secret_key, may_name_a_secret

    for word in (*_STRONG, *_WEAK):
        assert may_name_a_secret(word) and may_name_a_secret(word.upper()), word
    if is_secret_key(name):
        assert may_name_a_secret(f"x {name}: v {tail}"), name
    assert not may_name_a_secret("cycle 3 attempt 1: passed in 0.001s [3/3 done: 3 passed]")


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.one_of(
            _NAMES,
            st.sampled_from(["=", ": ", '="', "':'", " ", ", ", "https://u:pw1234@h/", "Bearer abc123"]),
            st.text(alphabet="abcXYZ0189+/=:@ ", max_size=12),
        ),
        max_size=12,
    ).map("".join)
)
def test_redact_masks_what_the_full_passes_mask(text: str) -> None:
    """The shortcuts (no "://", no hint of a secret-looking name) change nothing: the same
    text as running every pass."""
    from overnight.redaction import _ASSIGNMENT, _URL_PASSWORD, MASK, _mask_assignment, redact

    full = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    full = _ASSIGNMENT.sub(_mask_assignment, full)
    assert redact(text) == (full if text else text)
