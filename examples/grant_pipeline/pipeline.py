"""The reference scenario: an LLM pipeline that writes grant applications.

Six steps per cycle, each saving ``<step>.json`` and a readable ``<step>.md``:

1. ``interview`` — the LLM answers the applicant questionnaire as a synthetic applicant
   (one of 25 profile templates, varied deterministically by the cycle's input); the
   answers (the "anketa") go to the database.
2. ``audit`` — completeness and consistency rules plus an LLM audit of the stored anketa.
3. ``research`` — web-search queries built from the anketa; sources go to the database.
   With the protected setting ``mock_websearch`` the recorded results shipped in
   ``data/search_recorded.json`` are replayed instead (component ``search_recorded``).
4. ``writer`` — the LLM writes the application section by section from the anketa, the
   sources and RAG context (funder requirements and funded examples in the vector store).
5. ``reviewer`` — rules (length, required sections, citations, budget) and an LLM review;
   anything below the protected thresholds is a product failure.
6. ``expert`` — a 0-10 score from length, sections, citations and RAG relevance; the
   protected setting ``expert = false`` skips it as a plan choice.

Uses only what any user of overnight has: ``ctx`` and the component handles.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import overnight

DATA = Path(__file__).resolve().parent / "data"
COLLECTION = "grant_corpus"

# The first users' values; a config's [settings] table overrides them.
DEFAULT_SETTINGS: dict[str, Any] = {
    "min_application_length": 15000,
    "min_sections": 8,
    "min_review_score": 7.0,
    "mock_websearch": False,
    "expert": True,
    "use_database": True,
}

# (title, what the section must cover, questionnaire keys it draws on)
SECTIONS: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "Summary",
        "a one-page overview: who applies, the problem, the goal, the main activities, the "
        "requested amount and duration, and the expected results",
        ("organisation", "goal", "activities", "impact"),
    ),
    (
        "Problem Statement",
        "the problem in the region, who is affected and how many, and the evidence that it exists",
        ("target_group", "problem"),
    ),
    (
        "Goals and Objectives",
        "the main goal and measurable objectives with baselines and target values",
        ("goal", "objectives"),
    ),
    (
        "Activities",
        "each activity, its participants and how the partners take part, in a logical order",
        ("activities", "partners"),
    ),
    (
        "Timeline",
        "the stages of the project and a verifiable milestone for every quarter",
        ("timeline", "activities"),
    ),
    (
        "Budget",
        "the requested amount, the main cost items and how each serves an activity, within the "
        "programme's budget rules (equipment at most 30%, overheads at most 10%)",
        ("budget",),
    ),
    (
        "Team",
        "the roles in the team, their experience and time on the project, and the partners' contributions",
        ("team", "organisation", "partners"),
    ),
    (
        "Risks and Mitigation",
        "the three to five main risks with likelihood, consequence and a concrete mitigation measure",
        ("risks",),
    ),
    (
        "Expected Impact",
        "outputs and outcomes, the indicators, how and when they are measured, and reporting",
        ("impact", "objectives"),
    ),
    (
        "Sustainability",
        "what continues after the grant, who carries it on and from which resources, and dissemination",
        ("sustainability", "partners"),
    ),
]
# The funder's technical check (data/corpus/req-required-sections.md) rejects an
# application without any of these.
REQUIRED_SECTIONS = (
    "Summary",
    "Problem Statement",
    "Goals and Objectives",
    "Activities",
    "Budget",
    "Team",
    "Risks and Mitigation",
    "Expected Impact",
)
# What a careless night script would do when one of these breaks, and what it would cost;
# the repair agent never takes these shortcuts, and the report says so ("degradation
# prevented"). Keys are this pipeline's component names (overnight.toml).
DEGRADING_SHORTCUTS = {
    "vectors": {
        "shortcut": "skip the RAG context",
        "harm": "applications would be written without the grant requirements they must follow",
    },
    "search": {
        "shortcut": "switch research to mocked search results",
        "harm": "research would cite recorded sources: the live search integration goes untested",
    },
    "llm": {
        "shortcut": "switch the pipeline to canned LLM answers",
        "harm": "applications would pass on fixed text: the real model's drafting goes unchecked",
    },
}

SECTION_MIN_CHARS = 2000  # asked of the LLM per section: 10 sections comfortably > 15000
PLACEHOLDER_CHARS = 400  # a section body shorter than this is a placeholder, not a section
MIN_ANSWER_CHARS = 40  # an interview answer shorter than this is not an answer
MAX_SOURCES = 8
GRANT_MIN_RUB, GRANT_MAX_RUB = 300_000, 3_000_000
DURATION_MIN, DURATION_MAX = 6, 24
RELEVANCE_FULL = 0.6  # mean best-hit cosine that earns full RAG-relevance points

_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n(?P<body>.*?)\n\s*```\s*$", re.DOTALL)
# "Score: 8.4", and what real models make of it: "**Score:** 8/10", "Score: 8,4".
_SCORE = re.compile(r"^[\s*#]*score[\s*]*[:=][\s*]*(?P<value>\d+(?:[.,]\d+)?)\s*(?:/\s*10)?", re.I | re.M)
_LIST_LINE = r"^[\s*#-]*{}[\s*]*:[\s*]*(?P<items>.*)$"
_CITATION = re.compile(r"\[(\d{1,3})\]")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS grant_anketa (
        night_id VARCHAR(64) NOT NULL,
        cycle INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        profile_id VARCHAR(32) NOT NULL,
        category VARCHAR(32) NOT NULL,
        project_name TEXT NOT NULL,
        organisation TEXT NOT NULL,
        region TEXT NOT NULL,
        budget_rub INTEGER NOT NULL,
        team_size INTEGER NOT NULL,
        beneficiaries INTEGER NOT NULL,
        duration_months INTEGER NOT NULL,
        applicant TEXT NOT NULL,
        answers TEXT NOT NULL,
        model TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (night_id, cycle)
    )""",
    """CREATE TABLE IF NOT EXISTS grant_audits (
        night_id VARCHAR(64) NOT NULL,
        cycle INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        rules_passed INTEGER NOT NULL,
        rules_total INTEGER NOT NULL,
        llm_score DOUBLE PRECISION,
        report TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (night_id, cycle)
    )""",
    """CREATE TABLE IF NOT EXISTS grant_sources (
        night_id VARCHAR(64) NOT NULL,
        cycle INTEGER NOT NULL,
        n INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        query TEXT NOT NULL,
        title TEXT NOT NULL,
        url TEXT NOT NULL,
        snippet TEXT NOT NULL,
        origin VARCHAR(16) NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (night_id, cycle, n)
    )""",
    """CREATE TABLE IF NOT EXISTS grant_applications (
        night_id VARCHAR(64) NOT NULL,
        cycle INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        chars INTEGER NOT NULL,
        sections INTEGER NOT NULL,
        model TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (night_id, cycle)
    )""",
    """CREATE TABLE IF NOT EXISTS grant_reviews (
        night_id VARCHAR(64) NOT NULL,
        cycle INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        passed INTEGER NOT NULL,
        score DOUBLE PRECISION,
        failures TEXT NOT NULL,
        report TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (night_id, cycle)
    )""",
    """CREATE TABLE IF NOT EXISTS grant_expert_scores (
        night_id VARCHAR(64) NOT NULL,
        cycle INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        detail TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (night_id, cycle)
    )""",
]


