"""Checks removed from the code between two nights: a line-level diff of check lines.

What is compared: the scenario's own Python files at the earlier night's git commit and
at the later night's. They are the entry files (the scenario module and its setup
module) and, transitively, the modules they import that are files of the same git
repository, found with ``ast`` in each commit's own tree (``import a.b``, ``from .x
import y``, ``from pkg import mod``, against the import roots given and the entry files'
own folders; at most ``MAX_FILES`` files a commit). The union of both commits' files is
compared: a file gone at the later commit has lost every check it held.

What is reported, from a ``difflib`` diff of each file's two texts, and only for check
lines:

- ``removed``: a check line of the earlier commit that is gone (its line number there);
- ``commented_out``: a check line that is now a comment (``# assert …``; its line number
  at the later commit);
- ``changed``: a check line replaced, in the same diff hunk, by another check line of its
  kind (``if len(text) < 15000:`` → ``if len(text) < 500:``; its line at the later commit);
- ``skip_added`` / ``xfail_added``: a line added that calls ``pytest.skip(``,
  ``pytest.importorskip(`` or ``pytest.xfail(``, or names ``pytest.mark.skip``,
  ``pytest.mark.skipif`` or ``pytest.mark.xfail`` (its line at the later commit).

A check line is, read from the file's syntax tree: an ``assert`` (the lines of its
condition); ``raise AssertionError``; a call ``RECEIVER.fail(…)`` whatever the receiver
is named (``ctx.fail``, ``pytest.fail``, ``self.fail``; the scenario's context may have
any name); and the condition of an ``if``/``elif`` whose own body holds an ``assert``, a
``raise`` or such a ``.fail(`` call (the comparison that feeds the check). A condition
over several lines is one check: however many of its lines changed, it is one finding. A
file that does not parse is read line by line instead (``if``: when the next code line
is a check).

What it does not do, said plainly: it reads lines, not meaning, and never says why a
line changed. A check line that reappears unchanged (whatever its indentation) elsewhere
in the compared files is taken as moved, not removed. A check made unreachable without
touching its line (an early ``return`` above it, an ``if False:`` around it), a failure
collected into a list that a helper reports later, a threshold moved into a variable,
and uncommitted changes (a ``-dirty`` commit) are not seen.

A leaf: the standard library and ``redaction`` only. Git runs as a subprocess (never a
shell), every call within what is left of one time budget; whatever goes wrong is a
``not_available`` result with its reason, never an exception.
"""

from __future__ import annotations

import ast
import difflib
import os
import posixpath
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..redaction import redact

# Files compared per commit, at most: a scenario that imports a whole code base is cut
# here, and the result says so.
MAX_FILES = 200
# A Python file larger than this is not read (generated code, vendored data).
MAX_FILE_BYTES = 1_000_000
# A finding's text is cut to this many characters.
TEXT_MAX = 200
# Every git call of one comparison, together.
GIT_TIMEOUT_S = 20.0

CHANGES = ("removed", "commented_out", "changed", "skip_added", "xfail_added")
_VERBS = {
    "removed": "removed",
    "commented_out": "commented out",
    "skip_added": "added",
    "xfail_added": "added",
}

_FAIL_CALL = re.compile(r"\b[A-Za-z_]\w*\s*\.\s*fail\s*\(")
_SKIP = re.compile(r"\bpytest\s*\.\s*(?:skip|importorskip)\s*\(|\bpytest\s*\.\s*mark\s*\.\s*skip(?:if)?\b")
_XFAIL = re.compile(r"\bpytest\s*\.\s*xfail\s*\(|\bpytest\s*\.\s*mark\s*\.\s*xfail\b")
_COMMENT = re.compile(r"^(?:#\s?)+")
_HEX = re.compile(r"^[0-9a-fA-F]{4,64}$")


class _Unavailable(Exception):
    """The comparison cannot be made; the message is the one-line reason."""


def no_commit_reason(name: str) -> str:
    """Why a night without a recorded commit cannot be compared."""
    return f"{name} recorded no git commit (not a git work tree)"


def unavailable(reason: str, before: str | None = None, after: str | None = None) -> dict[str, Any]:
    """A result that says the comparison was not made, and why."""
    return {
        "status": "not_available",
        "reason": redact(reason),
        "before_commit": before,
        "after_commit": after,
        "files": [],
        "findings": [],
        "note": None,
    }


