"""A support-answer bot, tested end to end every night against its own stack.

One cycle answers one customer question: the FAQ entries closest to it from Qdrant (local
mode), an answer from an OpenAI-compatible LLM given those entries, a ticket opened in
the helpdesk (your own HTTP service, called with ``requests`` through the ``Helpdesk``
component), the answer stored in the database. Then the product's own rules: the answer
cites a FAQ id, the right one among them, and the ticket went to the right queue.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpdesk_server import ensure_running

import overnight

# The stand-in for your own service: started here, on loopback, before the night's
# components connect (in your project it already runs).
ensure_running()

HERE = Path(__file__).resolve().parent
FAQ = json.loads((HERE / "faq.json").read_text(encoding="utf-8"))

# (the customer's question, the FAQ entry that answers it, the queue it belongs to)
QUESTIONS = [
    ("I forgot my password, how can I reset it?", "faq-1", "accounts"),
    ("Where can I download the invoices for my purchases?", "faq-3", "billing"),
    ("How many days does a refund take to reach my card?", "faq-4", "billing"),
    ("Can the delivery address of my order still be changed?", "faq-5", "orders"),
    ("How can I track the order I placed yesterday?", "faq-6", "orders"),
    ("How do I export all my data?", "faq-7", "privacy"),
]

SYSTEM = "You answer customers' support questions. Answer from the FAQ entries below and cite their ids."


async def setup(night: overnight.NightContext) -> None:
    """Once per session, after the components connected: the FAQ and the answers table."""
    await night.components["db"].execute(
        "CREATE TABLE IF NOT EXISTS answers (night TEXT, cycle INTEGER, ticket TEXT, answer TEXT)"
    )
    faq = night.components["faq"]
    await faq.ensure_collection("faq")
    await faq.upsert("faq", [{"id": e["id"], "text": f"{e['question']} {e['answer']}"} for e in FAQ])


async def cycle(ctx: overnight.CycleContext) -> None:
    db, llm, faq, helpdesk = (ctx.components[n] for n in ("db", "llm", "faq", "helpdesk"))
    question, expected_id, expected_queue = ctx.input.choice(QUESTIONS)

    async with ctx.step("retrieve"):
        hits = await faq.search("faq", question, limit=3)
        ctx.metric("top_score", hits[0].score if hits else 0.0)

    async with ctx.step("answer"):
        context = "\n".join(f"[{h.id}] {h.text}" for h in hits)
        reply = await llm.chat(question, system=f"{SYSTEM}\n{context}")
        ctx.artifact("answer.md", reply.text)
        ctx.metric("answer_chars", len(reply.text))

    async with ctx.step("ticket"):
        ticket = await helpdesk.route(question)
        ctx.metric("queue", ticket["queue"])

    async with ctx.step("store"):
        await db.execute(
            "INSERT INTO answers (night, cycle, ticket, answer) VALUES (:n, :c, :t, :a)",
            {"n": ctx.night_id, "c": ctx.cycle, "t": ticket["ticket_id"], "a": reply.text},
        )

    async with ctx.step("check"):
        cited = re.findall(r"\[(faq-\d+)\]", reply.text)
        if not cited:
            ctx.fail(f"the answer cites no FAQ id: {reply.text[:120]!r}")
        if expected_id not in cited:
            ctx.fail(f"the answer cites {', '.join(cited)}, not {expected_id}, the entry that answers it")
        if ticket["queue"] != expected_queue:
            ctx.fail(f"the ticket went to {ticket['queue']!r}, not {expected_queue!r}")
