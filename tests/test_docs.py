"""The repository is self-contained: every reference in its code and documentation resolves inside it.

Claims: every `docs/` page a file names exists, and so does the heading it names (`<page>, "Heading"` in text,
or a markdown link's `#anchor`); every relative markdown link in README.md and docs/ reaches a file; no file cites
reference material that is not in the repository; README.md stays short and its first screen holds the two
commands exactly as `.ci/run` and the main job run them. The checks are functions of a root folder, so the last
tests run them on a small tree with known broken references.
"""
import os
import re
from functools import cache

from repo_paths import REPO

# What is scanned: the code, tests, configs, scripts and documentation (not outputs/ or the weight folders).
SCANNED_TOP = ("README.md", "docs", "sat", "tests", "metrics", "configs", "inference_case_configs", ".ci")
SCANNED_SUFFIXES = (".py", ".md", ".sh", ".yaml", ".yml", ".txt", "")
SKIPPED_DIRS = ("__pycache__", ".pytest_cache", "outputs")
WEIGHT_FOLDER_PREFIX = "CogVideoX-"  # sat/CogVideoX-*: downloaded or synthetic weights
README_LINES = 250
FIRST_SCREEN = 40
MAIN_JOB = "pip install -r requirements.txt && bash run_multi_prompt.sh --tiny"

# A path that is not part of a longer path or word.
_START = r"(?<![\w./-])"
PAGE_REFERENCE = re.compile(_START + r"(docs/[\w-]+\.md)(?:#([\w-]+))?")
# A page and a heading in quotes after a comma, the page being docs/<page>.md or README.md (optionally with the
# word `section` before the heading); in docs/ also <page>.md alone (a citation's link text). A quote may be
# escaped, as in a Python string.
CITATION = re.compile(_START + r"((?:docs/)?[\w-]+\.md),\s*(?:section\s+)?\\?([\"'])([^\n]+?)\\?\2")
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
# Citations of the reference specifications this project was written from, which users do not have. The
# original's prompt instruction prompts_gen_instruction/ditctrl.md is a file of this repository.
EXTERNAL = re.compile(r"(?<!prompts_gen_instruction/)\b(?:cogvideox|ditctrl)(?:-summary)?\.md"
                      r"|shared/[s]pec|§\s*\d|\b[s]pec\s+§?\d|\bthe [s]pec\b", re.IGNORECASE)  # [s]: not citing itself


def text_files(root: str):
    """(path relative to root, text) of every scanned file under root."""
    tops = [name for name in SCANNED_TOP if os.path.exists(os.path.join(root, name))]
    tops += sorted(name for name in os.listdir(root) if re.fullmatch(r"run_\w+\.sh", name))
    for top in tops:
        path = os.path.join(root, top)
        if os.path.isfile(path):
            yield top, _read(path)
            continue
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith(WEIGHT_FOLDER_PREFIX))
            for name in sorted(files):
                if os.path.splitext(name)[1] in SCANNED_SUFFIXES:
                    full = os.path.join(folder, name)
                    yield os.path.relpath(full, root), _read(full)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as file:
        return file.read()


def outside_fences(text: str) -> str:
    """The markdown text with its fenced code blocks blanked (line numbers kept)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (not `-` or `_`), spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(path: str) -> frozenset:
    """The anchors of a markdown file's headings, duplicates numbered as GitHub does (`-1`, `-2`, …)."""
    seen, found = {}, set()
    for line in outside_fences(_read(path)).splitlines():
        match = HEADING.match(line)
        if match:
            slug = github_slug(match.group(1))
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return frozenset(found)


