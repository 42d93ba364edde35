"""The sandbox LLM's grant style: deterministic grant-application prose (the reference
pipeline's choice; the default style is ``neutral``, in ``sandbox.neutral``). The same
prompt and seed always give the same answer, a different seed a different one. No model,
no network, no randomness from the process (a keyed BLAKE2 stream, so the output is
stable across Python versions).

Conventions the reference pipeline relies on (a directive is a line of a system or user
message; when there are several, the last one wins):

``FORMAT: json keys=a,b,c``  (or ``keys="a, b, c"``)
    The answer is one JSON object and nothing else, with exactly those keys in that
    order; each value is a plausible 1-3 sentence answer built from the prompt's words.

``FORMAT: score``
    First line ``Score: X.Y`` with X.Y in [7.0, 9.8]; then a ``Strengths: ...`` line and a
    ``Weaknesses: ...`` line, each with 2-3 short items separated by ``"; "``.

``FORMAT: section title="..." min_chars=N``
    A Markdown section body (no heading) of at least N characters (default 1800), 2-4
    paragraphs separated by blank lines. If the prompt has a line ``CITE: [1] ... [2] ...``
    (further ``[n] ...`` lines may follow it), every listed reference is cited inline as
    ``[n]``. The product-bug switches: when ``is_bugged(messages, bug_rate, bug_seed)``
    selects this prompt, or the caller says the intermittent bug fired on this call
    (``intermittent=True``, see ``fires_intermittently``), the body is one short paragraph
    under 200 characters instead (the "missing section" bug). Both are keyed on
    ``bug_key``: the prompt without its CITE block, i.e. what the product asks and not the
    research results a dependency (live search, or its cache fallback) handed it, so the
    same input meets the same deterministic bug whichever search served it. Neither
    depends on the generation seed.

anything else
    One plain paragraph of 3-5 sentences about the prompt's topic words (wrapped as
    ``{"answer": ...}`` when an OpenAI request asks for ``response_format`` JSON).

The seed is the request's ``seed`` field when it has one (OpenAI; GigaChat via
``additional_fields``), else the server's ``seed``; the model name does not matter, so
rotating models changes no answer. ``max_tokens`` cuts the answer at a word boundary and
reports ``finish_reason: "length"``.

"The prompt" is every message as ``role`` + content; the topic words are the most
frequent content words of the system and user messages, directive and CITE lines left
out. Token counts (``count_tokens``) are an estimate: every whitespace-separated word
counts one token per started 4 characters. ``embed`` is feature hashing of words and word
pairs into a fixed dimension, L2-normalised, so texts sharing words are close.

Over 400 lines on purpose: the text generator for every directive the reference
pipeline uses, one cohesive deterministic grammar.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .neutral import Replies

__all__ = [
    "DEFAULT_MIN_CHARS",
    "Completion",
    "Directive",
    "Rng",
    "bug_key",
    "complete",
    "count_tokens",
    "embed",
    "find_directive",
    "fires_intermittently",
    "generate",
    "is_bugged",
    "prompt_key",
    "topic_words",
]

DEFAULT_MIN_CHARS = 1800
BUG_MAX_CHARS = 200

Messages = Sequence[Mapping[str, Any]] | str
T = TypeVar("T")


# -- deterministic randomness ----------------------------------------------------------


class Rng:
    """A reproducible stream of numbers keyed by strings (BLAKE2b in counter mode)."""

    def __init__(self, *parts: object) -> None:
        self._key = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=32).digest()
        self._counter = 0

    def u64(self) -> int:
        block = hashlib.blake2b(self._counter.to_bytes(8, "little"), key=self._key, digest_size=8).digest()
        self._counter += 1
        return int.from_bytes(block, "little")

    def below(self, n: int) -> int:
        return self.u64() % n

    def between(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return lo + self.below(hi - lo + 1)

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.below(len(seq))]

    def sample(self, seq: Sequence[T], k: int) -> list[T]:
        pool = list(seq)
        k = min(k, len(pool))
        for i in range(k):
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def _unit(*parts: object) -> float:
    """A number in [0, 1) fixed by its parts."""
    return Rng(*parts).u64() / 2**64


# -- prompts ---------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    """Message content as text: a string, or OpenAI / GigaChat v2 lists of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        return str(content.get("text") or "")
    if isinstance(content, Sequence):
        return "\n".join(_content_text(part) for part in content)
    return str(content)


