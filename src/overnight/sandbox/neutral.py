"""The sandbox LLM's neutral style and scripted replies: answers that follow the prompt.

The grant style (``textgen``) writes grant-application prose whatever it is asked; a
product whose checks say "the answer cites a FAQ id" cannot pass against it. The neutral
style answers from the prompt itself, in a small documented grammar, deterministically
(the same prompt always gets the same answer; no model, no network):

**The context's ids.** Every id in the system and user messages, in order of first
appearance, each once: a bracketed token with at least one digit (``[faq-12]``,
``[doc_3]``, ``[1]``: letters, digits and ``- _ . : /``), and the value after ``id:`` or
``id =`` (``id: faq-12``, ``"id": "faq-12"``, any case).

**The question.** The last user message's last line that ends with ``?``; else its first
line that is not context (a line that starts with an id, or ``FORMAT:``); at most 200
characters.

**The answer.** One sentence built from the question, citing every id::

    Answer to "How do I reset my password?": see [faq-12], [faq-3].
    Answer to "Write a paragraph about rivers."         (no id in the context)

**Instructions it follows** (in the system and user messages; the last one wins):

- ``answer in N words`` (also ``in at most``, ``no more than``, ``under``, ``up to``,
  ``within``, ``maximum`` N words, ``N words or fewer``): at most N words — the cited ids
  first (``[faq-12]``), then the question's words.
- ``reply with JSON with keys a, b and c`` (``respond``/``answer``/``return`` … JSON …
  ``keys``), or the directive line ``FORMAT: json keys=a,b``: one JSON object with exactly
  those keys, in that order. A key named ``id``/``ids``/``source(s)``/``citation(s)``/
  ``reference(s)``/``ref(s)`` gets the list of ids, ``question`` the question, any other
  the answer sentence. JSON without keys (``reply in JSON``, or the OpenAI request's
  ``response_format`` of JSON): ``{"answer": …}``.

**Scripted replies** (``Replies``) come first when given: rules tried in order, each a
regular expression searched (case-insensitively) in the last user message; the first rule
that matches answers with one of its replies, chosen by the prompt (the same prompt always
gets the same reply, different prompts are spread over the list). No rule matches: the
style answers (neutral or grant).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .textgen import Messages, _normalise, find_directive, prompt_key

__all__ = ["STYLES", "Replies", "ReplyRule", "answer", "neutral_answer"]

STYLES = ("neutral", "grant")

_BRACKET_ID = re.compile(r"\[([A-Za-z0-9][A-Za-z0-9_.:/-]{0,63})\]")
_FIELD_ID = re.compile(r"""(?i)["']?\bid\b["']?\s*[:=]\s*["']?([A-Za-z0-9][A-Za-z0-9_.:/-]{0,63})""")
_CONTEXT_LINE = re.compile(r"^\s*(?:\[[^\]\s]+\]|[\"']?id[\"']?\s*[:=]|FORMAT:)", re.IGNORECASE)
_NUMBER = r"(\d{1,4})"
_WORD_LIMITS = (
    re.compile(
        r"(?i)\b(?:in|at most|no more than|fewer than|less than|under|up to|within|maximum(?: of)?|max\.?)\s+"
        + _NUMBER
        + r"\s+words?\b"
    ),
    re.compile(r"(?i)\b" + _NUMBER + r"\s+words?\s+or\s+(?:fewer|less)\b"),
)
_JSON_KEYS = re.compile(
    r"(?i)\bjson\b[^\n]{0,80}?\bkeys?\b\s*:?\s*"
    r"(?P<keys>[\"'`]?[A-Za-z_][\w-]*[\"'`]?(?:\s*(?:,|\band\b|,\s*and\b)\s*[\"'`]?[A-Za-z_][\w-]*[\"'`]?)*)"
)
_JSON_ASKED = re.compile(r"(?i)\b(?:reply|respond|answer|return|output|write)\b[^\n]{0,40}\bjson\b")
_ID_KEYS = re.compile(r"(?i)^(?:ids?|sources?|citations?|references?|refs?|source_ids?)$")
_QUESTION_MAX = 200


def _instruction_lines(messages: Messages) -> str:
    return "\n".join(text for role, text in _normalise(messages) if role in ("system", "user"))


def context_ids(messages: Messages) -> list[str]:
    """The ids in the system and user messages, in order of first appearance, each once."""
    text = _instruction_lines(messages)
    found: list[tuple[int, str]] = [
        (m.start(), m.group(1)) for m in _BRACKET_ID.finditer(text) if any(ch.isdigit() for ch in m.group(1))
    ]
    found += [(m.start(), m.group(1)) for m in _FIELD_ID.finditer(text)]
    out: list[str] = []
    for _, ident in sorted(found):
        if ident not in out:
            out.append(ident)
    return out


def question_of(messages: Messages) -> str:
    """The question the last user message asks (see the module docstring)."""
    users = [text for role, text in _normalise(messages) if role == "user"]
    lines = [ln.strip() for ln in (users[-1] if users else "").splitlines() if ln.strip()]
    asked = [ln for ln in lines if ln.endswith("?")]
    plain = [ln for ln in lines if not _CONTEXT_LINE.match(ln)]
    text = asked[-1] if asked else (plain[0] if plain else "")
    text = " ".join(text.split())
    return text if len(text) <= _QUESTION_MAX else text[: _QUESTION_MAX - 1].rstrip() + "…"


def _word_limit(text: str) -> int | None:
    last: tuple[int, int] | None = None
    for pattern in _WORD_LIMITS:
        for m in pattern.finditer(text):
            if last is None or m.start() > last[0]:
                last = (m.start(), int(m.group(1)))
    return last[1] if last and last[1] > 0 else None


def _json_keys(messages: Messages, text: str, json_mode: bool) -> list[str] | None:
    """The keys a JSON answer must have, or None when no JSON was asked for."""
    directive = find_directive(messages)
    if directive is not None and directive.kind == "json":
        keys = [k.strip() for k in directive.args.get("keys", "answer").split(",") if k.strip()]
        return keys or ["answer"]
    matches = list(_JSON_KEYS.finditer(text))
    if matches:
        raw = re.split(r"\s*(?:,\s*and\b|,|\band\b)\s*", matches[-1]["keys"])
        keys = [k.strip().strip("\"'`") for k in raw if k.strip().strip("\"'`")]
        return list(dict.fromkeys(keys)) or ["answer"]
    if json_mode or _JSON_ASKED.search(text):
        return ["answer"]
    return None


def _cut(words: list[str], ids: list[str], question: str, limit: int | None) -> str:
    if limit is None or len(words) <= limit:
        return " ".join(words)
    cites = [f"[{i}]" for i in ids][:limit]
    return " ".join(cites + question.split()[: limit - len(cites)])


def neutral_answer(messages: Messages, *, json_mode: bool = False) -> str:
    """The neutral style's answer to ``messages`` (see the module docstring)."""
    text = _instruction_lines(messages)
    ids = context_ids(messages)
    question = question_of(messages)
    cites = ", ".join(f"[{i}]" for i in ids)
    sentence = f'Answer to "{question}": see {cites}.' if ids else f'Answer to "{question}"'

    limit = _word_limit(text)
    said = _cut(sentence.split(), ids, question, limit)
    keys = _json_keys(messages, text, json_mode)
    if keys is None:
        return said
    obj: dict[str, Any] = {}
    for key in keys:
        obj[key] = list(ids) if _ID_KEYS.match(key) else (question if key.lower() == "question" else said)
    return json.dumps(obj, ensure_ascii=False)


