"""The Parameter Store: definitions, validation, reads and versioned changes."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.db import utcnow
from labelloop.parameters.models import Parameter, ParameterChange

ENABLE_AUTOMATIC_TRAINING = "Enable-Automatic-Training"
TRAINING_POLL_FREQUENCY = "Automatic-Training-Poll-Frequency"
MINIMUM_UNTRAINED_IMAGES = "Minimum-Untrained-Images"
MINIMUM_F1_SCORE = "Minimum-F1-Score"
MINIMUM_INFERENCE_UNITS = "Minimum-Inference-Units"
MINIMUM_LABEL_DETECTION_CONFIDENCE = "Minimum-Label-Detection-Confidence"
ENABLE_A2I_WORKFLOW = "Enable-A2I-Workflow"
ENABLE_AUTOMATIC_HUMAN_SAMPLING = "Enable-Automatic-Human-Sampling"
HUMAN_SAMPLING_FREQUENCY = "Automatic-Human-Sampling-Frequency"
HUMAN_SAMPLING_INTERVAL = "Human-Sampling-Interval"
TRAIN_FINAL_MODEL_ON_ALL_IMAGES = "Train-Final-Model-On-All-Images"
BALANCE_LABELS_IN_TRAINING = "Balance-Labels-In-Training"
USE_LABEL_ASSUMED_THRESHOLDS = "Use-Label-Assumed-Thresholds"
MAXIMUM_SILENT_ERROR_RATE = "Maximum-Silent-Error-Rate"
TRAIN_ON_AUDIT_CORRECTIONS = "Train-On-Audit-Corrections"
AUDIT_TRAINING_SHARE = "Audit-Training-Share"
LEARN_FROM_NONE_OF_THE_ABOVE = "Learn-From-None-Of-The-Above"
QUANTIZE_BACKBONE = "Quantize-Backbone"
MODEL_INPUT_VIEW = "Model-Input-View"
GOLD_TASK_RATE = "Gold-Task-Rate"
MINIMUM_GOLD_ACCURACY = "Minimum-Gold-Accuracy"
MINIMUM_GOLD_ANSWERS = "Minimum-Gold-Answers"
FOR_SYSTEM_USE_ONLY = "For-System-Use-Only"

_INT = re.compile(r"^[+]?\d+$")
_FLOAT = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)$")


class ParameterError(ValueError):
    """A parameter name or value that is not allowed; the message says what is."""


class UnknownParameter(ParameterError):
    """No parameter has this name."""


@dataclass(frozen=True)
class Definition:
    """What a parameter is: its type, allowed range, default and meaning."""

    name: str
    kind: str  # "bool", "int", "float", "choice" (one of `choices`) or "json"
    default: str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    system_only: bool = False
    choices: tuple[str, ...] = ()

    @property
    def allowed(self) -> str:
        """The allowed values in words."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "json":
            return "a JSON object, written by the system only"
        noun = "a whole number" if self.kind == "int" else "a number"
        if self.maximum is None:
            return f"{noun} ≥ {_fmt(self.minimum)}"
        return f"{noun} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"

    def parse(self, raw: str) -> Any:
        """The typed value of an already-validated stored string."""
        if self.kind == "bool":
            return raw == "true"
        if self.kind == "int":
            return int(raw)
        if self.kind == "float":
            return float(raw)
        if self.kind == "choice":
            return raw
        return json.loads(raw or "{}")


def _fmt(number: float | None) -> str:
    if number is None:
        return ""
    return str(int(number)) if float(number).is_integer() else str(number)


