"""The seed coding agent — the code the Darwin Gödel Machine evolves.

It runs inside the sandbox: ``python3 coding_agent.py task.json``. task.json gives the problem
statement, the repository to change and the model settings. The agent talks to the model through
the evoray gateway (no API key here) and acts with two tools: a ``bash`` block runs a command, a
``python`` block whose first line is ``# file: PATH`` replaces that file. Its transcript goes to
the log file that the self-improvement step reads.
"""
from __future__ import annotations

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llm_client import GatewayError, chat  # noqa: E402
from tools import bash, write_file  # noqa: E402

SYSTEM_PROMPT = """You are a careful software engineer. You change the code in a repository to solve a task.
Tools: reply with a block
```bash
COMMAND
```
to run a shell command in the repository, or with a block
```python
# file: PATH
FULL NEW CONTENT OF THE FILE
```
to replace a file. Reply DONE when the task is solved."""

BLOCK = re.compile(r"```(bash|sh|python|py)?[ \t]*\n(.*?)```", re.DOTALL)
FILE_HEADER = re.compile(r"#\s*file:\s*(\S+)\s*\n")


def parse_actions(reply: str, main_file: str | None) -> list[tuple[str, str, str]]:
    """(tool, path, text) for each code block; a python block without a header edits main_file."""
    actions = []
    for lang, body in BLOCK.findall(reply):
        if lang in ("bash", "sh"):
            actions.append(("bash", "", body))
            continue
        header = FILE_HEADER.match(body)
        path = header.group(1) if header else main_file
        if path:
            actions.append(("write", path, body[header.end():] if header else body))
    return actions


def first_message(task: dict, repo: str) -> str:
    files = sorted(os.path.relpath(os.path.join(d, f), repo)
                   for d, _, fs in os.walk(repo) for f in fs)
    parts = [f"Task:\n{task['statement']}", "Files in the repository:\n" + "\n".join(files)]
    main = task.get("main_file")
    if main and os.path.isfile(os.path.join(repo, main)):
        with open(os.path.join(repo, main)) as f:
            text = f.read()
        if text.strip() not in task["statement"]:   # not twice: prompt tokens are the cost
            parts.append(f"Content of {main}:\n```python\n{text}```")
    return "\n\n".join(parts)


def solve(task: dict) -> list[dict]:
    repo = task["repo_dir"]
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": first_message(task, repo)}]
    for _ in range(task.get("max_steps", 3)):
        try:
            reply = chat(messages, model=task.get("model"), max_tokens=task.get("max_tokens", 512),
                         temperature=task.get("temperature", 0.0))
        except GatewayError as e:
            messages.append({"role": "user", "content": f"[model unavailable: {e}]"})
            break
        messages.append({"role": "assistant", "content": reply})
        actions = parse_actions(reply, task.get("main_file"))
        if not actions:
            break
        results = [bash(text, repo) if tool == "bash" else write_file(path, text, repo)
                   for tool, path, text in actions]
        messages.append({"role": "user", "content": "\n".join(results)})
        if "DONE" in reply:
            break
    return messages


def write_log(messages: list[dict], path: str) -> None:
    with open(path, "w") as f:
        for m in messages:
            f.write(f"## {m['role']}\n{m['content']}\n\n")


def main() -> None:
    with open(sys.argv[1]) as f:
        task = json.load(f)
    write_log(solve(task), task.get("log_path", "agent_log.md"))


if __name__ == "__main__":
    main()