# -- scripted replies ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyRule:
    """One scripted rule: a regular expression and the replies it answers with."""

    pattern: str
    replies: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError("pattern must be a non-empty string (a regular expression)")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from None
        if not self.replies or not all(isinstance(r, str) for r in self.replies):
            raise ValueError("replies must be a non-empty list of strings")


class Replies:
    """Scripted replies: ``rules`` tried in order (see the module docstring); ``then`` is
    the style that answers when none matches."""

    def __init__(self, rules: Iterable[ReplyRule | Mapping[str, Any]], then: str = "neutral") -> None:
        if then not in STYLES:
            raise ValueError(f"unknown sandbox style {then!r} (known: {', '.join(STYLES)})")
        self.rules = tuple(r if isinstance(r, ReplyRule) else _rule(r) for r in rules)
        self.then = then
        self._compiled = [(re.compile(r.pattern, re.IGNORECASE), r.replies) for r in self.rules]

    @property
    def name(self) -> str:
        """A name fixed by the rules and the fallback style: the same script, the same name."""
        data = json.dumps([[r.pattern, list(r.replies)] for r in self.rules] + [self.then])
        return "replies-" + hashlib.sha256(data.encode()).hexdigest()[:12]

    def reply(self, messages: Messages, seed: int = 0) -> str | None:
        """The scripted reply to ``messages``, or None when no rule matches."""
        users = [text for role, text in _normalise(messages) if role == "user"]
        last = users[-1] if users else ""
        for pattern, replies in self._compiled:
            if pattern.search(last):
                if len(replies) == 1:
                    return replies[0]
                digest = hashlib.blake2b(f"{seed}\x1f{prompt_key(messages)}".encode(), digest_size=8).digest()
                return replies[int.from_bytes(digest, "little") % len(replies)]
        return None


def _rule(data: Mapping[str, Any]) -> ReplyRule:
    replies = data.get("replies", [data["reply"]] if "reply" in data else None)
    if isinstance(replies, str) or not isinstance(replies, Sequence):
        raise ValueError("replies must be a non-empty list of strings")
    return ReplyRule(str(data.get("pattern", "")), tuple(replies))


def answer(
    messages: Messages,
    seed: int,
    *,
    style: str,
    replies: Replies | None,
    json_mode: bool,
    grant: Callable[[], str],
) -> str:
    """The answer in ``style`` (``grant`` calls the grant generator), scripted first."""
    if replies is not None:
        scripted = replies.reply(messages, seed)
        if scripted is not None:
            return scripted
        style = replies.then
    if style == "grant":
        return grant()
    return neutral_answer(messages, json_mode=json_mode)