def _upsert(table: str, row: Mapping[str, Any], key: tuple[str, ...] = ("night_id", "cycle")) -> str:
    """``INSERT ... ON CONFLICT (key) DO UPDATE``: the same SQL on SQLite and PostgreSQL."""
    cols = list(row)
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


# -- data shipped with the scenario -------------------------------------------------------


@functools.cache
def load_profiles() -> dict[str, Any]:
    return json.loads((DATA / "profiles.json").read_text(encoding="utf-8"))


@functools.cache
def load_questionnaire() -> dict[str, Any]:
    return json.loads((DATA / "questionnaire.json").read_text(encoding="utf-8"))


def _front_matter(text: str) -> tuple[dict[str, str], str]:
    if not text.startswith("---\n"):
        return {}, text
    head, _, body = text[4:].partition("\n---\n")
    meta = {}
    for line in head.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            meta[key.strip()] = value.strip().strip('"')
    return meta, body


@functools.cache
def load_corpus() -> tuple[dict[str, Any], ...]:
    """The RAG corpus as chunks (one per ``## `` part of each document), ids stable."""
    chunks = []
    for path in sorted((DATA / "corpus").glob("*.md")):
        meta, body = _front_matter(path.read_text(encoding="utf-8"))
        doc_id = meta.get("id", path.stem)
        parts = re.split(r"^## +", body, flags=re.M)
        for part in parts:
            part = part.strip()
            if not part:
                continue
            heading, _, text = part.partition("\n")
            text = " ".join(text.split())
            slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
            chunks.append(
                {
                    "id": f"{doc_id}#{slug}",
                    "text": f"{meta.get('title', doc_id)} — {heading.strip()}. {text}",
                    "body": text,
                    "doc_id": doc_id,
                    "kind": meta.get("kind", "requirement"),
                    "category": meta.get("category", "all"),
                    "title": meta.get("title", doc_id),
                    "part": heading.strip(),
                }
            )
    return tuple(chunks)


# -- settings -------------------------------------------------------------------------


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _flag(name: str, value: Any) -> bool:
    """A bool setting; "true"/"false" strings too (``${VAR}`` values stay strings)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise ValueError(f"setting {name}: expected true or false, got {value!r}")


def read_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The protected settings this scenario reads, typed, with the first users' defaults."""
    merged = {k: settings.get(k, v) for k, v in DEFAULT_SETTINGS.items()}
    return {
        "min_application_length": int(merged["min_application_length"]),
        "min_sections": int(merged["min_sections"]),
        "min_review_score": float(merged["min_review_score"]),
        "mock_websearch": _flag("mock_websearch", merged["mock_websearch"]),
        "expert": _flag("expert", merged["expert"]),
        "use_database": _flag("use_database", merged["use_database"]),
    }


# -- setup: once per night session ------------------------------------------------------


async def setup(night: Any) -> None:
    """Create the tables (if missing) and index the RAG corpus (idempotent)."""
    settings = read_settings(night.settings)
    if settings["use_database"]:
        db = night.components["db"]
        for statement in SCHEMA:
            await db.execute(statement)
    vectors = night.components["vectors"]
    created = await vectors.ensure_collection(COLLECTION)
    chunks = load_corpus()
    await vectors.upsert(COLLECTION, [dict(c) for c in chunks])
    docs = len({c["doc_id"] for c in chunks})
    night.log.info(
        "grant pipeline: %s collection %s with %d chunks of %d documents; database %s",
        "created" if created else "refreshed",
        COLLECTION,
        len(chunks),
        docs,
        "ready" if settings["use_database"] else "not used (plan choice)",
    )


# -- the cycle's input --------------------------------------------------------------------


def _round_to(value: float, step: int) -> int:
    return int(round(value / step) * step)


def applicant_for(ctx: Any) -> dict[str, Any]:
    """One profile template, varied deterministically by the cycle's input."""
    profiles = load_profiles()
    template = ctx.input.choice(profiles["profiles"])
    rng = ctx.input.random()
    lo, hi = template["budget_range"]
    b_lo, b_hi = template["beneficiaries_range"]
    return {
        "profile_id": template["id"],
        "category": template["category"],
        "category_label": profiles["categories"][template["category"]],
        "organisation": template["organisation"],
        "organisation_type": template["organisation_type"],
        "years_active": template["years_active"],
        "region": rng.choice(template["regions"]),
        "target_group": template["target_group"],
        "problem": template["problem"],
        "project_name": template["project_name"],
        "goal": template["goal"],
        "activities": list(template["activities"]),
        "partners": list(template["partners"]),
        "search_topic": template["search_topic"],
        "budget_rub": _round_to(rng.uniform(lo, hi), 10_000),
        "team_size": rng.randint(*template["team_size_range"]),
        "beneficiaries": _round_to(rng.uniform(b_lo, b_hi), 10),
        "duration_months": rng.choice(template["duration_options"]),
        "currency": profiles["currency"],
    }


