"""Does the loop improve the model per human answer? Three arms through a real `labelloop serve` each.

    .venv/bin/python -m bench.loop_simulation [--batch-size 50] [--error-rate 0] [--seed 0] [--publish]

Data: scikit-learn's load_digits (1,797 handwritten digits, 10 labels) rendered as 64×64 PNGs. A fixed,
stratified, seeded 30 % is held out for scoring; of the rest, 2 images per label are the initial training set
and the others arrive in batches, in a seeded random order.

Each arm is its own server (own home, database and bucket; the embedding cache is shared, which changes no
result — it is keyed by image content). Parameters: Minimum-Untrained-Images = 20; Minimum-F1-Score = 0 for
v1 (with one test image per label its own F1 is noise, and a gate that refused v1 would leave nothing serving:
the operator's bootstrap), then --minimum-f1 (default 0.8, the product's default) for the loop arm, so the loop
runs under the F1 gate as a user runs it; the baselines stay ungated (they measure what the labels are worth);
Train-Final-Model-On-All-Images = true and Balance-Labels-In-Training = true, their defaults
(--training seed sets both false: the seed's training, on the 80 % split with every image weighing the same),
and everything else at its default (Minimum-Label-Detection-Confidence 70).

Deterministic: one seed gives one table (issue 19). Training is deterministic (tests/modeling/test_determinism.py),
each step waits for what it started (the training check for its run, each detection for its run, answers for
their copies), and the images that human sampling will pick are uploaded alone (`Arm.detect_in_order`).

* **loop** — the product as a user runs it: every batch is uploaded to images_for_detection/; the serving
  version detects it and opens a human loop for each detection below Minimum-Label-Detection-Confidence; the
  simulated reviewer answers every open loop with the true label (wrong, uniformly, with --error-rate), which
  copies the image into images_labeled_by_folder/<label>/. Human sampling is on
  (Human-Sampling-Interval = --sampling-interval); `POST /sampling/run` after each batch, sampled loops answered
  too (audit answers: they never become training data, so they are counted apart from the label budget).
* **random** — same budget, random selection: after batch i the human labels as many randomly chosen images of
  batch i as the loop sent to humans in batch i, uploaded straight to images_labeled_by_folder/<label>/.
  One random draw is noisy at small budgets (measured: ±0.03 macro-F1 between draws at 33 labels), so it runs
  --random-draws times (each its own server) and the loop is compared with their mean.
* **full** — full supervision, the ceiling: every streamed image is labeled.

After every batch each arm runs `POST /training/check`; after each new serving version it records the human
answers so far, macro-F1 of that version on the held-out images (scored with the version's exported ONNX
file, see scoring.py), the share of the batch's detections sent to humans, and the human-sampling agreement.
Outputs: bench/out/loop_simulation/NAME.{json,md,png}, NAME = loop_simulation plus every setting that is not
the default (`loop_simulation-seed-training` for --training seed, `…-error-rate-0.1`, …), so no run overwrites
another. The recommended run's table also summarises the --training seed run of the same settings when there
is one. --publish writes the table and plot to docs/loop_simulation.{md,png}, the files the README shows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np

from labelloop.loop.routing import upload_summary

from .data import ROOT, Digit, Plan, make_plan
from .scoring import HoldoutScorer

sys.path.insert(0, str(ROOT / "tests"))
from conftest import Server, server_env, wait_until

OUT = ROOT / "bench" / "out" / "loop_simulation"
DOCS = ROOT / "docs"
LABELED = "images_labeled_by_folder"
DETECT = "images_for_detection"
NONE_OF_THE_ABOVE = "None of the Above"


@dataclass
class Row:
    """One new serving version of one arm."""

    arm: str
    version: str
    after_batch: int
    streamed: int
    human_answers: int  # labels given by humans so far (the budget); excludes the initial 2 per label
    labeled_images: int  # everything in images_labeled_by_folder/
    macro_f1: float
    accuracy: float
    server_f1: float | None  # the version's own F1 on its 20 % test split, as the server reports it
    audit_answers: int = 0  # answers to human-sampling loops so far (not training data)
    production_f1: float | None = None  # the F1 gate's production estimate for this version (None: too few answers)
    refused: int = 0  # versions the F1 gate refused so far in this arm
    passed_on: str | None = None  # which of the F1 gate's measures let this version deploy
    detections: int | None = None  # detections since the previous version (loop arm)
    sent_to_humans: int | None = None
    share_to_humans: float | None = None
    sampled_answers: int | None = None  # sampled detections answered since the previous version
    agreement: float | None = None  # of those, share where the human agreed with the model
    agreement_overall: float | None = None  # GET /sampling/summary
    elapsed_s: float = 0.0
    draw: int | None = None  # random arm: which draw


@dataclass
class Reviewer:
    """Answers with the true label; with probability `error_rate` with another label, uniformly."""

    labels: list[str]
    error_rate: float
    seed: int
    mistakes: int = 0
    answers: int = 0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def answer(self, truth: str) -> str:
        self.answers += 1
        if self.error_rate and self.rng.random() < self.error_rate:
            self.mistakes += 1
            others = [label for label in self.labels if label != truth]
            return others[int(self.rng.integers(len(others)))]
        return truth


class Arm:
    """One server and its measurements."""

    def __init__(self, name: str, plan: Plan, scorer: HoldoutScorer, args: argparse.Namespace, draw: int = 0):
        self.name, self.plan, self.scorer, self.args, self.draw = name, plan, scorer, args, draw
        folder = name if name != "random" else f"random-{draw}"
        home = OUT / "homes" / stem(args) / folder  # per run: runs of several seeds may go side by side
        shutil.rmtree(home, ignore_errors=True)
        (home.parent / f"{folder}-server.log").unlink(missing_ok=True)
        env = server_env(LABELLOOP_CACHE_FOLDER=str(OUT / "cache"), LABELLOOP_LOG_LEVEL="WARNING")
        self.server = Server(home=home, env=env)
        self.reviewer = Reviewer(plan.labels, args.error_rate,
                                 args.seed + {"loop": 1, "random": 2, "full": 3}[name] + 10 * draw)
        self.rows: list[Row] = []
        self.human_answers = 0
        self.audit_answers = 0
        self.refused = 0
        self.refusals: list[dict[str, Any]] = []
        self.labeled = 0
        self.started = time.perf_counter()
        self.truth: dict[str, str] = {}
        self.detections_made = 0  # images uploaded for detection so far (the sampling interval counts them)

    # ── plumbing ──────────────────────────────────────────────────────────

    def __enter__(self) -> Arm:
        self.server.start(timeout=120)
        self.api = self.server.client()
        self.api.timeout = httpx.Timeout(300)
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.close()
        self.server.stop()

    def log(self, message: str) -> None:
        name = self.name if self.name != "random" else f"random-{self.draw}"
        print(f"[{time.perf_counter() - self.started:6.1f}s] {name}: {message}", flush=True)

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        def put(item: tuple[str, bytes]) -> None:
            response = self.api.put(f"/objects/{item[0]}", content=item[1])
            assert response.status_code == 201, response.text

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(put, items))

    def set_parameter(self, name: str, value: str) -> None:
        response = self.api.put(f"/parameters/{name}", json={"value": value})
        assert response.status_code == 200, response.text

    def label(self, digits: list[Digit], prefix: str) -> None:
        """The simulated human labels these images and they go straight into the labeled folder."""
        items = [(f"{LABELED}/{self.reviewer.answer(d.label)}/{prefix}-{d.name}", d.png) for d in digits]
        self.put_many(items)
        self.labeled += len(items)

    def wait_labeled(self) -> None:
        def count() -> bool:
            listed = self.api.get("/objects", params={"prefix": f"{LABELED}/"}).json()
            return len(listed) >= self.labeled

        wait_until(count, 300, 0.25, f"{self.labeled} labeled images")

    # ── training ──────────────────────────────────────────────────────────

    def setup(self) -> None:
        for name, value in (("Minimum-Untrained-Images", "20"), ("Minimum-F1-Score", "0")):
            self.set_parameter(name, value)
        options = "true" if self.args.training == "recommended" else "false"
        self.set_parameter("Train-Final-Model-On-All-Images", options)
        self.set_parameter("Balance-Labels-In-Training", options)
        if self.name == "loop":
            self.set_parameter("Human-Sampling-Interval", str(self.args.sampling_interval))
            if self.args.threshold is not None:
                self.set_parameter("Minimum-Label-Detection-Confidence", str(self.args.threshold))
        self.label(self.plan.seed_set, "initial")
        self.wait_labeled()
        self.reviewer.answers = 0  # the initial set is the operator's, not part of the human budget
        if not self.train(after_batch=0, streamed=0):
            raise RuntimeError(f"{self.name}: the initial training did not deploy a version")
        if self.name == "loop":  # v1 is the operator's bootstrap; from now on the gate is the user's
            self.set_parameter("Minimum-F1-Score", f"{self.args.minimum_f1:g}")

    def train(self, after_batch: int, streamed: int, window: dict[str, Any] | None = None) -> bool:
        """Run the training check; on a new serving version, score it and record a row."""
        started = time.perf_counter()
        run_id = self.api.post("/training/check").json()["run_id"]
        run = self.server.wait_run(run_id, timeout=900)
        output = run.get("output") or {}
        if run["status"] != "SUCCESS":
            raise RuntimeError(f"{self.name}: training check {run_id} ended {run['status']}: {run}")
        if not output.get("train"):
            return False
        version = output["version"]
        model = self.api.get(f"/models/{version}").json()
        gate = model["evaluation"].get("gate")  # a version whose training failed never reached the gate
        if model["status"] == "TRAINING_FAILED" and model["f1"] is not None:  # refused by the F1 gate
            self.refused += 1
            score = self.score(version)
            self.refusals.append({"version": version, "after_batch": after_batch, "human_answers": self.human_answers,
                                  "macro_f1": round(score.macro_f1, 4), "server_f1": round(model["f1"], 4),
                                  "production_f1": gate["production_estimate"]["f1"],
                                  "versus_serving": gate["versus_serving"],
                                  "serving_macro_f1": self.rows[-1].macro_f1 if self.rows else None})
        if model["status"] != "RUNNING":
            self.log(f"{version} is {model['status']} ({model['status_message']}); not serving")
            return False
        trained_s = time.perf_counter() - started
        score = self.score(version)
        row = Row(arm=self.name, version=version, after_batch=after_batch, streamed=streamed,
                  human_answers=self.human_answers, labeled_images=model["image_count"],
                  macro_f1=round(score.macro_f1, 4), accuracy=round(score.accuracy, 4),
                  server_f1=round(model["f1"], 4) if model["f1"] is not None else None,
                  audit_answers=self.audit_answers, refused=self.refused,
                  production_f1=gate["production_estimate"]["f1"], passed_on=gate["passed_on"],
                  elapsed_s=round(time.perf_counter() - self.started, 1),
                  draw=self.draw if self.name == "random" else None, **(window or {}))
        self.rows.append(row)
        self.log(f"{version}: {row.human_answers} human labels, {row.labeled_images} images, held-out macro-F1 "
                 f"{row.macro_f1:.4f} (server's own {row.server_f1}); trained+deployed in {trained_s:.1f}s")
        return True

    def score(self, version: str) -> Any:
        """The version's exported ONNX model on the held-out images."""
        exported = self.api.get(f"/models/{version}/export", params={"format": "onnx"}, timeout=300)
        return self.scorer.score(version, exported.content)

    # ── the loop arm ──────────────────────────────────────────────────────

    def detect(self, items: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """Upload images for detection side by side and wait until each one's run has ended (its detection
        logged and its human loop, if any, opened); returns the runs' outputs."""
        if not items:
            return []
        with ThreadPoolExecutor(4) as pool:
            stored = list(pool.map(lambda item: self.api.put(f"/objects/{item[0]}", content=item[1]), items))
        runs = []
        for response in stored:
            assert response.status_code == 201, response.text
            info = response.json()
            runs.append((info["key"], self.server.wait_run(info["run_id"], timeout=600)))
        return [upload_summary(run.get("output"), key) for key, run in runs]

    def detect_in_order(self, items: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """Detect a batch so that human sampling picks the same images in every run of a seed.

        Sampling marks every N-th detection in detection order (N = Human-Sampling-Interval), and images
        uploaded together are detected in whatever order the workers reach them; so each image that will be
        an N-th detection is uploaded alone, after the images before it were detected and before those after
        it. The others go side by side (their order within a chunk changes nothing).
        """
        events, chunk = [], []
        for item in items:
            self.detections_made += 1
            if self.detections_made % self.args.sampling_interval == 0:
                events += self.detect(chunk) + self.detect([item])
                chunk = []
            else:
                chunk.append(item)
        return events + self.detect(chunk)

    def answer_open(self, source: str) -> int:
        loops = self.api.get("/human-loops", params={"status": "InProgress", "source": source,
                                                     "limit": 5000}).json()
        for loop in loops:
            answer = self.reviewer.answer(self.truth[loop["object_key"]])
            response = self.api.post(f"/human-loops/{loop['name']}/answer", json={"label": answer})
            assert response.status_code == 200, response.text
        return len(loops)

    def loop_batch(self, number: int, batch: list[Digit], streamed: int, window: dict[str, Any]) -> int:
        keys = [f"{DETECT}/{d.name}" for d in batch]
        self.truth.update({key: d.label for key, d in zip(keys, batch, strict=True)})
        events = self.detect_in_order([(key, d.png) for key, d in zip(keys, batch, strict=True)])
        sent = self.answer_open("Detection")
        self.human_answers += sent
        self.labeled += sent
        sampling = self.server.wait_run(self.api.post("/sampling/run").json()["run_id"])
        audited = self.answer_open("Human Sampling")
        self.audit_answers += audited
        self.wait_labeled()
        window["detections"] += len(events)
        window["sent_to_humans"] += sent
        self.log(f"batch {number}: {len(events)} detected by {events[0]['model_version']}, {sent} sent to humans, "
                 f"{len(sampling['output'].get('opened', []))} sampled")
        return sent

    def window_stats(self, window: dict[str, Any], since_event: int) -> dict[str, Any]:
        events = self.api.get("/detections", params={"limit": 100000, "sampled": True, "answered": True}).json()
        recent = [e for e in events if e["id"] > since_event]
        agree = sum(e["label"] == e["human_label"] for e in recent)
        overall = self.api.get("/sampling/summary").json()["agreement_rate"]
        return {"detections": window["detections"], "sent_to_humans": window["sent_to_humans"],
                "share_to_humans": round(window["sent_to_humans"] / window["detections"], 4)
                if window["detections"] else None,
                "sampled_answers": len(recent), "agreement": round(agree / len(recent), 4) if recent else None,
                "agreement_overall": round(overall, 4) if overall is not None else None}

    def last_event_id(self) -> int:
        events = self.api.get("/detections", params={"limit": 1}).json()
        return events[0]["id"] if events else 0

    def run_loop(self) -> list[int]:
        """Stream every batch through detection; the loop's answers per batch are the random arm's budget."""
        per_batch, streamed = [], 0
        window, since = {"detections": 0, "sent_to_humans": 0}, 0
        for number, batch in enumerate(self.plan.batches, 1):
            streamed += len(batch)
            per_batch.append(self.loop_batch(number, batch, streamed, window))
            stats = self.window_stats(window, since)
            last = self.last_event_id()
            if self.train(number, streamed, stats):
                window, since = {"detections": 0, "sent_to_humans": 0}, last
        return per_batch

    # ── the baselines ─────────────────────────────────────────────────────

    def run_labeling(self, budget: list[int] | None) -> None:
        """random (budget per batch) or full supervision (budget None: everything)."""
        rng = np.random.default_rng(self.args.seed + 100 + self.draw)
        streamed = 0
        for number, batch in enumerate(self.plan.batches, 1):
            streamed += len(batch)
            n = len(batch) if budget is None else budget[number - 1]
            chosen = [batch[i] for i in sorted(rng.choice(len(batch), n, replace=False))] if n else []
            if chosen:
                self.label(chosen, self.name)
                self.human_answers += len(chosen)
                self.wait_labeled()
            self.train(number, streamed)


def run(args: argparse.Namespace) -> dict[str, Any]:
    OUT.mkdir(parents=True, exist_ok=True)
    plan = make_plan(seed=args.seed, batch_size=args.batch_size)
    if args.limit_batches:
        plan.stream = plan.stream[:args.limit_batches * args.batch_size]
    scorer = HoldoutScorer(plan.holdout)
    print(f"load_digits: {len(plan.holdout)} held out, {len(plan.seed_set)} initial, {len(plan.stream)} streamed "
          f"in {len(plan.batches)} batches of {args.batch_size}", flush=True)
    timings: dict[str, float] = {}
    budget: list[int] | None = None
    began = time.perf_counter()

    def one(name: str, draw: int = 0) -> list[dict[str, Any]]:
        nonlocal budget
        started = time.perf_counter()
        with Arm(name, plan, scorer, args, draw) as arm:
            arm.setup()
            if name == "loop":
                budget = arm.run_loop()
            elif name == "random":
                arm.run_labeling(budget)
            else:
                arm.run_labeling(None)
            if arm.reviewer.mistakes:
                arm.log(f"reviewer mistakes: {arm.reviewer.mistakes} of {arm.reviewer.answers} answers")
        label = name if name != "random" else f"random-{draw}"
        timings[label] = round(time.perf_counter() - started, 1)
        refusals.extend({"arm": label, **refusal} for refusal in arm.refusals)
        print(f"{label}: {timings[label]}s", flush=True)
        return [asdict(r) for r in arm.rows]

    if "random" in args.arms and "loop" not in args.arms:
        raise SystemExit("the random arm needs the loop arm's budget: run --arms loop random …")
    # Phase 1: the loop and full supervision (independent); phase 2: the random draws (they need the loop's
    # budget). Each arm is its own server; run side by side they overlap one's waiting with another's work.
    phases = [[(name, 0) for name in ("loop", "full") if name in args.arms],
              [("random", draw) for draw in range(args.random_draws)] if "random" in args.arms else []]
    rows: list[dict[str, Any]] = []
    refusals: list[dict[str, Any]] = []
    for phase in phases:
        if args.sequential:
            rows += [row for name, draw in phase for row in one(name, draw)]
        else:
            with ThreadPoolExecutor(max(1, len(phase))) as pool:
                rows += [row for found in pool.map(lambda job: one(*job), phase) for row in found]
    timings["all arms"] = round(time.perf_counter() - began, 1)
    order = {"loop": 0, "random": 1, "full": 2}
    rows.sort(key=lambda r: (order[r["arm"]], r.get("draw") or 0, r["after_batch"]))
    result = {"settings": {"seed": args.seed, "batch_size": args.batch_size, "error_rate": args.error_rate,
                           "training": args.training, "random_draws": args.random_draws,
                           "sequential": args.sequential,
                           "sampling_interval": args.sampling_interval, "threshold": args.threshold,
                           "minimum_f1": args.minimum_f1,
                           "holdout": len(plan.holdout), "initial": len(plan.seed_set), "streamed": len(plan.stream),
                           "minimum_untrained_images": 20},
              "timings_s": timings, "rows": rows, "refusals": refusals}
    (OUT / f"{stem(args)}.json").write_text(json.dumps(result, indent=1))
    return result


def stem(args: argparse.Namespace, training: str | None = None) -> str:
    """Output name: loop_simulation, plus every setting that differs from the defaults (so runs never clobber)."""
    parts = []
    if (training or args.training) == "seed":
        parts.append("seed-training")
    for name, default in (("error_rate", 0.0), ("threshold", None), ("seed", 0), ("batch_size", 50),
                          ("sampling_interval", 20), ("random_draws", 3), ("limit_batches", 0),
                          ("minimum_f1", 0.8)):
        value = getattr(args, name)
        if value != default:
            parts.append(f"{name.replace('_', '-')}-{value:g}")
    return "-".join(["loop_simulation", *parts])


def main(argv: list[str] | None = None) -> None:
    from . import report

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--error-rate", type=float, default=0.0, help="reviewer's share of wrong answers")
    parser.add_argument("--sampling-interval", type=int, default=20, help="Human-Sampling-Interval")
    parser.add_argument("--threshold", type=float, default=None,
                        help="Minimum-Label-Detection-Confidence (default: the product's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minimum-f1", type=float, default=0.8,
                        help="the loop arm's Minimum-F1-Score once v1 serves (default: the product's default)")
    parser.add_argument("--random-draws", type=int, default=3, help="random-selection runs to average")
    parser.add_argument("--training", choices=["recommended", "seed"], default="recommended",
                        help="recommended: Train-Final-Model-On-All-Images and Balance-Labels-In-Training true "
                             "(their defaults); seed: both false, the seed's training")
    parser.add_argument("--arms", nargs="+", default=["loop", "random", "full"], choices=["loop", "random", "full"])
    parser.add_argument("--limit-batches", type=int, default=0, help="stream only this many batches (smoke runs)")
    parser.add_argument("--sequential", action="store_true", help="one arm at a time (default: side by side)")
    parser.add_argument("--publish", action="store_true", help="also write docs/loop_simulation.{md,png}")
    parser.add_argument("--report-only", action="store_true", help="redraw table and plot from results.json")
    args = parser.parse_args(argv)
    name = stem(args)
    result = json.loads((OUT / f"{name}.json").read_text()) if args.report_only else run(args)
    seed_run = OUT / f"{stem(args, 'seed')}.json"
    before = json.loads(seed_run.read_text()) if args.training == "recommended" and seed_run.exists() else None
    for folder in [OUT] + ([DOCS] if args.publish else []):
        report.write(result, folder, "loop_simulation" if folder == DOCS else name, before)
    print((OUT / f"{name}.md").read_text())
