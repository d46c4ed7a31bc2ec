"""
Every code block of README.md and docs/**/*.md runs as written, in order, from an empty directory.

- A block fenced as ```python runs in one interpreter per document: its blocks share names in order, like a reader
  pasting them into one session.
- A ```bash (or ```sh, ```shell) block runs with `bash -e` in the same directory, with this environment's console
  scripts (`kmeans-transformer`, `torchrun`, `accelerate`) on PATH, as after activating the virtual environment.
- A block fenced as ```text, or with no language, is output or a synopsis of a command's options: it is not run.
- A block preceded by an HTML comment `<!-- not run by the docs test: REASON -->` is skipped with that reason (the
  README's set-up and test commands, which CI itself runs from scratch).

Blocks that name a Hub repository run against a local server speaking the Hub's protocol (`hub_server.py`), where
the token in HF_TOKEN belongs to the user `OWNER`, so `OWNER/NAME` in the docs is a repository that user can create.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hub_server import hub  # noqa: F401  (the fixture)


ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
FENCE = re.compile(r"(?:<!--\s*not run by the docs test:(?P<skip>.*?)-->\s*\n)?^```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```",
                   re.S | re.M)
SLOW = {"docs/distributed.md"}  # two-process runs: in the slow set


def code_blocks(document: Path) -> list[tuple[str, str]]:
    """(language, code) of every block of `document` that runs, in order."""
    blocks = []
    for match in FENCE.finditer(document.read_text()):
        language = RUN.get(match["lang"].lower())
        if language is not None and match["skip"] is None:
            blocks.append((language, match["code"]))
    return blocks


DRIVER = textwrap.dedent("""
    import json, subprocess, sys
    blocks = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__main__"}
    for number, (language, code) in enumerate(blocks):
        print(f"--- block {number} ({language})", flush=True)
        if language == "python":
            exec(compile(code, f"<{sys.argv[2]} block {number}>", "exec"), namespace)
        else:
            subprocess.run(["bash", "-e", "-c", code], check=True)
""")


def documents_with_code():
    for document in DOCUMENTS:
        name = str(document.relative_to(ROOT))
        if code_blocks(document):
            marks = [pytest.mark.slow] if name in SLOW else []
            yield pytest.param(document, id=name, marks=marks)


@pytest.mark.parametrize("document", list(documents_with_code()))
def test_every_code_block_runs_as_written(document, tmp_path, hub):  # noqa: F811
    import json

    hub.add_token("hf_docs_token", "OWNER")
    work = tmp_path / "work"
    work.mkdir()
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps(code_blocks(document)))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    environment = dict(os.environ, HF_TOKEN="hf_docs_token", MPLBACKEND="Agg")
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
    result = subprocess.run(
        [sys.executable, str(driver), str(blocks), document.name], cwd=work, env=environment,
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, f"{document.name}:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"


def test_the_setup_and_test_commands_are_the_ones_ci_runs():
    """The two README commands the docs test skips are exactly what `.ci/run` runs."""
    readme = (ROOT / "README.md").read_text()
    skipped = [match["code"].strip() for match in FENCE.finditer(readme) if match["skip"] is not None]
    ci = (ROOT / ".ci" / "run").read_text()
    assert len(skipped) == 2
    setup, tests = skipped
    for command in setup.split(" && "):
        assert command.replace(".venv/bin/", "") in ci.replace(".venv/bin/", "").replace("--quiet ", ""), command
    assert tests in ci
