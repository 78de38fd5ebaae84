"""The SVG drawing of a run's path through its state machine: passed states coloured by outcome, the rest grey,
each state a link to ``#state-<id>`` where the page shows the step's input, output, error and timing."""

from __future__ import annotations

from collections.abc import Callable

from markupsafe import Markup, escape

from labelloop.runs.graph import CHOICE, FAIL, START, SUCCEED, Machine, State, StatePass, Trace, Transition

COLUMN, ROW = 250, 68
BOX_W, BOX_H = 206, 42
MARGIN = 14
COLOURS = {  # fill, stroke, text
    "success": ("#e6f4ea", "#176b2c", "#0f3d1c"),
    "error": ("#fdecea", "#a4262c", "#6e1a1e"),
    "skipped": ("#fff4e0", "#8a5a00", "#5c3c00"),
    "running": ("#e7eef5", "#1f3b57", "#1f3b57"),
    None: ("#f6f8fa", "#c3c9cf", "#8c959f"),
}
OUTCOME_WORDS = {"success": "succeeded", "error": "failed", "skipped": "skipped", "running": "running",
                 None: "not on this run's path"}


def _centre(state: State) -> tuple[float, float]:
    return MARGIN + state.col * COLUMN + BOX_W / 2, MARGIN + state.row * ROW + BOX_H / 2


def _shape(state: State, fill: str, stroke: str, dashed: bool, width: float) -> str:
    cx, cy = _centre(state)
    x, y = cx - BOX_W / 2, cy - BOX_H / 2
    extra = f' stroke-width="{width}"' + (' stroke-dasharray="5 3"' if dashed else "")
    if state.kind == CHOICE:
        notch = 16
        points = (f"{x},{cy} {x + notch},{y} {x + BOX_W - notch},{y} {x + BOX_W},{cy} "
                  f"{x + BOX_W - notch},{y + BOX_H} {x + notch},{y + BOX_H}")
        return f'<polygon points="{points}" fill="{fill}" stroke="{stroke}"{extra}/>'
    radius = BOX_H / 2 if state.kind in (START, SUCCEED, FAIL) else 6
    return (f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="{radius}" fill="{fill}" '
            f'stroke="{stroke}"{extra}/>')


def _subtitle(passed: StatePass, timed: set[int]) -> str:
    """The line under a state's title: its steps' count and time, or "same step" where one recorded step stands
    for several states (a batch detection) and a state above already shows its time."""
    if passed.outcome is None:
        return ""
    if passed.outcome == "running":
        return "running…"
    ids = {s["step_id"] for s in passed.steps}
    if ids and ids <= timed and passed.outcome not in ("error", "skipped"):
        return "same step"
    timed.update(ids)
    if passed.steps:
        parts = [f"{len(passed.steps)}×"] if len(passed.steps) > 1 else []
        durations = [s["duration_ms"] for s in passed.steps if s["duration_ms"] is not None]
        if durations:
            seconds = sum(durations) / 1000
            parts.append(f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s")
        if passed.outcome in ("error", "skipped"):
            parts.append(passed.outcome)
        return " · ".join(parts)
    return {"skipped": "skipped", "error": "fail state"}.get(passed.outcome, "")


def _edge(machine: Machine, edge: Transition, taken: bool, occupied: set[tuple[int, int]]) -> str:
    source, target = machine.state(edge.source), machine.state(edge.target)
    (sx, sy), (tx, ty) = _centre(source), _centre(target)
    half_w, half_h = BOX_W / 2, BOX_H / 2
    if source.row == target.row:
        direction = 1 if tx > sx else -1
        points = [(sx + direction * half_w, sy), (tx - direction * half_w, ty)]
        label_at = (sx + direction * (half_w + 8), sy - 6, "start" if direction > 0 else "end")
    elif source.col == target.col:
        between = any((row, source.col) in occupied for row in range(source.row + 1, target.row))
        if between:  # go round on the right
            out = sx + half_w + (COLUMN - BOX_W) / 2
            points = [(sx + half_w, sy), (out, sy), (out, ty), (tx + half_w, ty)]
            label_at = (sx + half_w + 4, sy - 6, "start")
        else:
            points = [(sx, sy + half_h), (tx, ty - half_h)]
            label_at = (sx + 7, sy + half_h + 14, "start")
    elif source.kind == CHOICE:  # out of the choice's side, then down into the target
        direction = 1 if tx > sx else -1
        points = [(sx + direction * half_w, sy), (tx, sy), (tx, ty - half_h)]
        label_at = (sx + direction * (half_w + 8), sy - 6, "start" if direction > 0 else "end")
    else:  # down out of the state, then across into the target's side
        direction = 1 if tx > sx else -1
        points = [(sx, sy + half_h), (sx, ty), (tx - direction * half_w, ty)]
        label_at = (sx + 7, sy + half_h + 14, "start")
    colour, width = ("#1d2327", 2.2) if taken else ("#b7bec6", 1.3)
    dash = "" if taken else ' stroke-dasharray="4 3"'
    marker = "arrow-taken" if taken else "arrow"
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    parts = [f'<polyline class="transition{" taken" if taken else ""}" points="{path}" fill="none" '
             f'stroke="{colour}" stroke-width="{width}"{dash} marker-end="url(#{marker})" '
             f'data-from="{escape(edge.source)}" data-to="{escape(edge.target)}"/>']
    if edge.label:
        x, y, anchor = label_at
        parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="11" '
                     f'fill="{"#1d2327" if taken else "#8c959f"}">{escape(edge.label)}</text>')
    return "".join(parts)


