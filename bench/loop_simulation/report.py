"""The simulation's table (markdown) and plot (PNG, drawn with Pillow: macro-F1 against human answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

MARGIN_TO_CEILING = 0.02
BUDGET_SHARE = 0.30
COLOURS = {"loop": (214, 39, 40), "random": (31, 119, 180), "full": (90, 90, 90)}
NAMES = {"loop": "loop (low-confidence detections to humans)",
         "random": "random selection, same budget (mean and min-max of the draws)",
         "full": "full supervision (every image labeled)"}


def by_arm(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["arm"], []).append(row)
    return out


def random_by_batch(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The random arm per batch: mean, min and max macro-F1 over its draws (batches every draw trained after)."""
    draws: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if row["arm"] == "random":
            draws.setdefault(row["after_batch"], []).append(row)
    n = len({row.get("draw") for row in rows if row["arm"] == "random"})
    out = {}
    for batch, found in draws.items():
        if len(found) == n:
            f1 = [r["macro_f1"] for r in found]
            out[batch] = {"after_batch": batch, "human_answers": found[0]["human_answers"], "draws": len(f1),
                          "macro_f1": round(sum(f1) / len(f1), 4), "min": min(f1), "max": max(f1)}
    return out


def random_serving_at(rows: list[dict[str, Any]], batch: int) -> dict[str, Any] | None:
    """The random arm's serving versions after `batch` (each draw's newest at or before it): the same label
    budget as the loop's at that batch, whether or not either trained just then."""
    latest: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row["arm"] == "random" and row["after_batch"] <= batch:
            draw = row.get("draw") or 0
            if draw not in latest or row["after_batch"] > latest[draw]["after_batch"]:
                latest[draw] = row
    draws = {row.get("draw") or 0 for row in rows if row["arm"] == "random"}
    if not latest or set(latest) != draws:
        return None
    f1 = [r["macro_f1"] for r in latest.values()]
    return {"after_batch": batch, "draws": len(f1), "macro_f1": round(sum(f1) / len(f1), 4), "min": min(f1),
            "max": max(f1)}


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """The target: within 0.02 of full supervision with ≤ 30 % of its labels; beat random at every budget."""
    arms = by_arm(result["rows"])
    out: dict[str, Any] = {}
    if "full" in arms:
        full = arms["full"][-1]
        out["full_f1"] = full["macro_f1"]
        out["full_labels"] = full["labeled_images"]
        out["target_f1"] = round(full["macro_f1"] - MARGIN_TO_CEILING, 4)
        out["label_allowance"] = int(BUDGET_SHARE * full["labeled_images"])
    if "loop" in arms:
        loop = arms["loop"]
        out["loop_final_f1"] = loop[-1]["macro_f1"]
        out["loop_final_labels"] = loop[-1]["labeled_images"]
        out["loop_final_answers"] = loop[-1]["human_answers"]
        if "full" in arms:
            reached = [r for r in loop if r["macro_f1"] >= out["target_f1"]]
            first = reached[0] if reached else None
            out["loop_reached"] = first is not None
            if first:
                out["loop_reached_at_answers"] = first["human_answers"]
                out["loop_reached_at_labels"] = first["labeled_images"]
                out["loop_reached_f1"] = first["macro_f1"]
                out["loop_reached_share"] = round(first["labeled_images"] / out["full_labels"], 4)
            out["ceiling_met"] = bool(first) and first["labeled_images"] <= BUDGET_SHARE * out["full_labels"]
        if "random" in arms:
            found = [(r, random_serving_at(result["rows"], r["after_batch"])) for r in loop if r["human_answers"] > 0]
            pairs = [(r, q) for r, q in found if q is not None]
            out["pairs"] = [{"answers": r["human_answers"], "loop": r["macro_f1"], "random": q["macro_f1"],
                             "random_max": q["max"], "margin": round(r["macro_f1"] - q["macro_f1"], 4)}
                            for r, q in pairs]
            out["beats_random_everywhere"] = bool(pairs) and all(p["margin"] > 0 for p in out["pairs"])
            out["beats_every_draw"] = sum(p["loop"] > p["random_max"] for p in out["pairs"])
    out["met"] = bool(out.get("ceiling_met")) and bool(out.get("beats_random_everywhere"))
    return out