DEFINITIONS: dict[str, Definition] = {
    d.name: d
    for d in [
        Definition(ENABLE_AUTOMATIC_TRAINING, "bool", "true",
                   "Check for new training on the schedule; switching it to true checks at once."),
        Definition(TRAINING_POLL_FREQUENCY, "int", "720",
                   "Minutes between scheduled training checks.", minimum=1),
        Definition(MINIMUM_UNTRAINED_IMAGES, "int", "10",
                   "Labeled images that must be added since the last successful training before the next "
                   "training starts. Only images that can train count (not unusable files, not the images of "
                   "labels left out for too few images); a training check never trains again on exactly the "
                   "images the newest version was trained on.", minimum=1),
        Definition(MINIMUM_F1_SCORE, "float", "0.8",
                   "The F1 gate: a new model version is deployed when its F1 on its own test split reaches "
                   "this, or its production estimate does (F1 on human answers: its test images from human "
                   "review and the human-sampling answers, weighted by how much traffic goes to review), or "
                   "it does at least as well as the serving version on answers neither has trained on. "
                   "Otherwise it is TRAINING_FAILED and the serving version keeps serving.",
                   minimum=0.0, maximum=1.0),
        Definition(MINIMUM_INFERENCE_UNITS, "int", "1",
                   "Inference units (backbone sessions sharing one request queue) in each process that serves "
                   "the model.", minimum=1, maximum=64),
        Definition(MINIMUM_LABEL_DETECTION_CONFIDENCE, "float", "70.0",
                   "Detections below this confidence (0-100) go to human review while Enable-A2I-Workflow "
                   "is true.",
                   minimum=0.0, maximum=100.0),
        Definition(ENABLE_A2I_WORKFLOW, "bool", "true",
                   "Create a human loop for detections below the minimum confidence."),
        Definition(ENABLE_AUTOMATIC_HUMAN_SAMPLING, "bool", "true",
                   "Send every Human-Sampling-Interval-th detection to human review on a schedule."),
        Definition(HUMAN_SAMPLING_FREQUENCY, "int", "720",
                   "Minutes between scheduled human sampling runs.", minimum=1),
        Definition(HUMAN_SAMPLING_INTERVAL, "int", "1000",
                   "Every n-th detection since this parameter or Enable-Automatic-Human-Sampling was last "
                   "changed is sampled (forward only, never the detections before).", minimum=1),
        Definition(TRAIN_FINAL_MODEL_ON_ALL_IMAGES, "bool", "true",
                   "After a new version is evaluated on its test split, train it once more on every labeled "
                   "image (training and test split) and deploy that model. The F1 score and per-label metrics "
                   "stay those measured on the test split (a model trained on 80 % of the images), so they "
                   "slightly understate the deployed model. On by default: with human review the images people "
                   "label are the most informative ones, and otherwise a fifth of them only ever test "
                   "(false: deploy the model trained on the training split, as Rekognition does)."),
        Definition(BALANCE_LABELS_IN_TRAINING, "bool", "true",
                   "Weigh every label the same when training, whatever its number of images. On by default: "
                   "human review sends the images the model is unsure of, so some labels get many more images "
                   "than others, and without balance the model learns that skew as a preference."),
        Definition(USE_LABEL_ASSUMED_THRESHOLDS, "bool", "false",
                   "Route a detection to human review when its confidence is below its label's own assumed "
                   "threshold (the confidence at which the label's F1 on the serving version's test split is "
                   "best, shown on the model page) instead of Minimum-Label-Detection-Confidence; labels "
                   "without one use Minimum-Label-Detection-Confidence. Off by default, as the seed routes."),
        Definition(MAXIMUM_SILENT_ERROR_RATE, "float", "5.0",
                   "Of the detections no human reviews (auto-accepted), at most this percentage may be wrong. "
                   "labelloop audits auto-accepted detections as 'Human Sampling' loops (all of a new "
                   "version's first 20, then fewer, 1 in 50 once the 95 % upper bound is at or "
                   "below this target) and, for a label whose audits show it above the target, raises the "
                   "confidence below which its detections go to review ('Detection' loops). Audit answers are "
                   "training data only with Train-On-Audit-Corrections. 0 turns it off: only the seed's rules "
                   "apply.",
                   minimum=0.0, maximum=50.0),
        Definition(TRAIN_ON_AUDIT_CORRECTIONS, "bool", "false",
                   "Copy the answers of 'Human Sampling' loops (audits) that disagree with the model into the "
                   "training data, like answers to 'Detection' loops: the mistakes audits catch are the most "
                   "valuable examples there are. The silent-error estimate stays honest (an audit judges only "
                   "the version that made the detection; the F1 gate leaves out answers about images a "
                   "version trained on). Off by default: audits are never training data."),
        Definition(AUDIT_TRAINING_SHARE, "float", "0.0",
                   "The percentage of 'Human Sampling' answers (audits) that become training data like answers "
                   "to 'Detection' loops, whatever the answer (None of the Above never trains). Which ones is "
                   "drawn by a hash of the detection's request id, never by the answer, so the others stay out "
                   "of the training data for good and every later version's warm-start backtest is still a "
                   "random sample of the audits it did not train on; an audit judges only the version that "
                   "made the detection, which was trained before it. 50 is what the simulation on real photos "
                   "measured (README, Silent errors). 0 by default, as the seed: sampled answers are not "
                   "training data (unless Train-On-Audit-Corrections).",
                   minimum=0.0, maximum=100.0),
        Definition(LEARN_FROM_NONE_OF_THE_ABOVE, "bool", "true",
                   "Keep a copy of each image answered None of the Above on a 'Detection' loop (on a 'Human "
                   "Sampling' one only with Train-On-Audit-Corrections) under images_none_of_the_above/, never "
                   "in images_labeled_by_folder/, and train it as a hidden 'none of the above' class: its "
                   "share lowers every label's confidence on images like it, so the next version sends them to "
                   "review instead of answering them wrong; it is never an answer and never changes one (2 such "
                   "images needed). On by default (fewer silent errors on real photos, bench/loop_simulation/"
                   "negatives.py); off: None of the Above answers add nothing, as in the seed."),
        Definition(QUANTIZE_BACKBONE, "bool", "false",
                   "Train each new version twice: on the backbone's embeddings and on those of an int8 copy of "
                   "the backbone calibrated on the version's own training images; the version serves the int8 "
                   "one (faster detection) when, on its test split, it loses at most half a point of macro-F1 "
                   "and makes no more confident errors. Both results are in the version's evaluation. The copy "
                   "is built at full range on a CPU with VNNI (avx512_vnni or avx_vnni: about twice as fast as "
                   "fp32) and with reduce_range without it (LABELLOOP_INT8_WEIGHTS chooses one for every CPU); "
                   "a worker without VNNI warns when it serves a full-range copy. Off by default: on real photos "
                   "the twin served in fewer than half of the versions, and every training embeds all its images "
                   "a second time and needs about 0.75 GiB more memory (README, Performance 27)."),
        Definition(MODEL_INPUT_VIEW, "choice", "letterbox-fast",
                   "How images are prepared for the model versions trained from now on: letterbox-fast (the whole "
                   "image, long side 224 px, padded with its border's colour, from a JPEG decoded at 1/2 to 1/8 "
                   "scale and a bilinear resize), letterbox (the same picture from a full decode and a bicubic "
                   "resize), crop (the centre 224×224 square, which cuts off the long side's edges, as every "
                   "version before this parameter) or letterbox-draft (as letterbox-fast, decoded down to a long "
                   "side of 196 px: 0.9 ms less CPU for a 427×320 upload, 0.26 on a mix of upload shapes; not the "
                   "default: on real photos its silent errors were 0.37 point higher, README Performance item "
                   "21). Each version keeps the view it was trained on for good "
                   "(GET /models/{version} shows it) and every request it answers is prepared that way. "
                   "letterbox-fast by default: it costs 1.3 ms of CPU per 320-px photo against 2.2 for letterbox "
                   "(5.3 against 12 for a phone photo), and on real photos its macro-F1 is 0.4 point above "
                   "letterbox's on average over six tasks (no task below −0.3), with no more silent errors; the "
                   "head on the letterbox view is 2.1 points of macro-F1 above plain logistic regression on crops "
                   "on average, on the crop 0.7 (README, The model).",
                   choices=("letterbox-fast", "letterbox", "crop", "letterbox-draft")),
        Definition(GOLD_TASK_RATE, "float", "5.0",
                   "The percentage of each reviewer's tasks that are gold tasks (images an operator marked with "
                   "their known label), mixed into the queue while real tasks wait and served like them; the "
                   "answers score the reviewer and never become training data. 5 % by default: nothing is "
                   "served until an operator marks gold tasks, and then 1 task in 20 is a check, enough for "
                   "about 10 gold answers in a 200-task day. 0 turns it off.", minimum=0.0, maximum=50.0),
        Definition(MINIMUM_GOLD_ACCURACY, "float", "0.0",
                   "A reviewer whose accuracy on gold tasks falls below this percentage, once they gave "
                   "Minimum-Gold-Answers gold answers, is paused from review at once (an admin resumes them on "
                   "the Reviewers page). 0, the default, pauses nobody.", minimum=0.0, maximum=100.0),
        Definition(MINIMUM_GOLD_ANSWERS, "int", "20",
                   "Gold answers a reviewer must have given before Minimum-Gold-Accuracy can pause them. 20 by "
                   "default: the reviewer simulation showed 8 gold answers cannot tell a reviewer right 85 % of "
                   "the time from one right 60 % of the time (careful reviewers were paused too).",
                   minimum=1, maximum=10000),
        Definition(FOR_SYSTEM_USE_ONLY, "json", "{}",
                   "State the system keeps between runs (previous_trained_images, serving version).",
                   system_only=True),
    ]
}