def _normalise(messages: Messages) -> list[tuple[str, str]]:
    if isinstance(messages, str):
        return [("user", messages)]
    out = []
    for m in messages:
        role = str(m.get("role") or "user")
        out.append(("system" if role == "developer" else role, _content_text(m.get("content"))))
    return out


def prompt_key(messages: Messages) -> str:
    """The canonical prompt text that seeds generation and the bug switch."""
    return "\x1e".join(f"{role}\x1f{text}" for role, text in _normalise(messages))


def _instruction_text(messages: Messages) -> str:
    return "\n".join(text for role, text in _normalise(messages) if role in ("system", "user"))


_DIRECTIVE = re.compile(r"^[ \t]*FORMAT:[ \t]*(?P<kind>[A-Za-z]+)(?P<args>[^\n]*)$", re.MULTILINE)
_ARG = re.compile(r'(?P<name>[A-Za-z_]+)=(?:"(?P<quoted>[^"]*)"|(?P<bare>\S+))')
_CITE = re.compile(r"^[ \t]*CITE:(?P<rest>[^\n]*(?:\n[ \t]*\[\d+\][^\n]*)*)", re.MULTILINE)
_SKIP_LINE = re.compile(r"^[ \t]*(?:FORMAT:|CITE:|\[\d+\])")


@dataclass(frozen=True)
class Directive:
    """A parsed ``FORMAT:`` line: its kind (json, score, section) and its arguments."""

    kind: str
    args: dict[str, str]


def find_directive(messages: Messages) -> Directive | None:
    """The last ``FORMAT:`` line of the system and user messages, if any."""
    found = None
    for m in _DIRECTIVE.finditer(_instruction_text(messages)):
        args = {a["name"]: a["quoted"] or a["bare"] or "" for a in _ARG.finditer(m["args"])}
        found = Directive(m["kind"].lower(), args)
    return found


def _citations(text: str) -> list[str]:
    """Reference labels (``"1"``, ``"2"``, ...) listed on CITE lines, in order, unique."""
    labels: list[str] = []
    for m in _CITE.finditer(text):
        for label in re.findall(r"\[(\d+)\]", m["rest"]):
            if label not in labels:
                labels.append(label)
    return labels