def _line(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _missing_heading(root: str, page: str, anchor: str) -> str | None:
    """Why `page#anchor` (page relative to root) does not resolve, or None."""
    path = os.path.join(root, page)
    if not os.path.isfile(path):
        return f"{page} does not exist"
    if anchor and anchor not in anchors(path):
        return f"{page} has no heading '{anchor}'"
    return None


def broken_page_references(root: str) -> list[str]:
    """Every `docs/<page>.md[#anchor]` and every `<page>, "Heading"` citation that names a missing page or heading."""
    problems = []
    for name, text in text_files(root):
        for match in PAGE_REFERENCE.finditer(text):
            why = _missing_heading(root, match.group(1), match.group(2))
            if why:
                problems.append(f"{name}:{_line(text, match.start())}: {match.group(0)}: {why}")
        in_docs = name.startswith("docs" + os.sep)
        for match in CITATION.finditer(text):
            page, heading = match.group(1), match.group(3)
            if page != "README.md" and not page.startswith("docs/"):
                if not in_docs:
                    continue  # another file's name, e.g. a prompt instruction; not a citation of a page
                page = "docs/" + page
            why = _missing_heading(root, page, github_slug(heading))
            if why:
                problems.append(f"{name}:{_line(text, match.start())}: {match.group(0)}: {why}")
    return problems


def broken_links(root: str) -> list[str]:
    """Every relative markdown link in README.md and docs/ whose file, or heading, does not exist."""
    problems = []
    for name, text in text_files(root):
        if not name.endswith(".md") or not (name == "README.md" or name.startswith("docs" + os.sep)):
            continue
        text = outside_fences(text)
        for match in MARKDOWN_LINK.finditer(text):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            page = os.path.normpath(os.path.join(os.path.dirname(name), file_part)) if file_part else name
            if file_part and not os.path.exists(os.path.join(root, page)):
                why = f"{page} does not exist"
            else:
                why = _missing_heading(root, page, anchor) if anchor and page.endswith(".md") else None
            if why:
                problems.append(f"{name}:{_line(text, match.start())}: ({target}): {why}")
    return problems


def external_citations(root: str) -> list[str]:
    """Every line that cites the reference specifications (not part of the repository)."""
    return [f"{name}:{_line(text, match.start())}: {match.group(0)}"
            for name, text in text_files(root) for match in EXTERNAL.finditer(text)]


def ci_test_command(root: str) -> str:
    """The command `.ci/run` runs, without pip's --quiet flag (which changes what pip prints, not what runs)."""
    lines = [line.strip() for line in _read(os.path.join(root, ".ci", "run")).splitlines()]
    command, = [line for line in lines if "pytest" in line and not line.startswith("#")]
    return re.sub(r"\bpip install -q\b", "pip install", command)


def test_every_cited_page_and_heading_exists():
    problems = broken_page_references(REPO)
    assert not problems, "\n".join(problems)


def test_every_relative_link_in_the_documentation_resolves():
    problems = broken_links(REPO)
    assert not problems, "\n".join(problems)


def test_nothing_cites_material_outside_the_repository():
    problems = external_citations(REPO)
    assert not problems, "\n".join(problems)


def test_readme_is_short_and_its_first_screen_holds_both_commands():
    lines = _read(os.path.join(REPO, "README.md")).splitlines()
    assert len(lines) < README_LINES
    first_screen = [line.strip() for line in lines[:FIRST_SCREEN]]
    assert MAIN_JOB in first_screen
    assert ci_test_command(REPO) in first_screen


def _write(root, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checks_report_each_broken_reference_and_nothing_else(tmp_path):
    """A tree with one good and one broken reference of every kind. The references are assembled at run time, so
    that this file itself holds none of them."""
    page, missing_page, quote = "docs/" + "guide.md", "docs/" + "gone.md", '"'
    _write(tmp_path, page, "# Guide\n\nIntro.\n\n## Step two: the end (2B)\n\n```bash\n# not a heading\n```\n\n"
                           "See [Step two](#step-two-the-end-2b), [missing](#not-a-heading) and [the code](../x.py).\n")
    _write(tmp_path, "README.md", f"[Guide]({page}#guide) and [gone]({missing_page}).\n")
    _write(tmp_path, "sat/module.py",
           f'"""See ({page}, {quote}Step two: the end (2B){quote}) and ({page}, {quote}Step three{quote}).\n'
           f"Also {missing_page} and {page}#{'intro'}; the original cites {'cogvideox'}.md {chr(167)}2.\"\"\"\n")
    _write(tmp_path, "sat/other.py", "# prompts_gen_instruction/ditctrl" + ".md is ours\n")
    assert broken_page_references(str(tmp_path)) == [
        f"README.md:1: {missing_page}: {missing_page} does not exist",
        f"sat/module.py:2: {missing_page}: {missing_page} does not exist",
        f"sat/module.py:2: {page}#intro: {page} has no heading 'intro'",
        f"sat/module.py:1: {page}, {quote}Step three{quote}: {page} has no heading 'step-three'",
    ]
    assert broken_links(str(tmp_path)) == [
        f"README.md:1: ({missing_page}): {missing_page} does not exist",
        f"{page}:11: (#not-a-heading): {page} has no heading 'not-a-heading'",
        f"{page}:11: (../x.py): x.py does not exist",
    ]
    assert external_citations(str(tmp_path)) == [f"sat/module.py:2: {'cogvideox'}.md", f"sat/module.py:2: {chr(167)}2"]


def test_headings_get_githubs_anchors():
    assert github_slug("Position embedding: 3-D rotary (5B)") == "position-embedding-3-d-rotary-5b"
    assert github_slug("params.yaml and reruns") == "paramsyaml-and-reruns"
    assert github_slug("Element-wise work and `compile_dit`") == "element-wise-work-and-compile_dit"