def compare_checks(
    repo: Path,
    before: str | None,
    after: str | None,
    entry_files: list[str],
    *,
    import_roots: Iterable[str] = (),
    names: tuple[str, str] = ("the earlier night", "the later night"),
    timeout: float = GIT_TIMEOUT_S,
) -> dict[str, Any]:
    """The check lines removed, commented out, changed or skipped between two commits.

    ``repo``: the git repository's top folder. ``before``, ``after``: commits as nights
    record them (``<hash>`` or ``<hash>-dirty``), None when a night recorded none.
    ``entry_files``: the scenario's and setup's files, relative to ``repo`` (``/``
    separated). ``import_roots``: folders, relative to ``repo``, where absolute imports
    are looked for (what the night had on ``sys.path``; ``""`` is the top folder); the
    entry files' own folders are always among them. ``names``: how reasons name the two
    nights. ``timeout``: for all the git calls together.

    Returns ``{"status": "compared" | "not_available", "reason", "before_commit",
    "after_commit", "files", "findings", "note"}``; a finding is ``{"file", "line",
    "commit", "change", "text", "before_text"}`` (``line`` counts in ``commit``; the texts
    stripped, redacted and cut to ``TEXT_MAX``; ``before_text`` is the check line as it
    was, for ``changed`` and ``commented_out``, else None).
    """
    if missing := _missing_commit(before, after, names):
        return missing
    try:
        git = _Git(repo, timeout)
    except _Unavailable as exc:
        return unavailable(str(exc), before, after)
    return _compare(git, before, after, entry_files, import_roots, names)


def _missing_commit(before: str | None, after: str | None, names: tuple[str, str]) -> dict[str, Any] | None:
    """The result for a night that recorded no commit (the later night's first)."""
    for commit, name in ((after, names[1]), (before, names[0])):
        if not commit:
            return unavailable(no_commit_reason(name), before, after)
    return None


def _compare(
    git: _Git,
    before: str | None,
    after: str | None,
    entry_files: list[str],
    import_roots: Iterable[str],
    names: tuple[str, str],
) -> dict[str, Any]:
    if missing := _missing_commit(before, after, names):
        return missing
    assert before is not None and after is not None
    hashes = (before.removesuffix("-dirty"), after.removesuffix("-dirty"))
    for commit, h in zip((before, after), hashes, strict=True):
        if not _HEX.match(h):
            return unavailable(f"{commit!r} is not a git commit", before, after)
    try:
        git.check_repository()
        for h, name in zip(hashes, names, strict=True):
            git.check_commit(h, name)
        first = _project_files(git, hashes[0], entry_files, import_roots)
        second = (
            first if hashes[1] == hashes[0] else _project_files(git, hashes[1], entry_files, import_roots)
        )
    except _Unavailable as exc:
        return unavailable(str(exc), before, after)
    files = sorted(set(first.texts) | set(second.texts))
    if not files:
        where = ", ".join(entry_files) or "no file"
        return unavailable(f"the scenario's files ({where}) are in neither commit", before, after)
    findings = _findings(files, first.texts, second.texts, hashes)
    notes = [
        f"{name}'s commit {commit[:12]}-dirty had uncommitted changes; they are not compared"
        for commit, name in zip((before, after), names, strict=True)
        if commit.endswith("-dirty")
    ]
    notes.extend(f"at {hashes[0][:12]}: {n}" for n in first.notes)
    if second is not first:
        notes.extend(f"at {hashes[1][:12]}: {n}" for n in second.notes)
    return {
        "status": "compared",
        "reason": None,
        "before_commit": before,
        "after_commit": after,
        "files": files,
        "findings": findings,
        "note": redact("; ".join(notes)) if notes else None,
    }