def render_svg(result: Trace, *, link: Callable[[str], str] = lambda state_id: f"#state-{state_id}") -> Markup:
    """The machine as SVG with ``result``'s path: passed states coloured by outcome, the rest grey."""
    machine = result.machine
    columns = max(s.col for s in machine.states) + 1
    rows = max(s.row for s in machine.states) + 1
    width = MARGIN * 2 + (columns - 1) * COLUMN + BOX_W
    height = MARGIN * 2 + (rows - 1) * ROW + BOX_H
    occupied = {(s.row, s.col) for s in machine.states}
    parts = [
        f'<svg class="state-machine" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="group" aria-label="{escape(machine.name)} state machine" xmlns="http://www.w3.org/2000/svg" '
        f'font-size="13" font-family="system-ui, sans-serif">',
        '<defs>',
        '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" markerHeight="9" '
        'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#b7bec6"/></marker>',
        '<marker id="arrow-taken" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="10" markerHeight="10" '
        'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#1d2327"/></marker>',
        '</defs>',
    ]
    # Transitions not taken first, so the taken path is drawn over them.
    for taken in (False, True):
        for edge in machine.transitions:
            if ((edge.source, edge.target) in result.taken) == taken:
                parts.append(_edge(machine, edge, taken, occupied))
    timed: set[int] = set()
    for state in sorted(machine.states, key=lambda s: (s.row, s.col)):
        passed = result.states[state.id]
        fill, stroke, text = COLOURS[passed.outcome]
        cx, cy = _centre(state)
        subtitle = _subtitle(passed, timed)
        title_y = cy + (-2 if subtitle else 5)
        label = f"{state.title}: {OUTCOME_WORDS[passed.outcome]}"
        weight = ' font-weight="600"' if passed.outcome else ""
        parts.append(
            f'<a href="{escape(link(state.id))}" class="state outcome-{passed.outcome or "not-run"}" '
            f'data-state="{escape(state.id)}" data-outcome="{passed.outcome or "not-run"}" '
            f'aria-label="{escape(label)}"><title>{escape(label)}</title>'
            + _shape(state, fill, stroke, passed.outcome in ("skipped", "running"),
                     2.2 if passed.outcome else 1.2)
            + f'<text x="{cx}" y="{title_y}" text-anchor="middle" fill="{text}"{weight}>{escape(state.title)}</text>'
            + (f'<text x="{cx}" y="{cy + 14}" text-anchor="middle" font-size="11" fill="{text}">'
               f'{escape(subtitle)}</text>' if subtitle else "")
            + "</a>")
    parts.append("</svg>")
    return Markup("".join(parts))