def definition(name: str) -> Definition:
    """The definition of ``name``, or :class:`UnknownParameter` listing the known names."""
    try:
        return DEFINITIONS[name]
    except KeyError:
        known = ", ".join(DEFINITIONS)
        raise UnknownParameter(f"no parameter named {name!r}; the parameters are: {known}") from None


def validate(name: str, raw: object) -> str:
    """Check ``raw`` against the parameter's type and range and return the value as stored.

    Raises :class:`ParameterError` with a message saying what was wrong and what is allowed.
    """
    spec = definition(name)
    text = str(raw).strip() if raw is not None else ""
    problem = f"{name} must be {spec.allowed}; got {str(raw)[:80]!r}"
    if spec.kind == "bool":
        if text.lower() not in ("true", "false"):
            raise ParameterError(problem)
        return text.lower()
    if spec.kind == "choice":
        if text.lower() not in spec.choices:
            raise ParameterError(problem)
        return text.lower()
    if spec.kind == "json":
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ParameterError(f"{name} must be a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise ParameterError(f"{name} must be a JSON object")
        return json.dumps(value, sort_keys=True)
    pattern = _INT if spec.kind == "int" else _FLOAT
    if not pattern.match(text):
        raise ParameterError(problem)
    number = float(text)
    if not math.isfinite(number) or (spec.minimum is not None and number < spec.minimum) or (
        spec.maximum is not None and number > spec.maximum
    ):
        raise ParameterError(problem)
    return str(int(text)) if spec.kind == "int" else repr(float(text))


def ensure_defaults(*, session: Session) -> int:
    """Create every parameter that does not exist yet with its default; returns how many were created."""
    existing = set(session.scalars(select(Parameter.name)))
    missing = [spec for name, spec in DEFINITIONS.items() if name not in existing]
    for spec in missing:
        session.add(Parameter(name=spec.name, value=spec.default, version=1, modified_by="system"))
        session.add(ParameterChange(name=spec.name, version=1, old_value=None, new_value=spec.default,
                               changed_by="system"))
    session.flush()
    return len(missing)


def get(name: str, *, session: Session) -> Parameter:
    """The stored parameter ``name``."""
    definition(name)
    row = session.get(Parameter, name)
    if row is None:
        raise UnknownParameter(f"parameter {name!r} has not been created yet; start the server once")
    return row


def value(name: str, *, session: Session) -> Any:
    """The typed current value of ``name`` (bool, int, float or dict)."""
    return definition(name).parse(get(name, session=session).value)


VALUES = select(Parameter.__table__.c.name, Parameter.__table__.c.value)  # built once: every batch reads them


def values(*, session: Session) -> dict[str, Any]:
    """Every parameter's typed current value."""
    # Two columns, not ORM rows: every detection reads these, and loading whole rows (their dates converted,
    # each tracked by the session) was 5 % of the upload pipeline's CPU.
    rows = session.execute(VALUES).all()
    return {name: DEFINITIONS[name].parse(value) for name, value in rows if name in DEFINITIONS}


def list_all(*, session: Session) -> list[Parameter]:
    """Every parameter in definition order."""
    rows = {row.name: row for row in session.scalars(select(Parameter))}
    return [rows[name] for name in DEFINITIONS if name in rows]


def change(name: str, raw: object, *, session: Session, changed_by: str,
           system: bool = False) -> ParameterChange | None:
    """Validate and store a new value of ``name``; returns the change, or ``None`` when the value is the same.

    ``For-System-Use-Only`` can only be written with ``system=True``.
    """
    spec = definition(name)
    if spec.system_only and not system:
        raise ParameterError(f"{name} is written by the system only")
    new_value = validate(name, raw)
    row = get(name, session=session)
    if row.value == new_value:
        return None
    old_value = row.value
    row.value = new_value
    row.version += 1
    row.last_modified = utcnow()
    row.modified_by = changed_by
    record = ParameterChange(name=name, version=row.version, old_value=old_value, new_value=new_value,
                             changed_by=changed_by, changed_at=row.last_modified)
    session.add(record)
    session.flush()
    return record


def history(name: str | None = None, limit: int = 200, *, session: Session,
            include_system: bool = True) -> list[ParameterChange]:
    """Changes, newest first, of one parameter or of all (``include_system=False``: not the system's own
    For-System-Use-Only state)."""
    query = select(ParameterChange).order_by(ParameterChange.id.desc()).limit(limit)
    if not include_system:
        query = query.where(ParameterChange.name != FOR_SYSTEM_USE_ONLY)
    if name is not None:
        definition(name)
        query = query.where(ParameterChange.name == name)
    return list(session.scalars(query))


def system_state(*, session: Session) -> dict[str, Any]:
    """The ``For-System-Use-Only`` object."""
    return value(FOR_SYSTEM_USE_ONLY, session=session)


def update_system_state(*, session: Session, **updates: Any) -> dict[str, Any]:
    """Merge ``updates`` into ``For-System-Use-Only`` and store it as a system change."""
    state = system_state(session=session)
    state.update(updates)
    change(FOR_SYSTEM_USE_ONLY, json.dumps(state, sort_keys=True), changed_by="system", system=True, session=session)
    return state


def describe(row: Parameter) -> dict[str, Any]:
    """A parameter row with its definition, as the API and pages show it."""
    spec = DEFINITIONS[row.name]
    return {
        "name": row.name, "value": row.value, "type": spec.kind, "allowed": spec.allowed,
        "description": spec.description, "default": None if spec.system_only else spec.default,
        "version": row.version, "last_modified": row.last_modified, "modified_by": row.modified_by,
    }