def compare_project(
    folder: Path,
    before: str | None,
    after: str | None,
    entry_paths: Iterable[Path],
    *,
    names: tuple[str, str] = ("the earlier night", "the later night"),
    timeout: float = GIT_TIMEOUT_S,
) -> dict[str, Any]:
    """``compare_checks`` for a project as the engine knows it: ``folder`` is where its
    config is (and what it imports from), ``entry_paths`` the absolute paths of its
    scenario and setup modules. The repository is the one ``folder`` is in; entry files
    outside it are not compared."""
    if missing := _missing_commit(before, after, names):
        return missing
    try:
        git = _Git(folder, timeout)
        top = git.toplevel()
    except _Unavailable as exc:
        return unavailable(str(exc), before, after)
    entries = [rel for p in entry_paths if (rel := _inside(top, p)) is not None]
    if not entries:
        return unavailable(f"the scenario's files are not in the git repository at {top}", before, after)
    root = _inside(top, folder)
    git.repo = top
    return _compare(git, before, after, sorted(set(entries)), [root] if root is not None else [], names)


def describe(finding: dict[str, Any]) -> str:
    """One line: ``scenario.py:42 (abc1234): ctx.fail("too short") removed``."""
    where = f"{finding.get('file')}:{finding.get('line')} ({str(finding.get('commit') or '?')[:7]})"
    change = finding.get("change")
    text = finding.get("text") or ""
    if change == "changed":
        return f"{where}: {finding.get('before_text')} changed to {text}"
    if change == "commented_out":
        return f"{where}: {finding.get('before_text') or text} commented out"
    return f"{where}: {text} {_VERBS.get(str(change), str(change))}"


def summary(result: dict[str, Any]) -> str:
    """The one-line message of a comparison: what it found, or why it was not made."""
    if result.get("status") != "compared":
        return f"code checks not compared: {result.get('reason')}"
    span = f"{str(result.get('before_commit'))[:7]}..{str(result.get('after_commit'))[:7]}"
    nfiles = len(result.get("files") or ())
    files = f"{nfiles} file{'s' if nfiles != 1 else ''}"
    findings = result.get("findings") or []
    if not findings:
        return f"code checks: no check removed, commented out, changed or skipped ({span}, {files})"
    counts = Counter(f.get("change") for f in findings)
    parts = ", ".join(f"{counts[c]} {c.replace('_', ' ')}" for c in CHANGES if counts[c])
    return f"code checks: {parts} ({span}, {files})"


# -- git ------------------------------------------------------------------------------


