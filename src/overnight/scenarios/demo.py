"""The demo night's scenario: a small, deterministic stand-in for a document pipeline.

Each cycle drafts a short grant-style application for a synthetic applicant picked from
the cycle's input, checks it against the protected quality thresholds, and saves every
stage as an artifact. It runs on nothing but the standard library, so ``overnight demo``
works on a fresh machine.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine.context import CycleContext

APPLICANTS = [
    ("a rural school library", "education", "reading clubs for 300 pupils"),
    ("a river clean-up collective", "ecology", "monthly clean-ups along 12 km of bank"),
    ("a community music studio", "culture", "free lessons for 80 teenagers"),
    ("a volunteer first-aid team", "health", "training 200 residents in first aid"),
    ("a coding club for girls", "technology", "weekly workshops for 60 students"),
]

SECTIONS = ["Summary", "Problem", "Goals", "Activities", "Budget", "Team", "Risks", "Impact"]


async def cycle(ctx: CycleContext) -> None:
    rng = ctx.input.random()
    name, field, activity = ctx.input.choice(APPLICANTS)
    budget = rng.randrange(50, 500) * 1000

    async with ctx.step("interview"):
        await asyncio.sleep(0.05 + rng.random() * 0.05)
        anketa = {"applicant": name, "field": field, "activity": activity, "budget": budget}
        ctx.artifact("interview.json", anketa)

    async with ctx.step("writer"):
        await asyncio.sleep(0.1 + rng.random() * 0.1)
        body = [f"# Application: {name}", ""]
        for section in SECTIONS:
            body += [f"## {section}", "", _paragraph(section, anketa, rng), ""]
        text = "\n".join(body)
        ctx.artifact("application.md", text)

    async with ctx.step("reviewer"):
        await asyncio.sleep(0.05)
        present = [s for s in SECTIONS if f"## {s}" in text]
        min_sections = ctx.settings.get("min_sections", 8)
        ctx.artifact("review.json", {"sections": len(present), "required": min_sections})
        if len(present) < min_sections:
            ctx.fail(f"only {len(present)} sections, {min_sections} required")
        if len(text) < ctx.settings.get("min_length", 1000):
            ctx.fail(f"application is {len(text)} characters, below {ctx.settings['min_length']}")


def _paragraph(section: str, anketa: dict[str, Any], rng: Any) -> str:
    verbs = ["delivers", "expands", "sustains", "measures", "documents"]
    return (
        f"{anketa['applicant'].capitalize()} {rng.choice(verbs)} {anketa['activity']} in the field "
        f"of {anketa['field']}. This {section.lower()} section sets out how a budget of "
        f"{anketa['budget']:,} covers the work, who does it and how success is counted, with "
        f"quarterly milestones and a public report at the end of the year."
    )