def _fmt(value: Any, digits: int = 3, percent: bool = False) -> str:
    if value is None:
        return "—"
    if percent:
        return f"{100 * value:.1f} %"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def target_lines(result: dict[str, Any]) -> list[str]:
    """The target, figure by figure, as a markdown table."""
    v = verdict(result)
    if "full_f1" not in v:
        return []
    lines = ["| target | figure | met |", "|---|---|---|",
             f"| full supervision (ceiling) | macro-F1 {v['full_f1']:.4f} with {v['full_labels']} labeled images | |"]
    if "loop_reached" in v:
        if v["loop_reached"]:
            got = (f"macro-F1 {v['loop_reached_f1']:.4f} ≥ {v['target_f1']:.4f} at {v['loop_reached_at_answers']}"
                   f" human answers, {v['loop_reached_at_labels']} labeled images = "
                   f"{100 * v['loop_reached_share']:.1f} % of full (allowed ≤ {100 * BUDGET_SHARE:.0f} %)")
        else:
            got = (f"never reached {v['target_f1']:.4f}; last version {v['loop_final_f1']:.4f} with "
                   f"{v['loop_final_labels']} labeled images")
        lines.append(f"| loop within {MARGIN_TO_CEILING} of the ceiling with ≤ {100 * BUDGET_SHARE:.0f} % of its "
                     f"labels | {got} | {'yes' if v['ceiling_met'] else 'no'} |")
    if "pairs" in v:
        worst = min(v["pairs"], key=lambda p: p["margin"]) if v["pairs"] else None
        got = (f"{sum(p['margin'] > 0 for p in v['pairs'])} of {len(v['pairs'])} budgets; smallest margin "
               f"{worst['margin']:+.4f} at {worst['answers']} answers" if worst else "no budgets compared")
        draws = result["settings"].get("random_draws", 1)
        got += (f"; above every one of the {draws} random draws at {v['beats_every_draw']} of "
                f"{len(v['pairs'])}" if draws > 1 else "")
        lines.append(f"| loop beats random (mean of {draws} draw{'s' if draws > 1 else ''}) at every budget | "
                     f"{got} | {'yes' if v['beats_random_everywhere'] else 'no'} |")
    return lines


def _training(settings: dict[str, Any]) -> str:
    return ("Train-Final-Model-On-All-Images and Balance-Labels-In-Training "
            f"{'true' if settings.get('training') == 'recommended' else 'false (the seed training)'}")


def _versus(compared: dict[str, Any] | None) -> str:
    if not compared or compared.get("f1") is None:
        return "—"
    return f"{compared['f1']:.3f} vs {compared['serving_version']} {compared['serving_f1']:.3f}"


def _gate(settings: dict[str, Any]) -> str:
    minimum = settings.get("minimum_f1", 0.0)
    return (f"the loop arm's Minimum-F1-Score {minimum:g} after v1 (baselines ungated)" if minimum
            else "Minimum-F1-Score 0 (no gate)")


