"""The sandbox LLM's styles: neutral (answers that follow the prompt) by default, grant
prose as the reference pipeline's choice, scripted replies from a file first; chosen per
llm component (``sandbox_style``, ``sandbox_replies``) on the one shared sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai import OpenAI

from overnight.components import ComponentSpec, OptionError
from overnight.components.llm import LLMComponent
from overnight.components.replies import load_replies
from overnight.sandbox import Replies, Sandbox, shared_sandbox
from overnight.sandbox.neutral import context_ids, neutral_answer, question_of

from .conftest import make_project, run_cli

FAQ = (
    "Answer from the FAQ entries below and cite their ids.\n"
    "[faq-12] To reset your password, open Settings, then Security.\n"
    "[faq-3] Passwords expire after 90 days.\n"
)


def _ask(system: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


# -- the neutral grammar ------------------------------------------------------------------------


def test_neutral_answer_cites_the_context_ids_and_quotes_the_question() -> None:
    messages = _ask(FAQ, "Hello.\nHow do I reset my password?")
    assert context_ids(messages) == ["faq-12", "faq-3"]
    assert question_of(messages) == "How do I reset my password?"
    assert neutral_answer(messages) == 'Answer to "How do I reset my password?": see [faq-12], [faq-3].'
    assert neutral_answer(messages) == neutral_answer(messages)  # deterministic
    # ids in "id: ..." form too, each once; words in brackets without a digit are no id.
    other = [{"role": "user", "content": 'docs: id: kb-7, {"id": "kb-9"} [note] [kb-7]\nWhat about refunds?'}]
    assert neutral_answer(other) == 'Answer to "What about refunds?": see [kb-7], [kb-9].'
    assert neutral_answer("Write a paragraph about rivers.") == 'Answer to "Write a paragraph about rivers."'


def test_neutral_answer_follows_word_limits_and_json_requests() -> None:
    assert neutral_answer(_ask(FAQ + "Answer in 4 words.", "How do I reset my password?")) == (
        "[faq-12] [faq-3] How do"
    )
    assert neutral_answer(_ask(FAQ + "Use no more than 1 word.", "Password?")) == "[faq-12]"
    keyed = json.loads(
        neutral_answer(_ask(FAQ + 'Reply with JSON with keys "answer", sources and question.', "Reset?"))
    )
    assert keyed == {
        "answer": 'Answer to "Reset?": see [faq-12], [faq-3].',
        "sources": ["faq-12", "faq-3"],
        "question": "Reset?",
    }
    directive = json.loads(neutral_answer(_ask(FAQ + "FORMAT: json keys=ids,text", "Reset?")))
    assert list(directive) == ["ids", "text"] and directive["ids"] == ["faq-12", "faq-3"]
    assert json.loads(neutral_answer("Summarise.", json_mode=True)) == {"answer": 'Answer to "Summarise."'}
    # The grant style's directives mean nothing here: an answer, not a score.
    assert neutral_answer(_ask("FORMAT: score", "Assess it?")) == 'Answer to "Assess it?"'


def test_scripted_replies_first_matching_rule_then_the_style() -> None:
    script = Replies(
        [
            {
                "pattern": r"reset .*password",
                "replies": ["Open Settings [faq-12].", "Use the link [faq-12]."],
            },
            {"pattern": "password", "reply": "Passwords expire after 90 days [faq-3]."},
        ]
    )
    first = script.reply(_ask(FAQ, "How do I RESET my password?"))
    assert first in ("Open Settings [faq-12].", "Use the link [faq-12].")
    assert script.reply(_ask(FAQ, "How do I RESET my password?")) == first  # same prompt, same reply
    spread = {script.reply(_ask(FAQ, f"Reset my password, take {i}?")) for i in range(20)}
    assert spread == {"Open Settings [faq-12].", "Use the link [faq-12]."}
    assert script.reply(_ask(FAQ, "Is my password old?")) == "Passwords expire after 90 days [faq-3]."
    # Only the last user message is searched: the FAQ context's "password" matches nothing.
    assert script.reply(_ask(FAQ, "Where is my invoice?")) is None
    assert script.name == Replies(script.rules).name != Replies(script.rules, then="grant").name


# -- through the SDK, per component --------------------------------------------------------------


def _llm(tmp_path: Path, **options: object) -> LLMComponent:
    spec = ComponentSpec(
        "llm",
        {"provider": "openai", "sandbox": True, **options},
        tmp_path,
        base_dir=tmp_path,
        sandbox=shared_sandbox,
    )
    return LLMComponent(spec)


async def test_components_of_one_sandbox_each_get_their_style(tmp_path: Path) -> None:
    (tmp_path / "replies.toml").write_text(
        '[[reply]]\npattern = "invoice"\nreply = "Invoices are under Billing [faq-40]."\n'
    )
    neutral = _llm(tmp_path)
    grant = _llm(tmp_path, sandbox_style="grant")
    scripted = _llm(tmp_path, sandbox_replies="replies.toml")
    for comp in (neutral, grant, scripted):
        await comp.connect()
    try:
        prompt = [
            {"role": "system", "content": FAQ},
            {"role": "user", "content": "How do I reset my password?"},
        ]
        said = await neutral.handle.chat(prompt)
        assert said.text == 'Answer to "How do I reset my password?": see [faq-12], [faq-3].'
        assert said.usage["completion_tokens"] > 0
        prose = (await grant.handle.chat(prompt)).text
        assert "[faq-12]" not in prose and len(prose) > 150  # grant prose, whatever it is asked
        assert (
            await scripted.handle.chat("Where is my invoice?")
        ).text == "Invoices are under Billing [faq-40]."
        assert (await scripted.handle.chat(prompt)).text == said.text  # no rule matched: neutral
        assert "/style/grant/" in grant.base_url and "/style/neutral/" in neutral.base_url
        assert (await grant.probe()).healthy  # the API under a style prefix is the whole API
    finally:
        for comp in (neutral, grant, scripted):
            await comp.close()


def test_a_sandbox_and_its_default_style() -> None:
    with Sandbox(control=False, style="grant") as sb:
        client = OpenAI(base_url=sb.openai_url, api_key="sandbox-key", max_retries=0)
        text = (
            client.chat.completions.create(
                model="gpt-4o-mini", messages=_ask(FAQ, "How do I reset my password?")
            )
            .choices[0]
            .message.content
        )
        assert text and "[faq-12]" not in text
        styled = OpenAI(base_url=sb.chat_base_url("openai", "neutral"), api_key="sandbox-key", max_retries=0)
        answer = styled.chat.completions.create(model="gpt-4o-mini", messages=_ask(FAQ, "Reset?"))
        assert answer.choices[0].message.content == 'Answer to "Reset?": see [faq-12], [faq-3].'
        unknown = OpenAI(base_url=f"{sb.openai.url}/style/poetry/v1", api_key="sandbox-key", max_retries=0)
        with pytest.raises(Exception, match="no sandbox style 'poetry'"):
            unknown.chat.completions.create(model="gpt-4o-mini", messages=_ask(FAQ, "Reset?"))


# -- the options: one line, exit 2 ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "files", "expected"),
    [
        (
            {"sandbox_style": "poetry"},
            {},
            "components.llm.sandbox_style: input should be 'neutral' or 'grant'",
        ),
        (
            {"sandbox": False, "sandbox_style": "grant"},
            {},
            "components.llm.sandbox_style: needs sandbox = true",
        ),
        ({"sandbox_replies": "none.toml"}, {}, "none.toml: no such file"),
        (
            {"sandbox_replies": "r.toml"},
            {"r.toml": '[[reply]]\npattern = "("\nreply = "x"\n'},
            "is not a regular expression",
        ),
        (
            {"sandbox_replies": "r.toml"},
            {"r.toml": '[[reply]]\npattern = "x"\n'},
            "give replies (a list) or reply (one)",
        ),
        (
            {"sandbox_replies": "r.toml"},
            {"r.toml": '[[reply]]\npattern = "x"\nreply = "y"\nwhen = 1\n'},
            "unknown key 'when'",
        ),
        (
            {"sandbox_replies": "r.jsonl"},
            {"r.jsonl": '{"pattern": "x", "reply": "y"}\nnot json\n'},
            "line 2 is not JSON",
        ),
        ({"sandbox_replies": "r.txt"}, {"r.txt": "x"}, "expected a .toml or .jsonl file"),
    ],
)
def test_bad_style_options_are_one_line(
    tmp_path: Path, options: dict[str, object], files: dict[str, str], expected: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(OptionError) as info:
        _llm(tmp_path, **options)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_replies_file_in_toml_or_jsonl(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text(
        '{"pattern": "a", "replies": ["1", "2"]}\n\n{"pattern": "b", "reply": "3"}\n'
    )
    assert load_replies(tmp_path / "r.jsonl") == [
        {"pattern": "a", "replies": ["1", "2"]},
        {"pattern": "b", "replies": ["3"]},
    ]


def test_cli_run_and_sandbox_say_a_bad_replies_file_in_one_line(tmp_path: Path) -> None:
    proj = make_project(
        tmp_path / "p",
        "async def cycle(ctx):\n    pass\n",
        '[components.llm]\ntype = "llm"\nprovider = "openai"\nsandbox = true\nsandbox_replies = "missing.toml"\n',
    )
    res = run_cli(["run", "--cycles", "1"], cwd=proj)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "components.llm.sandbox_replies:" in lines[0] and "missing.toml: no such file" in lines[0]
    res = run_cli(["sandbox", "--base-port", "0", "--style", "haiku"], cwd=tmp_path)
    assert res.returncode == 2 and "--style: 'haiku' is not a sandbox style (neutral, grant)" in res.stderr
    res = run_cli(["sandbox", "--base-port", "0", "--replies", "missing.jsonl"], cwd=tmp_path)
    assert res.returncode == 2 and "--replies: missing.jsonl: no such file" in res.stderr