class _Git:
    """Git in one repository, every call within what is left of one time budget."""

    def __init__(self, repo: Path, timeout: float) -> None:
        self.repo = repo
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        if shutil.which("git") is None:
            raise _Unavailable("git is not installed")
        self.env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}

    def run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Unavailable(f"git took longer than {self.timeout:g} s")
        cmd = ["git", "-c", "core.quotepath=off", "-C", str(self.repo), *args]
        try:
            return subprocess.run(
                cmd, input=stdin, capture_output=True, timeout=left, env=self.env, check=False
            )
        except subprocess.TimeoutExpired:
            raise _Unavailable(f"git took longer than {self.timeout:g} s") from None
        except OSError as exc:
            raise _Unavailable(f"git could not be run: {exc.strerror or exc}") from None

    def toplevel(self) -> Path:
        if not self.repo.is_dir():
            raise _Unavailable(f"no git repository at {self.repo} (no such folder)")
        proc = self.run("rev-parse", "--show-toplevel")
        top = proc.stdout.decode(errors="replace").strip()
        if proc.returncode != 0 or not top:
            raise _Unavailable(f"no git repository at {self.repo}")
        return Path(top)

    def check_repository(self) -> None:
        if not self.repo.is_dir():
            raise _Unavailable(f"no git repository at {self.repo} (no such folder)")
        proc = self.run("rev-parse", "--git-dir")
        if proc.returncode != 0:
            raise _Unavailable(f"no git repository at {self.repo}")

    def check_commit(self, commit: str, name: str) -> None:
        if self.run("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
            raise _Unavailable(f"{name}'s commit {commit[:12]} is not in the git repository at {self.repo}")

    def python_files(self, commit: str) -> dict[str, int]:
        """Every ``.py`` blob of the commit's tree: path -> size in bytes."""
        proc = self.run("ls-tree", "-r", "-l", "-z", "--full-tree", commit)
        if proc.returncode != 0:
            raise _Unavailable(f"git ls-tree {commit[:12]} failed: {_first_line(proc.stderr)}")
        out: dict[str, int] = {}
        for entry in proc.stdout.split(b"\0"):
            meta, sep, raw = entry.partition(b"\t")
            fields = meta.split()
            if not sep or len(fields) != 4 or fields[1] != b"blob" or not raw.endswith(b".py"):
                continue
            try:
                path = raw.decode()
            except UnicodeDecodeError:  # a name git holds as bytes: it cannot be imported anyway
                continue
            out[path] = int(fields[3]) if fields[3].isdigit() else 0
        return out

    def read(self, commit: str, paths: list[str]) -> dict[str, bytes | None]:
        """The files' contents at ``commit`` (None for one git does not have as a blob),
        in one ``git cat-file --batch``."""
        asked = [p for p in paths if "\n" not in p]
        proc = self.run("cat-file", "--batch", stdin="".join(f"{commit}:{p}\n" for p in asked).encode())
        if proc.returncode != 0:
            raise _Unavailable(f"git cat-file failed: {_first_line(proc.stderr)}")
        out: dict[str, bytes | None] = dict.fromkeys(paths)
        data, pos = proc.stdout, 0
        for path in asked:
            end = data.find(b"\n", pos)
            if end < 0:
                break
            header = data[pos:end].split()
            pos = end + 1
            if len(header) != 3 or not header[2].isdigit():  # "<name> missing", "ambiguous"
                continue
            size = int(header[2])
            if header[1] == b"blob":
                out[path] = data[pos : pos + size]
            pos += size + 1
        return out


def _first_line(raw: bytes) -> str:
    lines = raw.decode(errors="replace").strip().splitlines()
    return lines[0] if lines else "no message"


def _inside(top: Path, path: Path) -> str | None:
    """``path`` relative to ``top`` (``/`` separated, ``""`` for ``top`` itself), or None
    when it is outside."""
    try:
        rel = path.resolve().relative_to(top.resolve())
    except (ValueError, OSError):
        return None
    return "" if rel == Path() else rel.as_posix()


# -- which files ------------------------------------------------------------------------


@dataclass
class _FileSet:
    texts: dict[str, str] = field(default_factory=dict)  # path -> text at the commit
    notes: list[str] = field(default_factory=list)


def _project_files(git: _Git, commit: str, entries: list[str], roots: Iterable[str]) -> _FileSet:
    """The entry files present at ``commit`` and the repository's files they import,
    transitively, at most ``MAX_FILES``."""
    tree = git.python_files(commit)
    dirs = {posixpath.dirname(p) for p in tree}
    for d in list(dirs):
        while d:
            d = posixpath.dirname(d)
            dirs.add(d)
    search = list(dict.fromkeys([*roots, *(posixpath.dirname(e) for e in entries)]))
    result = _FileSet()
    queued = set(entries)
    frontier = [e for e in entries if e in tree]
    too_large: list[str] = []
    while frontier and len(result.texts) < MAX_FILES:
        batch, frontier = frontier[: MAX_FILES - len(result.texts)], frontier[MAX_FILES - len(result.texts) :]
        small = [p for p in batch if tree[p] <= MAX_FILE_BYTES]
        too_large.extend(p for p in batch if tree[p] > MAX_FILE_BYTES)
        blobs = git.read(commit, small)
        for path in small:
            blob = blobs.get(path)
            if blob is None:
                continue
            text = blob.decode("utf-8", errors="replace")
            result.texts[path] = text
            for found in _imported_files(path, text, tree, dirs, search):
                if found not in queued:
                    queued.add(found)
                    frontier.append(found)
    if frontier:
        result.notes.append(f"only the first {MAX_FILES} files the scenario imports are compared")
    if too_large:
        result.notes.append(
            f"not compared (over {MAX_FILE_BYTES // 1_000_000} MB): {', '.join(sorted(too_large)[:5])}"
        )
    return result


def _imported_files(
    path: str, text: str, tree: dict[str, int], dirs: set[str], roots: list[str]
) -> list[str]:
    """The repository files ``text`` (the file at ``path``) imports."""
    try:
        module = ast.parse(text, path)
    except (SyntaxError, ValueError):
        return []
    found: list[str] = []
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found += _absolute(alias.name.split("."), tree, dirs, roots)
        elif isinstance(node, ast.ImportFrom):
            dotted = node.module.split(".") if node.module else []
            tails = [[a.name] if a.name != "*" else [] for a in node.names]
            if node.level:
                base = posixpath.dirname(path)
                for _ in range(node.level - 1):
                    if not base:
                        break  # above the repository
                    base = posixpath.dirname(base)
                else:
                    for tail in tails:
                        found += _resolve(base, [*dotted, *tail], tree, dirs)
            else:
                for tail in tails:
                    found += _absolute([*dotted, *tail], tree, dirs, roots)
    return found


def _absolute(dotted: list[str], tree: dict[str, int], dirs: set[str], roots: list[str]) -> list[str]:
    """An absolute import's files, under the first root that holds its top package."""
    for root in roots:
        if files := _resolve(root, dotted, tree, dirs):
            return files
    return []


def _resolve(base: str, dotted: list[str], tree: dict[str, int], dirs: set[str]) -> list[str]:
    """The files importing ``dotted`` from the folder ``base`` runs: each package's
    ``__init__.py`` on the way and the module's file. A name that is neither stops the
    walk (it is an attribute, or not in the repository)."""
    found: list[str] = []
    here = base
    for name in dotted:
        here = posixpath.join(here, name) if here else name
        if f"{here}/__init__.py" in tree:
            found.append(f"{here}/__init__.py")
        elif f"{here}.py" in tree:
            found.append(f"{here}.py")
            break
        elif here not in dirs:  # a namespace package is a folder without __init__.py
            break
    return found


# -- which lines --------------------------------------------------------------------------


def _is_fail_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "fail"
        and isinstance(node.func.value, ast.Name | ast.Attribute)
    )