def table(result: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    s = result["settings"]
    arms = by_arm(result["rows"])
    lines = ["# Loop simulation: macro-F1 against human answers (load_digits)", "",
             f"{s['holdout']} held-out images (30 %, stratified), {s['initial']} initial labels (2 per label), "
             f"{s['streamed']} images streamed in batches of {s['batch_size']}; Minimum-Untrained-Images "
             f"{s['minimum_untrained_images']}, Minimum-Label-Detection-Confidence "
             f"{s['threshold'] if s['threshold'] is not None else 'default (70)'}, Human-Sampling-Interval "
             f"{s['sampling_interval']}, reviewer error rate {s['error_rate']}, seed {s['seed']}; "
             f"{_gate(s)}; "
             f"{_training(s)}. Macro-F1 is each serving version's exported ONNX model on the held-out images.", ""]
    lines += [*target_lines(result), ""]
    if before is not None:
        lines += [f"Before, with {_training(before['settings'])} (same plan, same seed):", "",
                  *target_lines(before), ""]
    if "loop" in arms:
        lines += ["## Loop, with the random-selection baseline at the same budget", "",
                  "| version | after batch | streamed | human answers | labeled images | macro-F1 loop | "
                  "macro-F1 random: mean (min–max) | sent to humans (since previous version) | "
                  "sampling agreement (answers) | audit answers | F1 gate: test split / production estimate | "
                  "passed on | refused so far |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in arms["loop"]:
            q = random_serving_at(result["rows"], r["after_batch"])
            sent = (f"{r['sent_to_humans']}/{r['detections']} = {_fmt(r['share_to_humans'], percent=True)}"
                    if r["detections"] else "—")
            agreement = f"{_fmt(r['agreement'], percent=True)} ({r['sampled_answers']})" if r["sampled_answers"] \
                else "—"
            rnd = (f"{q['macro_f1']:.4f} ({q['min']:.4f}–{q['max']:.4f})" if q and q["draws"] > 1
                   else f"{q['macro_f1']:.4f}" if q else "—")
            lines.append(f"| {r['version']} | {r['after_batch']} | {r['streamed']} | {r['human_answers']} | "
                         f"{r['labeled_images']} | {r['macro_f1']:.4f} | {rnd} | "
                         f"{sent} | {agreement} | {r['audit_answers']} | {_fmt(r['server_f1'])} / "
                         f"{_fmt(r.get('production_f1'))} | {r.get('passed_on') or '—'} | {r.get('refused', 0)} |")
        lines.append("")
    if result.get("refusals"):
        lines += ["## Versions the F1 gate refused (the serving version kept serving)", "",
                  "| version | after batch | human answers | test-split F1 | production estimate | "
                  "production estimates, it vs the serving version | held-out macro-F1 | "
                  "serving version's held-out macro-F1 |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['version']} | {r['after_batch']} | {r['human_answers']} | {_fmt(r['server_f1'])} | "
                  f"{_fmt(r['production_f1'])} | {_versus(r.get('versus_serving'))} | {r['macro_f1']:.4f} | "
                  f"{_fmt(r['serving_macro_f1'], 4)} |" for r in result["refusals"]]
        lines.append("")
    if "full" in arms:
        lines += ["## Full supervision", "", "| version | after batch | human answers | macro-F1 |",
                  "|---|---|---|---|"]
        lines += [f"| {r['version']} | {r['after_batch']} | {r['human_answers']} | {r['macro_f1']:.4f} |"
                  for r in arms["full"]]
        lines.append("")
    timings = ", ".join(f"{arm} {seconds:.0f} s" for arm, seconds in result.get("timings_s", {}).items())
    mode = ("one after another" if result["settings"].get("sequential", True)
            else "loop and full side by side, then the random draws side by side")
    lines += [f"Wall time ({mode}): {timings}.", ""]
    return "\n".join(lines)


def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


GRID, SPREAD, TEXT = (232, 232, 232), (150, 190, 225), (80, 80, 80)


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], x_range: tuple[float, float, float],
           y_range: tuple[float, float, float], curves: dict[str, list[tuple[float, float]]],
           spread: list[tuple[float, float, float]], target: float | None, allowance: float | None,
           title: str) -> None:
    """One chart in `box` (left, top, right, bottom): grid, ticks, target line, 30 % line, curves."""
    left, top, right, bottom = box
    (x0, x1, xs), (y0, y1, ys) = x_range, y_range
    small = _font(13)

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * (x - x0) / (x1 - x0), bottom - (bottom - top) * (y - y0) / (y1 - y0)

    def inside(x: float, y: float) -> bool:
        return x0 <= x <= x1 and y0 <= y <= y1

    y = y0
    while y <= y1 + 1e-9:
        draw.line([xy(x0, y), xy(x1, y)], fill=GRID)
        draw.text((left - 6, xy(x0, y)[1]), f"{y:.2f}", fill="black", font=small, anchor="rm")
        y += ys
    x = x0
    while x <= x1 + 1e-9:
        draw.line([xy(x, y0), xy(x, y1)], fill=GRID)
        draw.text((xy(x, y0)[0], bottom + 6), f"{x:.0f}", fill="black", font=small, anchor="mt")
        x += xs
    if target is not None and y0 <= target <= y1:
        draw.line([xy(x0, target), xy(x1, target)], fill=(110, 110, 110), width=1)
        draw.text((left + 6, xy(x0, target)[1] - 3), f"target: full - 0.02 = {target:.3f}", fill=TEXT,
                  font=small, anchor="lb")
    if allowance is not None and x0 < allowance < x1:
        for k in range(0, 100, 4):  # dashed: the 30 % label budget
            a, b = y0 + (y1 - y0) * k / 100, y0 + (y1 - y0) * (k + 2) / 100
            draw.line([xy(allowance, a), xy(allowance, b)], fill=(110, 110, 110))
        ax = xy(allowance, y1)[0]
        near_right = ax > right - 160
        draw.text((ax - 4 if near_right else ax + 4, top + 4), "30 % of full's labels", fill=TEXT, font=small,
                  anchor="ra" if near_right else "la")
    for x, low, high in spread:
        if inside(x, low) and inside(x, high):
            px, py0 = xy(x, low)
            _, py1 = xy(x, high)
            for a, b in (((px, py0), (px, py1)), ((px - 4, py0), (px + 4, py0)), ((px - 4, py1), (px + 4, py1))):
                draw.line([a, b], fill=SPREAD, width=2)
    for arm in ("full", "random", "loop"):
        points = [xy(x, y) for x, y in curves.get(arm, []) if inside(x, y)]
        if len(points) > 1:
            draw.line(points, fill=COLOURS[arm], width=3, joint="curve")
        for px, py in points:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=COLOURS[arm])
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, top - 8), title, fill="black", font=_font(15), anchor="mb")