def _rub(amount: int) -> str:
    return f"{amount:,}".replace(",", " ") + " RUB"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _facts(a: Mapping[str, Any]) -> str:
    return "\n".join(
        [
            f"- Organisation: {a['organisation']} ({a['organisation_type']}), "
            f"working for {a['years_active']} years",
            f"- Region: {a['region']}",
            f"- Programme category: {a['category_label']}",
            f"- Project: {a['project_name']} — {a['goal']}",
            f"- Target group: {a['target_group']} ({a['beneficiaries']} people)",
            f"- Problem: {a['problem']}",
            f"- Activities: {'; '.join(a['activities'])}",
            f"- Partners: {'; '.join(a['partners'])}",
            f"- Requested amount: {_rub(a['budget_rub'])} over {a['duration_months']} months",
            f"- Team: {a['team_size']} people",
        ]
    )


# -- parsing LLM answers ------------------------------------------------------------------


def _unfence(text: str) -> str:
    m = _FENCE.match(text)
    return m["body"] if m else text.strip()


def _excerpt(text: str, n: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def _bad_answer(ctx: Any, step: str, reason: str, text: str) -> NoReturn:
    """A product failure about an LLM answer; the whole answer is kept as the step's artifacts."""
    message = f"{step}: {reason}"
    ctx.artifact(f"{step}.json", {"failed": message, "llm_answer": text})
    ctx.artifact(
        f"{step}.md", f"# {step.capitalize()} failed\n\n{message}\n\nThe LLM answered:\n\n```\n{text}\n```\n"
    )
    ctx.fail(message)


def parse_json_answer(ctx: Any, step: str, text: str, keys: list[str]) -> dict[str, str]:
    """The JSON object the FORMAT line asked for, or a product failure saying what is wrong."""
    try:
        data = json.loads(_unfence(text))
    except json.JSONDecodeError as exc:
        reason = f"the LLM answer is not valid JSON ({exc.msg} at line {exc.lineno}): {_excerpt(text)!r}"
        _bad_answer(ctx, step, reason, text)
    if not isinstance(data, dict):
        _bad_answer(ctx, step, f"the LLM answer is JSON but not an object: {_excerpt(text)!r}", text)
    missing = [k for k in keys if not str(data.get(k) or "").strip()]
    if missing:
        _bad_answer(ctx, step, f"the LLM answer has no answer to {', '.join(missing)}", text)
    return {k: " ".join(str(data[k]).split()) for k in keys}


def _list_line(label: str, text: str) -> list[str]:
    m = re.search(_LIST_LINE.format(label), text, re.I | re.M)
    if not m:
        return []
    return [item.strip(" .") for item in m["items"].split(";") if item.strip(" .")]


def parse_score(ctx: Any, step: str, text: str) -> dict[str, Any]:
    """``Score: X.Y`` / ``Strengths: a; b`` / ``Weaknesses: c; d``; no score is a product failure."""
    m = _SCORE.search(text)
    if not m:
        reason = f"the LLM gave no parsable score (expected a 'Score: X.Y' line): {_excerpt(text)!r}"
        _bad_answer(ctx, step, reason, text)
    score = float(m["value"].replace(",", "."))
    if not 0 <= score <= 10:
        _bad_answer(ctx, step, f"the LLM score {score} is outside 0-10", text)
    return {
        "score": score,
        "strengths": _list_line("strengths", text),
        "weaknesses": _list_line("weaknesses", text),
    }


def _usage(result: Any) -> dict[str, Any]:
    return {"model": result.model, "latency_s": round(result.latency_s, 3), **dict(result.usage)}


# -- the cycle ------------------------------------------------------------------------------


async def cycle(ctx: overnight.CycleContext) -> None:
    settings = read_settings(ctx.settings)
    use_db = settings["use_database"]
    db = ctx.components["db"] if use_db else None
    llm = ctx.components["llm"]
    vectors = ctx.components["vectors"]
    key = {"night_id": ctx.night_id, "cycle": ctx.cycle}

    async with ctx.step("interview"):
        anketa = await interview(ctx, llm)
        if db is not None:
            row = anketa_row(ctx, anketa)
            await db.execute(_upsert("grant_anketa", row), row)

    async with ctx.step("audit"):
        if db is not None:
            anketa = await stored_anketa(ctx, db, key)
        await audit(ctx, llm, anketa, db)

    async with ctx.step("research"):
        search_name = "search_recorded" if settings["mock_websearch"] else "search"
        sources = await research(ctx, ctx.components[search_name], search_name, anketa, settings)
        if db is not None:
            sources = await store_sources(ctx, db, key, sources)

    async with ctx.step("writer"):
        application = await write_application(ctx, llm, vectors, anketa, sources)
        if db is not None:
            row = {
                **key,
                "attempt": ctx.attempt,
                "title": application["title"],
                "body": application["text"],
                "chars": len(application["text"]),
                "sections": len(application["sections"]),
                "model": application["model"],
                "updated_at": time.time(),
            }
            await db.execute(_upsert("grant_applications", row), row)

    async with ctx.step("reviewer"):
        text = application["text"]
        if db is not None:
            stored = await db.fetch_one(
                "SELECT body FROM grant_applications WHERE night_id = :night_id AND cycle = :cycle", key
            )
            if stored is None:
                ctx.fail(
                    f"reviewer: the application of cycle {ctx.cycle} is not in the database "
                    "after the writer stored it"
                )
            text = stored["body"]
        review = await review_application(ctx, llm, vectors, anketa, sources, text, settings, db)

    if not settings["expert"]:
        ctx.artifact("expert.json", {"skipped": "plan choice: --no-expert"})
        ctx.artifact(
            "expert.md",
            "# Expert evaluation\n\nSkipped: plan choice `--no-expert` (protected setting "
            "`expert = false`). This is a choice made for the whole night, not a degradation.\n",
        )
        return

    async with ctx.step("expert"):
        await expert_evaluation(ctx, vectors, anketa, sources, text, review, settings, db)


# -- 1. interview ---------------------------------------------------------------------------


def interview_prompts(applicant: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    questionnaire = load_questionnaire()
    keys = [q["key"] for q in questionnaire["questions"]]
    system = (
        f"You are the project lead of {applicant['organisation']}, a {applicant['organisation_type']} "
        f"in {applicant['region']}, filling in the applicant questionnaire of a community grants "
        "programme. Answer every question in 2 to 4 concrete sentences, in the first person "
        "plural, consistently with the applicant profile. Reply with one JSON object whose keys "
        "are the question keys and whose values are your answers as strings, and nothing else.\n"
        f"FORMAT: json keys={','.join(keys)}"
    )
    questions = "\n".join(f"- {q['key']}: {q['question']}" for q in questionnaire["questions"])
    user = (
        f"Applicant profile:\n{_facts(applicant)}\n\n"
        f"{questionnaire['title']} ({questionnaire['instructions']})\n{questions}"
    )
    return system, user, keys


async def interview(ctx: Any, llm: Any) -> dict[str, Any]:
    applicant = applicant_for(ctx)
    system, user, keys = interview_prompts(applicant)
    result = await llm.chat(user, system=system, temperature=0.7, max_tokens=2500)
    answers = parse_json_answer(ctx, "interview", result.text, keys)
    anketa = {"applicant": applicant, "answers": answers, "llm": _usage(result)}
    ctx.artifact("interview.json", {**anketa, "prompt": {"system": system, "user": user}})
    ctx.artifact("interview.md", interview_md(anketa))
    return anketa


def anketa_row(ctx: Any, anketa: Mapping[str, Any]) -> dict[str, Any]:
    a = anketa["applicant"]
    return {
        "night_id": ctx.night_id,
        "cycle": ctx.cycle,
        "attempt": ctx.attempt,
        "profile_id": a["profile_id"],
        "category": a["category"],
        "project_name": a["project_name"],
        "organisation": a["organisation"],
        "region": a["region"],
        "budget_rub": a["budget_rub"],
        "team_size": a["team_size"],
        "beneficiaries": a["beneficiaries"],
        "duration_months": a["duration_months"],
        "applicant": json.dumps(a, ensure_ascii=False),
        "answers": json.dumps(anketa["answers"], ensure_ascii=False),
        "model": anketa["llm"]["model"],
        "updated_at": time.time(),
    }


async def stored_anketa(ctx: Any, db: Any, key: Mapping[str, Any]) -> dict[str, Any]:
    """The anketa as the database has it: the audit checks what was stored, not a copy."""
    row = await db.fetch_one(
        "SELECT applicant, answers, model FROM grant_anketa WHERE night_id = :night_id AND cycle = :cycle",
        key,
    )
    if row is None:
        ctx.fail(
            f"audit: the anketa of cycle {ctx.cycle} is not in the database after the interview stored it"
        )
    return {
        "applicant": json.loads(row["applicant"]),
        "answers": json.loads(row["answers"]),
        "llm": {"model": row["model"]},
    }


def interview_md(anketa: Mapping[str, Any]) -> str:
    a = anketa["applicant"]
    lines = [
        f"# Anketa — {a['project_name']}",
        "",
        f"Synthetic applicant from profile template `{a['profile_id']}` ({a['category_label']}), "
        f"interviewed with {anketa['llm']['model']}.",
        "",
        "| Field | Value |",
        "|---|---|",
        f"| Organisation | {_cap(a['organisation'])} ({a['organisation_type']}, {a['years_active']} years) |",
        f"| Region | {a['region']} |",
        f"| Target group | {a['target_group']} |",
        f"| Beneficiaries | {a['beneficiaries']} |",
        f"| Requested amount | {_rub(a['budget_rub'])} |",
        f"| Duration | {a['duration_months']} months |",
        f"| Team | {a['team_size']} people |",
        f"| Partners | {'; '.join(a['partners'])} |",
        "",
        "## Answers",
        "",
    ]
    for i, q in enumerate(load_questionnaire()["questions"], 1):
        lines += [f"**{i}. {q['question']}**", "", f"> {anketa['answers'].get(q['key'], '')}", ""]
    return "\n".join(lines)


# -- 2. audit ---------------------------------------------------------------------------------


def audit_rules(anketa: Mapping[str, Any]) -> list[dict[str, Any]]:
    a, answers = anketa["applicant"], anketa["answers"]
    keys = [q["key"] for q in load_questionnaire()["questions"]]
    missing = [k for k in keys if not str(answers.get(k) or "").strip()]
    thin = [k for k in keys if k not in missing and len(str(answers[k])) < MIN_ANSWER_CHARS]
    regions = next(p["regions"] for p in load_profiles()["profiles"] if p["id"] == a["profile_id"])

    def rule(name: str, ok: bool, detail: str) -> dict[str, Any]:
        return {"rule": name, "passed": ok, "detail": detail}

    return [
        rule(
            "every question answered",
            not missing,
            f"no answer to {', '.join(missing)}" if missing else f"{len(keys)} of {len(keys)} answered",
        ),
        rule(
            "answers are substantive",
            not thin,
            f"answers under {MIN_ANSWER_CHARS} characters: {', '.join(thin)}"
            if thin
            else f"every answer has at least {MIN_ANSWER_CHARS} characters",
        ),
        rule(
            "requested amount within programme limits",
            GRANT_MIN_RUB <= a["budget_rub"] <= GRANT_MAX_RUB,
            f"{_rub(a['budget_rub'])} (limits {_rub(GRANT_MIN_RUB)} – {_rub(GRANT_MAX_RUB)})",
        ),
        rule(
            "duration within programme limits",
            DURATION_MIN <= a["duration_months"] <= DURATION_MAX,
            f"{a['duration_months']} months (limits {DURATION_MIN}–{DURATION_MAX})",
        ),
        rule("team of at least two", a["team_size"] >= 2, f"{a['team_size']} people"),
        rule(
            "region consistent with the profile",
            a["region"] in regions,
            f"{a['region']} ({'one of' if a['region'] in regions else 'not one of'} {', '.join(regions)})",
        ),
        rule(
            "beneficiaries named and counted",
            a["beneficiaries"] > 0 and bool(a["target_group"]),
            f"{a['beneficiaries']} {a['target_group']}",
        ),
    ]


async def audit(ctx: Any, llm: Any, anketa: Mapping[str, Any], db: Any) -> dict[str, Any]:
    rules = audit_rules(anketa)
    failed = [r for r in rules if not r["passed"]]
    report: dict[str, Any] = {
        "rules": rules,
        "rules_passed": len(rules) - len(failed),
        "rules_total": len(rules),
    }
    if failed:
        report["verdict"] = "failed"
        ctx.artifact("audit.json", report)
        ctx.artifact("audit.md", audit_md(anketa, report))
        ctx.fail("audit: the anketa fails " + "; ".join(f"{r['rule']} ({r['detail']})" for r in failed))
    questions = {q["key"]: q["question"] for q in load_questionnaire()["questions"]}
    system = (
        "You are a programme officer of a community grants programme. Audit the applicant "
        "questionnaire below for completeness and internal consistency: are the answers "
        "specific, do they agree with each other and with the applicant's profile? Give a score "
        "from 0 to 10 with one decimal on the first line as 'Score: X.Y', then one line "
        "'Strengths: ...' and one line 'Weaknesses: ...', items separated by semicolons.\n"
        "FORMAT: score"
    )
    user = f"Applicant profile:\n{_facts(anketa['applicant'])}\n\nAnswers:\n" + "\n".join(
        f"- {questions.get(k, k)} {v}" for k, v in anketa["answers"].items()
    )
    result = await llm.chat(user, system=system, temperature=0.2, max_tokens=500)
    llm_review = parse_score(ctx, "audit", result.text)
    score = round(0.5 * 10 * report["rules_passed"] / report["rules_total"] + 0.5 * llm_review["score"], 1)
    report.update({"verdict": "passed", "llm": {**llm_review, **_usage(result)}, "score": score})
    ctx.artifact("audit.json", report)
    ctx.artifact("audit.md", audit_md(anketa, report))
    if db is not None:
        row = {
            "night_id": ctx.night_id,
            "cycle": ctx.cycle,
            "attempt": ctx.attempt,
            "score": score,
            "rules_passed": report["rules_passed"],
            "rules_total": report["rules_total"],
            "llm_score": llm_review["score"],
            "report": json.dumps(report, ensure_ascii=False),
            "updated_at": time.time(),
        }
        await db.execute(_upsert("grant_audits", row), row)
    return report


def audit_md(anketa: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    a = anketa["applicant"]
    lines = [f"# Audit of the anketa — {a['project_name']}", ""]
    if "score" in report:
        lines += [
            f"**Audit score: {report['score']:.1f} / 10** (rules {report['rules_passed']}/"
            f"{report['rules_total']}, weighted half; LLM audit {report['llm']['score']:.1f}, weighted half)",
            "",
        ]
    else:
        lines += ["**Audit failed**: the anketa does not pass the rules below.", ""]
    lines += ["| Rule | Result | Detail |", "|---|---|---|"]
    lines += [
        f"| {r['rule']} | {'pass' if r['passed'] else 'FAIL'} | {r['detail']} |" for r in report["rules"]
    ]
    if "llm" in report:
        llm = report["llm"]
        lines += ["", f"## LLM audit ({llm['model']})", "", "Strengths:", ""]
        lines += [f"- {s}" for s in llm["strengths"]] or ["- (none given)"]
        lines += ["", "Weaknesses:", ""]
        lines += [f"- {w}" for w in llm["weaknesses"]] or ["- (none given)"]
    return "\n".join(lines) + "\n"


# -- 3. research ----------------------------------------------------------------------------


def research_queries(applicant: Mapping[str, Any]) -> list[str]:
    """Deterministic in the profile template, so data/search_recorded.json covers them all."""
    topic = applicant["search_topic"]
    return [
        f"{topic} best practices",
        f"{topic} statistics",
        f"{applicant['category']} grants for {applicant['organisation_type']} projects",
    ]


async def research(
    ctx: Any, search: Any, search_name: str, anketa: Mapping[str, Any], settings: Mapping[str, Any]
) -> list[dict[str, Any]]:
    queries = research_queries(anketa["applicant"])
    per_query = []
    sources: list[dict[str, Any]] = []
    seen: set[str] = set()
    for query in queries:
        results = await search.search(query, limit=4)
        per_query.append({"query": query, "results": len(results)})
        for r in results:
            if r.url in seen or len(sources) >= MAX_SOURCES:
                continue
            seen.add(r.url)
            sources.append(
                {
                    "n": len(sources) + 1,
                    "query": query,
                    "title": r.title,
                    "url": r.url,
                    "snippet": r.snippet,
                    "origin": r.source,
                }
            )
    origins = sorted({s["origin"] for s in sources})
    report = {
        "component": search_name,
        "mode": "recorded results (plan choice: mock_websearch = true)"
        if settings["mock_websearch"]
        else "web search",
        "queries": per_query,
        "origins": origins,
        "sources": sources,
    }
    ctx.artifact("research.json", report)
    ctx.artifact("research.md", research_md(anketa, report))
    if not sources:
        ctx.fail(
            f"research: web search returned no results for any of the {len(queries)} queries: "
            + "; ".join(queries)
        )
    return sources


async def store_sources(
    ctx: Any, db: Any, key: Mapping[str, Any], sources: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Upsert the sources, drop rows a previous attempt left beyond them, read them back."""
    now = time.time()
    rows = [{**key, "attempt": ctx.attempt, **s, "updated_at": now} for s in sources]
    await db.execute(_upsert("grant_sources", rows[0], key=("night_id", "cycle", "n")), rows)
    await db.execute(
        "DELETE FROM grant_sources WHERE night_id = :night_id AND cycle = :cycle AND n > :count",
        {**key, "count": len(sources)},
    )
    stored = await db.fetch_all(
        "SELECT n, query, title, url, snippet, origin FROM grant_sources "
        "WHERE night_id = :night_id AND cycle = :cycle ORDER BY n",
        key,
    )
    if len(stored) != len(sources):
        ctx.fail(
            f"research: stored {len(sources)} sources but the database has {len(stored)} "
            f"for cycle {ctx.cycle}"
        )
    return [dict(r) for r in stored]


def research_md(anketa: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    lines = [
        f"# Research — {anketa['applicant']['project_name']}",
        "",
        f"Mode: {report['mode']} (component `{report['component']}`; result origin: "
        f"{', '.join(report['origins']) or 'none'}).",
        "",
        "| Query | Results |",
        "|---|---|",
    ]
    lines += [f"| {q['query']} | {q['results']} |" for q in report["queries"]]
    lines += ["", "## Sources", ""]
    for s in report["sources"]:
        lines += [f"[{s['n']}] **{s['title']}** — <{s['url']}>", f"    {s['snippet']}", ""]
    if not report["sources"]:
        lines.append("No sources found.")
    return "\n".join(lines) + "\n"


# -- 4. writer ------------------------------------------------------------------------------


def section_refs(index: int, n_sources: int) -> list[int]:
    """Which sources a section is asked to cite: none for the Summary, then two in rotation."""
    if index == 0 or n_sources == 0:
        return []
    first = (2 * (index - 1)) % n_sources
    return sorted({first + 1, (first + 1) % n_sources + 1})


def budget_table(applicant: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """Cost items that sum exactly to the requested amount, within the budget rules."""
    total = applicant["budget_rub"]
    acts = applicant["activities"]
    shares = [
        ("Staff fees for project work", 0.40, "project manager, coordinators and specialists"),
        ("Fees of invited experts and trainers", 0.10, acts[-1]),
        ("Equipment and materials", 0.20, acts[0]),
        ("Venues, travel within the region and events", 0.13, acts[1] if len(acts) > 1 else acts[0]),
        ("Publishing and communication", 0.06, "materials, website and public reports"),
        ("Independent evaluation", 0.05, "baseline and final surveys of beneficiaries"),
        ("Administrative costs", 0.06, "accounting and bank fees"),
    ]
    items = [(name, _round_to(total * share, 1000), why) for name, share, why in shares]
    rest = total - sum(amount for _, amount, _ in items)
    items[0] = (items[0][0], items[0][1] + rest, items[0][2])
    return items


def timeline_table(applicant: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    months = applicant["duration_months"]
    acts = applicant["activities"]
    main_start, main_end = 3, max(4, months - 2)
    rows = [
        ("1–2", "Preparation", "partner agreements signed, team and volunteers trained, baseline survey done")
    ]
    span = max(1, (main_end - main_start + 1) // len(acts))
    for i, act in enumerate(acts):
        start = min(main_end, main_start + i * span)
        rows.append(
            (
                f"{start}–{main_end}",
                _cap(act),
                f"first results of {act} documented by month {min(main_end, start + 2)}",
            )
        )
    rows.append((f"{months // 2}", "Interim report", "indicators and finances reported to the programme"))
    rows.append(
        (
            f"{months - 1}–{months}",
            "Evaluation and dissemination",
            "final survey, public report, materials published openly",
        )
    )
    return rows


def _clean_section(text: str, title: str) -> str:
    """The section body: no heading of its own, sub-headings kept below ``##``."""
    lines = text.strip().splitlines()
    if lines and lines[0].lstrip("#* ").rstrip("*: ").strip().lower() == title.lower():
        lines = lines[1:]
    out = [f"### {ln.lstrip('#').strip()}" if re.match(r"^#{1,2}\s", ln) else ln for ln in lines]
    return "\n".join(out).strip()


def _guidance(hit: Any) -> str:
    p = hit.payload
    label = "Excerpt of a funded application" if p.get("kind") == "example" else "Requirement"
    return f"- {label} ({p.get('part', hit.id)}): {_excerpt(str(p.get('body') or hit.text), 400)}"


def writer_prompts(
    anketa: Mapping[str, Any], index: int, sources: list[dict[str, Any]], hits: list[Any]
) -> tuple[str, str, list[int]]:
    a, answers = anketa["applicant"], anketa["answers"]
    title, brief, keys = SECTIONS[index]
    questions = {q["key"]: q["question"] for q in load_questionnaire()["questions"]}
    refs = section_refs(index, len(sources))
    system = (
        "You are an experienced grant writer preparing an application to a community grants "
        f'programme on behalf of {a["organisation"]}. Write the body of the section "{title}": '
        f"connected prose in 2 to 4 paragraphs, no heading, at least {SECTION_MIN_CHARS} characters, "
        "concrete and consistent with the applicant's answers and the funder's requirements. "
        "Cite the numbered research sources inline as [1], [2] where you use them.\n"
        f'FORMAT: section title="{title}" min_chars={SECTION_MIN_CHARS}'
    )
    parts = [
        f"Application: {a['project_name']} — {a['goal']}.",
        f"Applicant profile:\n{_facts(a)}",
        f'The section "{title}" must cover {brief}.',
        "The applicant's answers:\n" + "\n".join(f"- {questions[k]} {answers[k]}" for k in keys),
    ]
    if hits:
        parts.append(
            "Programme guidance and excerpts of funded applications:\n"
            + "\n".join(_guidance(h) for h in hits)
        )
    if refs:
        by_n = {s["n"]: s for s in sources}
        cite = [f"[{n}] {by_n[n]['title']}" for n in refs]
        parts.append("Research sources to cite by their numbers:\nCITE: " + "\n".join(cite))
    return system, "\n\n".join(parts), refs


async def write_application(
    ctx: Any, llm: Any, vectors: Any, anketa: Mapping[str, Any], sources: list[dict[str, Any]]
) -> dict[str, Any]:
    a = anketa["applicant"]
    sections = []
    models = set()
    for index, (title, brief, _) in enumerate(SECTIONS):
        hits = await vectors.search(
            COLLECTION, f"{title}: {brief}. {a['category_label']} {a['search_topic']}", limit=3
        )
        system, user, refs = writer_prompts(anketa, index, sources, hits)
        result = await llm.chat(user, system=system, temperature=0.5, max_tokens=1500)
        models.add(result.model)
        body = _clean_section(result.text, title)
        if title == "Budget":
            body += "\n\n" + budget_md(a)
        elif title == "Timeline":
            body += "\n\n" + timeline_md(a)
        sections.append(
            {
                "title": title,
                "body": body,
                "chars": len(body),
                "asked_to_cite": refs,
                "cited": sorted({int(n) for n in _CITATION.findall(body)}),
                "rag": [{"id": h.id, "score": round(h.score, 4)} for h in hits],
                "llm": _usage(result),
            }
        )
    title = f"{a['project_name']}: {_cap(a['goal'])}"
    text = application_md(title, a, sections, sources)
    application = {"title": title, "text": text, "sections": sections, "model": ", ".join(sorted(models))}
    ctx.artifact("application.md", text)
    ctx.artifact(
        "writer.json",
        {
            "title": title,
            "chars": len(text),
            "sections": [{k: v for k, v in s.items() if k != "body"} for s in sections],
            "sources": len(sources),
        },
    )
    ctx.artifact("writer.md", writer_md(application, sources))
    return application


def budget_md(a: Mapping[str, Any]) -> str:
    items = budget_table(a)
    lines = ["| Cost item | Amount | Serves |", "|---|---:|---|"]
    lines += [f"| {name} | {_rub(amount)} | {why} |" for name, amount, why in items]
    lines.append(f"| **Total requested** | **{_rub(sum(x for _, x, _ in items))}** | |")
    return "\n".join(lines)


def timeline_md(a: Mapping[str, Any]) -> str:
    lines = ["| Months | Stage | Milestone |", "|---|---|---|"]
    lines += [f"| {m} | {stage} | {milestone} |" for m, stage, milestone in timeline_table(a)]
    return "\n".join(lines)


def application_md(
    title: str, a: Mapping[str, Any], sections: list[dict[str, Any]], sources: list[dict[str, Any]]
) -> str:
    lines = [
        f"# {title}",
        "",
        f"*Application to the community grants programme — {a['category_label']}*",
        "",
        "| Applicant summary | |",
        "|---|---|",
        f"| Applicant | {_cap(a['organisation'])} ({a['organisation_type']}), "
        f"{a['years_active']} years of work |",
        f"| Region | {a['region']} |",
        f"| Target group | {_cap(a['target_group'])} |",
        f"| Beneficiaries | {a['beneficiaries']} |",
        f"| Requested amount | {_rub(a['budget_rub'])} |",
        f"| Duration | {a['duration_months']} months |",
        f"| Team | {a['team_size']} people |",
        f"| Partners | {_cap('; '.join(a['partners']))} |",
        "",
    ]
    for s in sections:
        lines += [f"## {s['title']}", "", s["body"], ""]
    lines += ["## Sources", ""]
    lines += [f"[{s['n']}] {s['title']}. <{s['url']}>  " for s in sources]
    return "\n".join(lines).rstrip() + "\n"


def writer_md(application: Mapping[str, Any], sources: list[dict[str, Any]]) -> str:
    lines = [
        f"# Writer — {application['title']}",
        "",
        f"{len(application['text'])} characters in {len(application['sections'])} sections, "
        f"{len(sources)} sources; model {application['model']}. The full text is `application.md`.",
        "",
        "| Section | Characters | Cites | RAG context (score) | LLM latency |",
        "|---|---:|---|---|---:|",
    ]
    for s in application["sections"]:
        rag = ", ".join(f"{h['id']} ({h['score']:.2f})" for h in s["rag"])
        cites = " ".join(f"[{n}]" for n in s["cited"]) or "—"
        lines.append(f"| {s['title']} | {s['chars']} | {cites} | {rag} | {s['llm']['latency_s']:.2f} s |")
    return "\n".join(lines) + "\n"


# -- 5. reviewer ----------------------------------------------------------------------------


def split_sections(text: str) -> dict[str, str]:
    """``## `` headings → their bodies (the Sources list included, under "Sources")."""
    out: dict[str, str] = {}
    current: str | None = None
    buf: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            if current is not None:
                out[current] = "\n".join(buf).strip()
            current, buf = line[3:].strip(), []
        elif current is not None:
            buf.append(line)
    if current is not None:
        out[current] = "\n".join(buf).strip()
    return out


def _prose(body: str) -> str:
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("|")).strip()


def review_rules(
    text: str, a: Mapping[str, Any], sources: list[dict[str, Any]], settings: Mapping[str, Any]
) -> dict[str, Any]:
    parts = split_sections(text)
    listed = parts.pop("Sources", None)
    # A section is its prose: a generated table (budget, timeline) does not make one.
    prose = {t: len(_prose(body)) for t, body in parts.items()}
    substantive = [t for t, n in prose.items() if n >= PLACEHOLDER_CHARS]
    placeholders = [t for t, n in prose.items() if n < PLACEHOLDER_CHARS]
    missing = [t for t in REQUIRED_SECTIONS if t not in substantive]
    cited = sorted({int(n) for body in parts.values() for n in _CITATION.findall(body)})
    numbers = {s["n"] for s in sources}
    dangling = [n for n in cited if n not in numbers]
    listed_n = {int(n) for n in re.findall(r"^\[(\d+)\]", listed or "", re.M)}
    budget_total = sum(x for _, x, _ in budget_table(a))
    failures = []
    length, min_len = len(text), settings["min_application_length"]
    if length < min_len:
        failures.append(f"application is {length} characters, below the minimum {min_len}")
    if missing:
        failures.append(f"missing required sections: {', '.join(missing)}")
    if len(substantive) < settings["min_sections"]:
        failures.append(
            f"application has {len(substantive)} sections, below the minimum {settings['min_sections']}"
        )
    if not cited:
        failures.append("no citations: the application cites none of its sources")
    if dangling:
        failures.append(f"citations {', '.join(f'[{n}]' for n in dangling)} match no listed source")
    if listed is None or listed_n != numbers:
        failures.append(f"the Sources list has {len(listed_n)} entries, expected {len(numbers)}")
    if budget_total != a["budget_rub"]:
        failures.append(
            f"budget table sums to {_rub(budget_total)}, not the requested {_rub(a['budget_rub'])}"
        )
    return {
        "chars": length,
        "sections": list(parts),
        "substantive_sections": len(substantive),
        "placeholder_sections": placeholders,
        "missing_required": missing,
        "cited": cited,
        "uncited_sources": sorted(numbers - set(cited)),
        "failures": failures,
    }


async def review_application(
    ctx: Any,
    llm: Any,
    vectors: Any,
    anketa: Mapping[str, Any],
    sources: list[dict[str, Any]],
    text: str,
    settings: Mapping[str, Any],
    db: Any,
) -> dict[str, Any]:
    a = anketa["applicant"]
    rules = review_rules(text, a, sources, settings)
    report: dict[str, Any] = {
        "thresholds": {
            k: settings[k] for k in ("min_application_length", "min_sections", "min_review_score")
        },
        "rules": rules,
    }
    failures = list(rules["failures"])
    if not failures:
        criteria = await vectors.search(
            COLLECTION, "evaluation criteria weights score threshold experts", limit=2
        )
        system = (
            "You are an independent expert reviewer of a community grants programme. Review the "
            "application below against the programme's evaluation criteria: relevance, evidence, "
            "feasibility, budget, team, impact and sustainability. Give an overall score from 0 to 10 "
            "with one decimal on the first line as 'Score: X.Y', then one line 'Strengths: ...' and one "
            "line 'Weaknesses: ...', items separated by semicolons.\nFORMAT: score"
        )
        user = (
            "Evaluation criteria:\n"
            + "\n".join(f"- {_excerpt(h.text, 600)}" for h in criteria)
            + f"\n\nApplication to review:\n\n{text}"
        )
        result = await llm.chat(user, system=system, temperature=0.2, max_tokens=600)
        llm_review = parse_score(ctx, "reviewer", result.text)
        report["llm"] = {**llm_review, **_usage(result), "criteria": [h.id for h in criteria]}
        report["score"] = llm_review["score"]
        for weakness in llm_review["weaknesses"]:
            ctx.metric("weakness", weakness)  # the morning report counts the most frequent
        if llm_review["score"] < settings["min_review_score"]:
            failures.append(
                f"review score {llm_review['score']:.1f} below the minimum {settings['min_review_score']:.1f}"
            )
    else:
        report["llm"] = {"skipped": "the application fails the rules; no LLM review"}
    report["passed"] = not failures
    report["failures"] = failures
    ctx.artifact("reviewer.json", report)
    ctx.artifact("reviewer.md", reviewer_md(a, report))
    if db is not None:
        row = {
            "night_id": ctx.night_id,
            "cycle": ctx.cycle,
            "attempt": ctx.attempt,
            "passed": int(report["passed"]),
            "score": report.get("score"),
            "failures": json.dumps(failures, ensure_ascii=False),
            "report": json.dumps(report, ensure_ascii=False),
            "updated_at": time.time(),
        }
        await db.execute(_upsert("grant_reviews", row), row)
    if failures:
        ctx.fail("; ".join(failures))
    return report


def reviewer_md(a: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    rules, th = report["rules"], report["thresholds"]
    cited = " ".join(f"[{n}]" for n in rules["cited"])
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [f"# Review — {a['project_name']}", "", f"**{verdict}**"]
    if "score" in report:
        lines[-1] += f" — review score {report['score']:.1f} / 10 (minimum {th['min_review_score']:.1f})"
    lines += ["", "| Check | Value | Required |", "|---|---|---|"]
    lines += [
        f"| Length | {rules['chars']} characters | ≥ {th['min_application_length']} |",
        f"| Sections with content | {rules['substantive_sections']} | ≥ {th['min_sections']} |",
        f"| Required sections missing | {', '.join(rules['missing_required']) or 'none'} | none |",
        f"| Sources cited | {cited or 'none'} | at least one, all listed |",
    ]
    if report["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in report["failures"]]
    llm = report["llm"]
    if "score" in llm:
        lines += ["", f"## Reviewer's comments ({llm['model']})", "", "Strengths:", ""]
        lines += [f"- {s}" for s in llm["strengths"]] or ["- (none given)"]
        lines += ["", "Weaknesses:", ""]
        lines += [f"- {w}" for w in llm["weaknesses"]] or ["- (none given)"]
    else:
        lines += ["", f"LLM review: {llm['skipped']}."]
    return "\n".join(lines) + "\n"


# -- 6. expert ------------------------------------------------------------------------------


async def expert_evaluation(
    ctx: Any,
    vectors: Any,
    anketa: Mapping[str, Any],
    sources: list[dict[str, Any]],
    text: str,
    review: Mapping[str, Any],
    settings: Mapping[str, Any],
    db: Any,
) -> dict[str, Any]:
    parts = split_sections(text)
    parts.pop("Sources", None)
    rules = review["rules"]
    relevance = []
    for title, body in parts.items():
        hits = await vectors.search(COLLECTION, f"{title}. {body[:1500]}", limit=1)
        relevance.append(
            {
                "section": title,
                "best": hits[0].id if hits else None,
                "score": round(hits[0].score, 4) if hits else 0.0,
            }
        )
    mean_rel = sum(r["score"] for r in relevance) / len(relevance) if relevance else 0.0
    n_sources = len(sources) or 1
    criteria = {
        "length": 2.5 * min(1.0, rules["chars"] / (1.3 * settings["min_application_length"])),
        "sections": 2.5 * min(1.0, rules["substantive_sections"] / len(SECTIONS)),
        "citations": 2.5 * len(rules["cited"]) / n_sources,
        "rag_relevance": 2.5 * min(1.0, mean_rel / RELEVANCE_FULL),
    }
    score = round(sum(criteria.values()), 1)
    grade = "strong" if score >= 8.5 else "fundable" if score >= 7.0 else "weak"
    report = {
        "score": score,
        "grade": grade,
        "criteria": {k: round(v, 2) for k, v in criteria.items()},
        "inputs": {
            "chars": rules["chars"],
            "sections": rules["substantive_sections"],
            "cited_sources": len(rules["cited"]),
            "sources": len(sources),
            "mean_rag_relevance": round(mean_rel, 4),
            "relevance_full_at": RELEVANCE_FULL,
        },
        "relevance": relevance,
        "review_score": review.get("score"),
    }
    ctx.artifact("expert.json", report)
    ctx.artifact("expert.md", expert_md(anketa["applicant"], report))
    ctx.metric("score", score)  # the morning report's quality distribution
    if db is not None:
        row = {
            "night_id": ctx.night_id,
            "cycle": ctx.cycle,
            "attempt": ctx.attempt,
            "score": score,
            "detail": json.dumps(report, ensure_ascii=False),
            "updated_at": time.time(),
        }
        await db.execute(_upsert("grant_expert_scores", row), row)
    return report


def expert_md(a: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    c, i = report["criteria"], report["inputs"]
    lines = [
        f"# Expert evaluation — {a['project_name']}",
        "",
        f"**{report['score']:.1f} / 10 — {report['grade']}**",
        "",
        "| Criterion | Points (of 2.5) | Basis |",
        "|---|---:|---|",
        f"| Length | {c['length']:.2f} | {i['chars']} characters |",
        f"| Sections | {c['sections']:.2f} | {i['sections']} of {len(SECTIONS)} sections with content |",
        f"| Citations | {c['citations']:.2f} | {i['cited_sources']} of {i['sources']} sources cited |",
        f"| RAG relevance | {c['rag_relevance']:.2f} | mean best match {i['mean_rag_relevance']:.3f} "
        f"(full points at {i['relevance_full_at']}) |",
        "",
        "| Section | Closest programme document | Similarity |",
        "|---|---|---:|",
    ]
    lines += [f"| {r['section']} | {r['best'] or '—'} | {r['score']:.3f} |" for r in report["relevance"]]
    return "\n".join(lines) + "\n"