_STOPWORD_TEXT = """
    about above after again against also among an and any are aren't as at be because been before
    being below between both but by can cannot could did does doing down during each either else
    etc every few for from further had has have having her here hers herself him himself his how
    however i if in into is it its itself just least less like made make many may me might more
    most much must my myself need needs no nor not now of off on once one only or other our ours
    ourselves out over own please rather same shall she should since so some such than that the
    their theirs them themselves then there these they this those though through thus to too
    under until up upon us use used using very via was we were what when where which while who
    whom whose why will with within without would yes yet you your yours yourself yourselves
    write writing written answer answers give given provide provided return returns text words
    following based section sections short long each paragraph paragraphs sentence sentences
    describe explain list include includes including keys format json score title chars
    assess audit evaluate review summarise summarize analyse analyze check generate create
    draft prepare application applications applicant project projects focus priority second
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[^\W\d_][\w'-]*", re.UNICODE)


def topic_words(
    messages: Messages,
    limit: int = 6,
    fallback: Sequence[str] = ("the target communities", "long-term impact"),
) -> list[str]:
    """Topic phrases: frequent pairs of adjacent content words, then frequent words.

    Ties go to the first seen. Padded from ``fallback`` to at least ``len(fallback)``
    topics, so sentences can always link two of them.
    """
    lines = [ln for ln in _instruction_text(messages).splitlines() if not _SKIP_LINE.match(ln)]
    words: dict[str, int] = {}
    pairs: dict[str, int] = {}
    for chunk in re.split(r"[.,;:!?()\[\]{}\"\n]+", "\n".join(lines)):
        prev = None
        for raw in _WORD.findall(chunk):
            w = raw.lower().strip("'-")
            if len(w) < 4 or w in _STOPWORDS:
                prev = None
                continue
            words[w] = words.get(w, 0) + 1
            if prev is not None:
                pairs[f"{prev} {w}"] = pairs.get(f"{prev} {w}", 0) + 1
            prev = w
    # sorted() is stable, so equal counts keep their first-seen order.
    topics = sorted(pairs, key=lambda p: -pairs[p])[: limit // 2 + 1]
    covered = {w for p in topics for w in p.split()}
    topics += [w for w in sorted(words, key=lambda w: -words[w]) if w not in covered]
    topics = topics[:limit]
    for generic in fallback:
        if len(topics) < len(fallback):
            topics.append(generic)
    return topics


# -- word banks ------------------------------------------------------------------------

_ACTIVITIES = (
    "mentoring sessions",
    "regional workshops",
    "a pilot programme",
    "open training modules",
    "community consultations",
    "a shared data platform",
    "field visits",
    "peer-review clinics",
)
_AUDIENCES = (
    "young researchers",
    "small municipalities",
    "rural schools",
    "non-profit organisations",
    "early-stage teams",
    "local libraries",
    "regional universities",
    "social enterprises",
)
_EVIDENCE = (
    "national statistics",
    "a survey of 420 participants",
    "the results of the previous funding round",
    "interviews with regional partners",
    "published evaluations of similar programmes",
    "administrative data from partner institutions",
)
_OUTCOMES = (
    "a measurable increase in participation",
    "stronger cooperation between partners",
    "lower costs per beneficiary",
    "a reusable methodology",
    "wider access to funding",
    "better retention of trained staff",
)
_RISKS = (
    "delays in recruiting participants",
    "changes in partner priorities",
    "lower than expected uptake",
    "data-protection constraints",
    "rising costs of equipment",
)
_ORGS = ("the applicant", "the consortium", "the project team", "the lead organisation", "our partners")
_VERBS = ("strengthen", "expand", "evaluate", "modernise", "scale up", "document", "support")

_SENTENCES = (
    "{Org} will {verb} {t1} through {activity} designed for {audience}.",
    "The work on {t1} builds directly on {evidence}, which points to a clear and unmet need.",
    "Baseline data show that only {pct}% of {audience} currently have reliable access to {t2}.",
    "Over {months} months the project will deliver {activity} and track {outcome}.",
    "Each stage links {t1} to {t2}, so that progress in one area reinforces the other.",
    "The budget of {budget} covers staff, {activity} and an independent evaluation.",
    "Success will be measured by {outcome}, reported every quarter against agreed indicators.",
    "The main risk is {risk}; it is mitigated by early agreements with partners and a reserve plan.",
    "By the end of year {year_n}, at least {count} {audience} will have taken part.",
    "The approach to {t2} is deliberately simple, so that other regions can adopt it without extra cost.",
    "Lessons from {evidence} shaped both the timetable and the choice of {activity}.",
    "{Org} has already run {activity} on {t1}, which lowers the delivery risk considerably.",
    "Results on {t1} and {t2} will be published openly, together with the tools developed.",
    "The expected outcome is {outcome}, sustained after funding ends through partner commitments.",
    "A steering group meets every {weeks} weeks to review progress on {t1} and adjust priorities.",
    "The project responds to the funder's priority on {t2} and complements existing programmes.",
)
_CITED = (
    "This is consistent with recent findings on {t1} [{ref}].",
    "Comparable programmes report similar results for {audience} [{ref}].",
    "Evidence on {t2} supports this design [{ref}].",
    "The figures used here follow the published methodology [{ref}].",
    "Earlier evaluations reached the same conclusion [{ref}].",
)
_STRENGTHS = (
    "clear focus on {t1}",
    "realistic budget",
    "strong partnerships",
    "well-defined indicators",
    "convincing evidence base",
    "experienced team",
    "credible plan for {t2}",
)
_WEAKNESSES = (
    "limited evidence on {t2}",
    "vague dissemination plan",
    "optimistic timeline",
    "risks only partly mitigated",
    "unclear sustainability after funding",
    "few quantitative targets for {t1}",
)


def _fill(template: str, rng: Rng, topics: list[str], ref: str = "") -> str:
    t1 = topics[rng.below(len(topics))]
    rest = [t for t in topics if t != t1] or topics
    org = rng.choice(_ORGS)
    return template.format(
        t1=t1,
        t2=rest[rng.below(len(rest))],
        Org=org[0].upper() + org[1:],
        verb=rng.choice(_VERBS),
        activity=rng.choice(_ACTIVITIES),
        audience=rng.choice(_AUDIENCES),
        evidence=rng.choice(_EVIDENCE),
        outcome=rng.choice(_OUTCOMES),
        risk=rng.choice(_RISKS),
        pct=rng.between(12, 64),
        months=rng.choice((12, 18, 24, 36)),
        budget=f"{rng.between(2, 48) * 250_000:,} roubles".replace(",", " "),
        year_n=rng.between(1, 3),
        count=rng.between(4, 60) * 10,
        weeks=rng.choice((2, 4, 6, 8)),
        ref=ref,
    )


class _Writer:
    """Picks sentences without repeating the previous template."""

    def __init__(self, rng: Rng, topics: list[str]) -> None:
        self.rng = rng
        self.topics = topics
        self._last = -1

    def sentence(self) -> str:
        i = self.rng.below(len(_SENTENCES))
        if i == self._last:
            i = (i + 1) % len(_SENTENCES)
        self._last = i
        return _fill(_SENTENCES[i], self.rng, self.topics)

    def cited(self, ref: str) -> str:
        return _fill(self.rng.choice(_CITED), self.rng, self.topics, ref)


# -- formats ---------------------------------------------------------------------------


def _plain(w: _Writer) -> str:
    return " ".join(w.sentence() for _ in range(w.rng.between(3, 5)))


def _json_answer(w: _Writer, keys: list[str]) -> str:
    obj = {}
    for key in keys:
        label = key.replace("_", " ").strip() or "answer"
        focus = _fill("the focus is {t1}, with {t2} as the second priority.", w.rng, w.topics)
        first = f"{label[0].upper()}{label[1:]}: {focus}"
        more = [w.sentence() for _ in range(w.rng.between(0, 2))]
        obj[key] = " ".join([first, *more])
    return json.dumps(obj, ensure_ascii=False)


def _score(w: _Writer) -> str:
    score = w.rng.between(70, 98) / 10
    strengths = [_fill(s, w.rng, w.topics) for s in w.rng.sample(_STRENGTHS, w.rng.between(2, 3))]
    weaknesses = [_fill(s, w.rng, w.topics) for s in w.rng.sample(_WEAKNESSES, w.rng.between(2, 3))]
    return f"Score: {score:.1f}\nStrengths: {'; '.join(strengths)}\nWeaknesses: {'; '.join(weaknesses)}"


def _section(w: _Writer, title: str, min_chars: int, refs: list[str]) -> str:
    n_par = w.rng.between(2, 4)
    target = math.ceil(min_chars / n_par)
    lead = f"This section on {title.lower()} sets out how {w.topics[0]} will be addressed." if title else ""
    # Spread the references over the paragraphs, in order, so every one is cited.
    per_par: list[list[str]] = [[] for _ in range(n_par)]
    for i, ref in enumerate(refs):
        per_par[i * n_par // len(refs)].append(ref)
    paragraphs = []
    for p in range(n_par):
        sentences = [lead] if p == 0 and lead else []
        pending = list(per_par[p])
        while pending or len(" ".join(sentences)) < target:
            sentences.append(w.sentence())
            if pending:
                sentences.append(w.cited(pending.pop(0)))
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def _bugged_section(w: _Writer, title: str) -> str:
    text = f"{title or 'This section'}: details on {w.topics[0]} will be added in a later revision."
    return text[: BUG_MAX_CHARS - 1]


def bug_key(messages: Messages) -> str:
    """What the product bugs are keyed on: the prompt with its CITE blocks left out."""
    return "\x1e".join(f"{role}\x1f{_CITE.sub('', text)}" for role, text in _normalise(messages))


def is_bugged(messages: Messages, bug_rate: float, bug_seed: int = 0) -> bool:
    """Whether the deterministic product bug selects this prompt (same input, same answer)."""
    if bug_rate <= 0:
        return False
    return bug_rate >= 1 or _unit("bug", bug_seed, bug_key(messages)) < bug_rate


def fires_intermittently(messages: Messages, occurrence: int, rate: float, seed: int = 0) -> bool:
    """Whether the intermittent product bug fires on the ``occurrence``-th call (from 1) of
    this prompt: an independent draw per call with probability ``rate``, fixed by ``seed``,
    ``bug_key`` and ``occurrence``, so a rerun of the same input may or may not meet it."""
    if rate <= 0:
        return False
    return rate >= 1 or _unit("intermittent-bug", seed, bug_key(messages), occurrence) < rate


def generate(
    messages: Messages,
    seed: int = 0,
    *,
    bug_rate: float = 0.0,
    bug_seed: int = 0,
    intermittent: bool = False,
    json_mode: bool = False,
) -> str:
    """The answer to ``messages`` (a list of role/content mappings, or a user prompt string).

    ``intermittent``: the intermittent bug fired on this call (a section gets the bug).
    ``json_mode`` (OpenAI ``response_format: json_object``) wraps a plain answer as
    ``{"answer": ...}`` when the prompt has no ``FORMAT:`` directive of its own.
    """
    rng = Rng("text", seed, prompt_key(messages))
    w = _Writer(rng, topic_words(messages))
    d = find_directive(messages)
    if d is not None and d.kind == "json":
        keys = [k.strip() for k in d.args.get("keys", "answer").split(",") if k.strip()]
        return _json_answer(w, keys or ["answer"])
    if d is not None and d.kind == "score":
        return _score(w)
    if d is not None and d.kind == "section":
        title = d.args.get("title", "")
        if intermittent or is_bugged(messages, bug_rate, bug_seed):
            return _bugged_section(w, title)
        try:
            min_chars = max(0, int(d.args.get("min_chars", DEFAULT_MIN_CHARS)))
        except ValueError:
            min_chars = DEFAULT_MIN_CHARS
        return _section(w, title, min_chars, _citations(_instruction_text(messages)))
    if json_mode:
        return json.dumps({"answer": _plain(w)}, ensure_ascii=False)
    return _plain(w)


def count_tokens(text: str) -> int:
    """A deterministic token estimate: one token per started 4 characters of each word."""
    return sum(math.ceil(len(word) / 4) for word in text.split())


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop", or "length" when max_tokens cut the answer
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def complete(
    messages: Messages,
    seed: int = 0,
    *,
    max_tokens: int | None = None,
    bug_rate: float = 0.0,
    bug_seed: int = 0,
    intermittent: bool = False,
    json_mode: bool = False,
    style: str = "grant",
    replies: Replies | None = None,
) -> Completion:
    """The answer in ``style`` (``generate`` for ``"grant"``; ``"neutral"`` and scripted
    ``replies``: ``sandbox.neutral``) plus what a chat API reports: usage and why the
    answer ended."""

    def grant() -> str:
        return generate(
            messages,
            seed,
            bug_rate=bug_rate,
            bug_seed=bug_seed,
            intermittent=intermittent,
            json_mode=json_mode,
        )

    if style == "grant" and replies is None:
        text = grant()
    else:
        from .neutral import answer  # it imports this module: here, not at the top

        text = answer(messages, seed, style=style, replies=replies, json_mode=json_mode, grant=grant)
    finish = "stop"
    if max_tokens is not None and count_tokens(text) > max_tokens:
        kept, used = [], 0
        for word in text.split(" "):
            used += count_tokens(word)
            if used > max_tokens:
                break
            kept.append(word)
        text, finish = " ".join(kept), "length"
    prompt = "\n".join(content for _, content in _normalise(messages))
    return Completion(text, finish, count_tokens(prompt), count_tokens(text))


def embed(text: str, dim: int = 1024) -> list[float]:
    """A unit vector by feature hashing of lower-cased words and adjacent word pairs."""
    words = [w.lower() for w in _WORD.findall(text)]
    features = [(w, 1.0) for w in words] + [(f"{a} {b}", 0.5) for a, b in itertools.pairwise(words)]
    if not features:
        features = [(f"\x00{text}", 1.0)]  # empty or symbols only: still a unit vector
    vec = [0.0] * dim
    for feature, weight in features:
        h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
        vec[h % dim] += weight if (h >> 63) & 1 else -weight
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0:  # colliding features cancelled out
        vec[0], norm = 1.0, 1.0
    return [round(v / norm, 6) for v in vec]
