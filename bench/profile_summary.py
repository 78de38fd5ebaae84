"""Summarise py-spy's raw (collapsed-stack) output: where the server's active samples go.

    python bench/profile_summary.py bench/out/profile/sync-8.txt

Each line of the input is ``thread;frame;frame;... count`` (py-spy ``--format raw --threads``), idle samples
left out by py-spy. Printed: samples per thread, the functions that hold most samples inclusively (anywhere on
the stack) and exclusively (the innermost frame), and the share of a few named costs (`CATEGORIES`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Named costs, by the first matching frame from the innermost outwards (function name, file path).
CATEGORIES: list[tuple[str, str]] = [
    ("ONNX Runtime run", r"^run \(onnxruntime/"),
    ("head (predict_proba)", r"predict_proba"),
    ("JPEG decode (Pillow load)", r"^(load|load_prepare|load_read|decode) \(PIL/|_load \(labelloop/modeling/images"),
    ("resize + to array", r"to_input|_to_array|^resize \(PIL/"),
    ("image open / EXIF", r"^(open|exif_transpose|getexif|_open) \((PIL|labelloop)/"),
    ("multipart parsing", r"multipart|formparsers|_get_form|UploadFile"),
    ("DBOS bookkeeping", r"\(dbos/"),
    ("SQLAlchemy / database", r"\((sqlalchemy|sqlite3|psycopg)/"),
    ("storage (object put/get)", r"labelloop/storage/"),
    ("JSON / pydantic", r"\((json|pydantic|pydantic_core)/|serialize_response|jsonable_encoder"),
    ("HTTP server (uvicorn, h11, starlette)", r"\((uvicorn|h11|starlette|fastapi|httptools)/"),
    ("asyncio loop", r"\(asyncio/"),
    ("logging", r"\(logging/|labelloop/logs"),
    ("thread pool / queue hand-off", r"\((concurrent|queue|threading)\.py|\(anyio/"),
]


def _frame(frame: str) -> str:
    """``function (path:line)`` to ``function (package/module.py)``: lines merged, paths shortened."""
    frame = re.sub(r":\d+\)$", ")", frame)
    return re.sub(r"\((?:[^()]*/(?:site-packages|src|lib/python3\.\d+)/)", "(", frame)


def _frames(stack: str) -> list[str]:
    return [_frame(frame) for frame in stack.split(";")]


def summarize(text: str, top: int = 12) -> str:
    """A text report of one profile."""
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        thread, frames = frames[0], frames[1:]
        total += count
        threads[re.sub(r"\d+", "N", thread)] += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            exclusive[frames[-1]] += count
        categories[_category(frames)] += count
    if not total:
        return "no samples"
    lines = [f"{total} active samples (100 per second per busy thread)", "threads:"]
    lines += [f"  {100 * n / total:5.1f} %  {name}" for name, n in threads.most_common(8)]
    lines.append("roles:")
    lines.append(roles(text))
    lines.append("named costs (innermost matching frame):")
    lines += [f"  {100 * n / total:5.1f} %  {name}" for name, n in categories.most_common()]
    lines.append("inclusive (on the stack):")
    lines += [f"  {100 * n / total:5.1f} %  {name}" for name, n in inclusive.most_common(top)]
    lines.append("labelloop's own functions (inclusive):")
    ours = [(name, n) for name, n in inclusive.most_common() if "(labelloop/" in name]
    lines += [f"  {100 * n / total:5.1f} %  {name}" for name, n in ours[:top]]
    lines.append("exclusive (innermost frame):")
    lines += [f"  {100 * n / total:5.1f} %  {name}" for name, n in exclusive.most_common(top)]
    return "\n".join(lines)


def _thread_role(thread: str, names: list[str]) -> str:
    """What a sample of the upload pipeline was doing: a step's own work, DBOS's records, HTTP, polling."""
    if "dbos-executor" in thread:
        if "step.<locals>.wrap.<locals>.recorded" in names:
            below = names[names.index("step.<locals>.wrap.<locals>.recorded") + 1:]
            return f"step's own work: {below[0] if below else '?'}"
        if "SystemDatabase.update_workflow_outcome" in names:
            return "DBOS: workflow outcome write"
        if "invoke_step.<locals>.record_step_result" in names:
            return "DBOS: step output write"
        if any(name.startswith("invoke_step.<locals>.check") for name in names):
            return "DBOS: step replay check"
        return "DBOS: other, in the workflow thread"
    for marker, role in (("AnyIO", "HTTP handlers in worker threads"), ("MainThread", "event loop (HTTP)"),
                         ("queue-worker", "DBOS queue polling / dequeue"), ("inference-unit", "inference unit"),
                         ("detect-prepare", "detect: decode + preprocess")):
        if marker in thread:
            return role
    return "other threads"


def roles(text: str) -> str:
    """Share of samples per role (see `_thread_role`)."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            frames = _frames(stack)
            counts[_thread_role(frames[0], [f.split(" (")[0] for f in frames[1:]])] += int(count_text)
    total = sum(counts.values()) or 1
    return "\n".join(f"  {100 * n / total:5.1f} %  {role}" for role, n in counts.most_common())


TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(stat: Path) -> list[str]:
    """The fields of a /proc ``stat`` file after the command name (index 0 is the state, 7 the minor faults, 11
    and 12 the user and system ticks)."""
    return stat.read_text().rsplit(")", 1)[1].split()


def fields_cpu(fields: list[str]) -> float:
    """User + system CPU seconds from :func:`stat_fields`."""
    return (int(fields[11]) + int(fields[12])) / TICKS


def stat_cpu(stat: Path) -> float:
    """User + system CPU seconds from a /proc ``stat`` file (a process's, or one of its threads')."""
    return fields_cpu(stat_fields(stat))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from /proc."""
    return stat_cpu(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each live thread of process ``pid``, by thread id, from /proc."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found[int(task.name)] = stat_cpu(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
    return found


def thread_names(text: str) -> dict[int, str]:
    """Thread id → Python thread name, from py-spy's raw output (``thread (TID): name;...``)."""
    names = {}
    for match in re.finditer(r"^thread \((\d+)\): ([^;]*);", text, re.MULTILINE):
        names[int(match[1])] = match[2]
    return names


def dumped_thread_names(pid: int) -> dict[int, str]:
    """Thread id → Python thread name of the live process ``pid`` (``py-spy dump``; empty without py-spy)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).is_file():
        return {}
    dump = subprocess.run([py_spy, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True,
                          timeout=60, check=False).stdout
    return {int(tid): name for tid, name in re.findall(r'^Thread (\d+) \([^)]*\): "(.*)"$', dump, re.MULTILINE)}


def memory_mib(pid: int, key: str) -> float:
    """A memory figure of process ``pid`` from /proc (``key``: VmRSS, VmHWM, ...) in MiB; NaN when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def role_seconds(before: dict[int, float], after: dict[int, float], names: dict[int, str]) -> Counter[str]:
    """CPU seconds of each role (`_thread_role` by thread name) between two `thread_cpu` snapshots; threads
    without a name count as "other threads"."""
    counts: Counter[str] = Counter()
    for tid, seconds in after.items():
        used = seconds - before.get(tid, 0.0)
        if used > 0:
            counts[_thread_role(names.get(tid, "?"), [])] += used
    return counts


def cpu_roles(before: dict[int, float], after: dict[int, float], names: dict[int, str], images: int) -> str:
    """CPU milliseconds per image of each role (:func:`role_seconds`) between two `thread_cpu` snapshots: what
    the threads really used, where py-spy's samples count a thread that waits for a core or a lock as active too.
    Threads py-spy never saw active count as "other threads"."""
    counts = role_seconds(before, after, names)
    total = sum(counts.values()) or 1e-9
    lines = [f"CPU from /proc, {1000 * total / max(1, images):.1f} ms per image in all:"]
    lines += [f"  {100 * s / total:5.1f} %  {1000 * s / max(1, images):5.2f} ms/img  {role}"
              for role, s in counts.most_common()]
    return "\n".join(lines)


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in CATEGORIES:
            if re.search(pattern, frame):
                return name
    return "other"


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"── {path} ──")
        with open(path) as handle:
            print(summarize(handle.read()))