def plot(result: dict[str, Any], path: Path) -> None:
    """Macro-F1 (held-out) against human answers: every budget on the left, the loop's budgets zoomed right."""
    arms, v, s = by_arm(result["rows"]), verdict(result), result["settings"]
    random = sorted(random_by_batch(result["rows"]).values(), key=lambda r: r["after_batch"])
    curves = {arm: [(r["human_answers"], r["macro_f1"]) for r in arms[arm]] for arm in ("loop", "full") if arm in arms}
    curves["random"] = [(r["human_answers"], r["macro_f1"]) for r in random]
    spread = [(r["human_answers"], r["min"], r["max"]) for r in random if r["draws"] > 1]
    target = v.get("target_f1")
    allowance = BUDGET_SHARE * v["full_labels"] - s["initial"] if "full_labels" in v else None
    width, height = 1400, 640
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    every = [y for c in curves.values() for _, y in c]
    x_all = max(x for c in curves.values() for x, _ in c)
    x_all = 100 * ((int(x_all) + 99) // 100)
    y_low = int(10 * max(0.0, min(every) - 0.05)) / 10
    _panel(draw, (80, 70, 640, 500), (0, x_all, 200 if x_all > 1000 else 100), (y_low, 1.0, 0.1), curves, spread,
           target, allowance, "every budget")
    loop_max = max([x for x, _ in curves.get("loop", [])] + [allowance or 0])
    zoom_x = 50 * ((int(loop_max) + 49) // 50) + 50
    zoom_y0 = 0.80
    _panel(draw, (760, 70, 1370, 500), (0, zoom_x, 50), (zoom_y0, 1.0, 0.02), curves, spread, target, allowance,
           f"zoom: up to {zoom_x} answers, macro-F1 from {zoom_y0:.2f}")
    font, small = _font(16), _font(13)
    draw.text((width / 2, 18), "labelloop on load_digits: held-out macro-F1 of each serving version", fill="black",
              font=_font(20), anchor="mt")
    for centre in (360, 1065):
        draw.text((centre, 530), "human answers (labels given by the reviewer)", fill="black", font=font,
                  anchor="mt")
    label = Image.new("RGB", (200, 24), "white")
    ImageDraw.Draw(label).text((100, 12), "macro-F1 (held-out)", fill="black", font=font, anchor="mm")
    rotated = label.rotate(90, expand=True)
    image.paste(rotated, (8, 285 - rotated.height // 2))
    image.paste(rotated, (690, 285 - rotated.height // 2))
    x = 80
    for arm in ("loop", "random", "full"):
        if not curves.get(arm):
            continue
        draw.line([(x, 578), (x + 30, 578)], fill=COLOURS[arm], width=3)
        draw.text((x + 38, 578), NAMES[arm], fill="black", font=small, anchor="lm")
        x += 60 + draw.textlength(NAMES[arm], font=small)
    options = "on" if s.get("training") == "recommended" else "off (the seed training)"
    draw.text((80, 602), f"{s['holdout']} held-out images; 2 initial labels per digit; {s['streamed']} streamed in "
              f"batches of {s['batch_size']}; retraining at >= 20 new labels; Minimum-Label-Detection-Confidence "
              f"{s['threshold'] if s['threshold'] is not None else 70}; reviewer error rate {s['error_rate']}; "
              f"seed {s['seed']}", fill=TEXT, font=small)
    draw.text((80, 620), f"Train-Final-Model-On-All-Images and Balance-Labels-In-Training {options}; "
              f"{_gate(s)}; random selection: {s.get('random_draws', 1)} draw(s)", fill=TEXT, font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write(result: dict[str, Any], folder: Path, stem: str = "loop_simulation",
          before: dict[str, Any] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.md").write_text(table(result, before))
    plot(result, folder / f"{stem}.png")


def seeds_summary(results: list[dict[str, Any]]) -> str:
    """Across runs of several seeds (issue 19: claims over ≥ 5 seeds), per batch: the loop's human answers and
    macro-F1 and its margin over random at the same budget, as median and min–max over the seeds; then how
    many seeds beat random at every budget."""
    by_batch: dict[int, list[tuple[int, float, float]]] = {}
    everywhere = 0
    for result in results:
        everywhere += bool(verdict(result).get("beats_random_everywhere"))
        for row in by_arm(result["rows"]).get("loop", []):
            other = random_serving_at(result["rows"], row["after_batch"])
            if row["human_answers"] and other is not None:
                by_batch.setdefault(row["after_batch"], []).append(
                    (row["human_answers"], row["macro_f1"], row["macro_f1"] - other["macro_f1"]))

    def spread(values: list[float], fmt: str) -> str:
        ordered = sorted(values)
        middle = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
        return f"{middle:{fmt}} ({ordered[0]:{fmt}} … {ordered[-1]:{fmt}})"

    seeds = ", ".join(str(r["settings"]["seed"]) for r in results)
    lines = [f"Seeds {seeds}: median (min … max) over the seeds.", "",
             "| after batch | seeds | human answers | loop macro-F1 | loop − random at the same budget |",
             "|---|---|---|---|---|"]
    for batch, found in sorted(by_batch.items()):
        answers, f1, margin = zip(*found, strict=True)
        lines.append(f"| {batch} | {len(found)} | {spread(list(answers), '.0f')} | {spread(list(f1), '.4f')} | "
                     f"{spread(list(margin), '+.4f')} |")
    lines += ["", f"Loop ahead of random at every budget in {everywhere} of {len(results)} seeds."]
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    print(seeds_summary([json.loads(Path(p).read_text()) for p in sys.argv[1:]]))