def _checks_directly(stmt: ast.stmt) -> bool:
    """A statement that is itself a check: assert, raise, or a ``.fail(`` call."""
    if isinstance(stmt, ast.Assert | ast.Raise):
        return True
    if isinstance(stmt, ast.Expr | ast.Return):
        value = stmt.value.value if isinstance(stmt.value, ast.Await) else stmt.value
        return value is not None and _is_fail_call(value)
    return False


def _check_lines(text: str) -> dict[int, tuple[str, int]]:
    """The check lines of a Python file: line number (from 1) -> (kind, the line its
    check starts on). Kinds: ``assert``, ``raise``, ``fail``, ``if``. A condition over
    several lines is one check: each of its lines is a check line, and a change to any
    of them is reported once."""
    try:
        module = ast.parse(text)
    except (SyntaxError, ValueError):
        return _check_lines_by_text(text.splitlines())
    out: dict[int, tuple[str, int]] = {}

    def mark(first: int, last: int | None, kind: str) -> None:
        for n in range(first, (last or first) + 1):
            out.setdefault(n, (kind, first))

    for node in ast.walk(module):
        if isinstance(node, ast.Assert):
            mark(node.lineno, node.test.end_lineno, "assert")
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "AssertionError":
                out[node.lineno] = ("raise", node.lineno)
        elif _is_fail_call(node):
            assert isinstance(node, ast.Call)
            out[node.lineno] = ("fail", node.lineno)
        elif isinstance(node, ast.If) and any(_checks_directly(s) for s in node.body):
            mark(node.lineno, node.test.end_lineno, "if")
    return out


def _kind_by_text(code: str) -> str | None:
    if re.match(r"assert\b", code):
        return "assert"
    if re.match(r"raise\s+AssertionError\b", code):
        return "raise"
    if _FAIL_CALL.search(code):
        return "fail"
    return None


def _check_lines_by_text(lines: list[str]) -> dict[int, tuple[str, int]]:
    """For a file that does not parse: each line on its own (an ``if``/``elif`` counts
    when the next code line is a check, or ``raise``)."""
    out: dict[int, tuple[str, int]] = {}
    codes = [line.strip() for line in lines]
    for i, code in enumerate(codes):
        if not code or code.startswith("#"):
            continue
        if kind := _kind_by_text(code):
            out[i + 1] = (kind, i + 1)
        elif re.match(r"(?:el)?if\b", code):
            following = next((c for c in codes[i + 1 :] if c and not c.startswith("#")), "")
            if _kind_by_text(following) or re.match(r"raise\b", following):
                out[i + 1] = ("if", i + 1)
    return out


