"""The README runs top to bottom as written.

Every ```bash block of the README is marked, on the line before it, either
`<!-- runnable -->` or `<!-- not run: why -->`. The runnable ones (and the ```python blocks
marked runnable) are run here in order, in one bash, as a reader would paste them: against a
fresh server on the README's ports (11337, 11338; DNS on 8600) whose data dir is
`~/.registry-svc` of a temporary HOME, with `oo` and the venv's python on PATH. `curl` fails
on an HTTP error (`--fail-with-body`), every pipeline's failure counts (`pipefail`), and the
server records any traffic it would send beyond loopback (netspy), which fails the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Server

README = Path(__file__).resolve().parent.parent / "README.md"
PORTS = (11337, 11338, 8600, 8081, 8082)
MARK = re.compile(r"^<!-- (runnable|not run: .+) -->$")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    mark: str | None
    text: str


def blocks(markdown: str) -> list[Block]:
    """The fenced code blocks, each with the marker comment on the line before it (if any)."""
    lines = markdown.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        mark = MARK.match(lines[i - 1]) if i > 0 else None
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        found.append(Block(i + 1, opening.group(1), mark.group(1) if mark else None, "\n".join(lines[i + 1 : end])))
        i = end + 1
    return found


def test_every_shell_block_says_whether_it_runs() -> None:
    unmarked = [b.line for b in blocks(README.read_text()) if b.lang == "bash" and b.mark is None]
    assert not unmarked, f"README.md: bash blocks at lines {unmarked} need <!-- runnable --> or <!-- not run: why -->"


def test_runnable_marks_are_only_on_code_blocks() -> None:
    lines = README.read_text().splitlines()
    stray = [n + 1 for n, line in enumerate(lines) if MARK.match(line) and not FENCE.match(lines[n + 1])]
    assert not stray, f"README.md: markers at lines {stray} are not followed by a code block"


def script(markdown: str) -> str:
    """One bash script: each runnable block in order, announced on stderr by its line."""
    parts = [
        "set -e -o pipefail",
        'curl() { command curl --fail-with-body --max-time 60 "$@"; }',
    ]
    for block in blocks(markdown):
        if block.mark != "runnable":
            continue
        parts.append(f"echo '### README.md line {block.line}' >&2")
        if block.lang == "bash":
            parts.append(block.text)
        elif block.lang == "python":
            parts.append(f"python - <<'README_PYTHON'\n{block.text}\nREADME_PYTHON")
        else:
            raise AssertionError(f"README.md line {block.line}: cannot run a ```{block.lang} block")
    return "\n".join(parts) + "\n"


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_readme_runs_top_to_bottom(tmp_path: Path) -> None:
    taken = [p for p in PORTS if port_taken(p)]
    if taken:
        pytest.fail(
            f"the README's examples use ports {taken}, which are in use here (a server from make run?): stop it"
        )
    home = tmp_path / "home"
    home.mkdir()
    server = Server(home / ".registry-svc", port=11337, data_port=11338, args=["--dns-port", "8600"])
    server.start()
    venv_bin = str(Path(sys.executable).parent)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OB_", "REGISTRY_SVC_")) and key not in ("XDG_CONFIG_HOME", "VIRTUAL_ENV")
    }
    env.update(HOME=str(home), PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", NO_COLOR="1")
    text = script(README.read_text())
    proc = subprocess.Popen(
        ["bash", "-c", text],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the README's examples did not finish in 300 s:\n{err[-3000:]}")
    finally:
        # Background processes the README starts (python -m http.server) share the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        server.kill9()  # also fails if the server sent anything beyond loopback
    where = [line for line in err.splitlines() if line.startswith("### README.md")]
    if os.environ.get("README_TRANSCRIPT"):
        Path(os.environ["README_TRANSCRIPT"]).write_text(f"{out}\n--- stderr ---\n{err}")
    assert proc.returncode == 0, (
        f"the README's examples failed (exit {proc.returncode}) in {where[-1] if where else 'the prelude'}:\n"
        f"--- stdout (end) ---\n{out[-3000:]}\n--- stderr (end) ---\n{err[-3000:]}"
    )
    runnable = [b for b in blocks(README.read_text()) if b.mark == "runnable"]
    assert len(where) == len(runnable), f"ran {len(where)} of {len(runnable)} runnable blocks"
    # What the examples say they show, they show: the proxy reached the tour's servers.
    assert out.count("hello from 8082") >= 3, out[-3000:]
    assert '"reason":"kernel upgrade"' in out, out[-3000:]