def _looks_like(code: str | None, kind: str) -> bool:
    """Whether ``code`` reads as a check line of ``kind`` (by its text alone)."""
    if not code:
        return False
    if kind == "if":
        return re.match(r"(?:el)?if\b", code) is not None
    return _kind_by_text(code) == kind


def _uncomment(line: str) -> str | None:
    """The code a line holds commented out (``# assert x``, ``pass  # assert x``: ``assert
    x``), or None when it holds no comment."""
    at = line.find("#")
    if at < 0:
        return None
    return _COMMENT.sub("", line[at:].strip()).strip()


def _clip(text: str) -> str:
    text = redact(text.strip()) or ""
    return text if len(text) <= TEXT_MAX else text[: TEXT_MAX - 1] + "…"


# -- the diff -----------------------------------------------------------------------------


@dataclass
class _Hunk:
    file: str
    removed: list[tuple[int, str]]  # (line at before, text) of every line taken out
    added: list[tuple[int, str]]  # (line at after, text) of every line put in


def _findings(
    files: list[str], before: dict[str, str], after: dict[str, str], commits: tuple[str, str]
) -> list[dict[str, Any]]:
    hunks: list[_Hunk] = []
    checks_before: dict[str, dict[int, tuple[str, int]]] = {}
    checks_after: dict[str, dict[int, tuple[str, int]]] = {}
    for path in files:
        a_text, b_text = before.get(path, ""), after.get(path, "")
        if a_text == b_text:
            continue
        a, b = a_text.splitlines(), b_text.splitlines()
        checks_before[path], checks_after[path] = _check_lines(a_text), _check_lines(b_text)
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag != "equal":
                hunks.append(
                    _Hunk(
                        path,
                        [(i + 1, a[i]) for i in range(i1, i2)],
                        [(j + 1, b[j]) for j in range(j1, j2)],
                    )
                )
    # A line taken out here and put in, unchanged, elsewhere (or re-indented) moved.
    put_in = Counter(text.strip() for h in hunks for _, text in h.added if text.strip())
    taken_out = Counter(text.strip() for h in hunks for _, text in h.removed if text.strip())

    found: list[dict[str, Any]] = []

    def finding(path: str, line: int, commit: str, change: str, text: str, was: str | None = None) -> None:
        found.append(
            {
                "file": path,
                "line": line,
                "commit": commit,
                "change": change,
                "text": _clip(text),
                "before_text": _clip(was) if was is not None else None,
            }
        )

    reported: set[tuple[str, int]] = set()  # (file, line at before) of each check reported
    for h in hunks:
        was_checks = checks_before[h.file]
        now_kinds = {n: kind for n, (kind, _) in checks_after[h.file].items()}
        # Lines put in, not yet paired with a check taken out.
        free = [(n, text) for n, text in h.added]
        for n, text in h.removed:
            if n not in was_checks:
                continue
            kind, start = was_checks[n]
            code = text.strip()
            if (h.file, start) in reported:  # another line of a check already reported
                continue
            if put_in[code] > 0:
                put_in[code] -= 1
                continue
            reported.add((h.file, start))
            commented = next((x for x in free if _uncomment(x[1]) == code), None)
            if commented is None:
                commented = next((x for x in free if _looks_like(_uncomment(x[1]), kind)), None)
            if commented is not None:
                free.remove(commented)
                finding(h.file, commented[0], commits[1], "commented_out", commented[1], text)
                continue
            replacement = next(
                (
                    x
                    for x in free
                    if not x[1].strip().startswith("#")
                    and (now_kinds.get(x[0]) == kind or _looks_like(x[1].strip(), kind))
                ),
                None,
            )
            if replacement is not None:
                free.remove(replacement)
                finding(h.file, replacement[0], commits[1], "changed", replacement[1], text)
                continue
            finding(h.file, n, commits[0], "removed", text)
        for n, text in h.added:
            code = text.strip()
            if not code or code.startswith("#"):
                continue
            change = "xfail_added" if _XFAIL.search(code) else "skip_added" if _SKIP.search(code) else None
            if change is None:
                continue
            if taken_out[code] > 0:  # the same skip, moved
                taken_out[code] -= 1
                continue
            finding(h.file, n, commits[1], change, text)
    return found
