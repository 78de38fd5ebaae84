"""Label names: one rule for the folders under ``images_labeled_by_folder/``, training, the task template's
extra labels and reviewers' answers, so a label valid in one place is valid in all of them.

A label is NFC-normalised (``café`` typed on macOS, in NFD, is the same label as on Linux); 1-100
characters; none of ``/ \\ : * ? " < > |`` (not allowed in folder names on Windows, or path separators), no
control or invisible formatting characters; it neither starts nor ends with ``.`` (Windows drops a trailing
one, so the folder would change its name); white space around it is removed. Two labels that differ only in letter case
or Unicode normalisation (``Red`` and ``red``) are one label: the second is refused, naming the first.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

MAX_LABEL_LENGTH = 100
MAX_LABEL_BYTES = 255  # a folder name's limit in most file systems and in object keys
FORBIDDEN_CHARACTERS = '/\\:*?"<>|'
RULE = (f"a label has 1-{MAX_LABEL_LENGTH} characters ({MAX_LABEL_BYTES} bytes of UTF-8), none of "
        "/ \\ : * ? \" < > | or control characters, and does not start or end with '.'")


class InvalidLabel(ValueError):
    """A label name that breaks the rule; the message says what was wrong and what is allowed."""


def check_label(name: object) -> str:
    """The label ``name`` stands for, NFC-normalised with surrounding white space removed, or
    :class:`InvalidLabel` saying why it cannot be a label (the one rule every part of labelloop applies)."""
    if not isinstance(name, str):
        raise InvalidLabel(f"a label is text, not {type(name).__name__}")
    label = unicodedata.normalize("NFC", name.strip())
    if not label:
        raise InvalidLabel(f"a label may not be empty: {RULE}")
    if len(label) > MAX_LABEL_LENGTH or len(label.encode()) > MAX_LABEL_BYTES:
        raise InvalidLabel(f"label {label[:20]!r}… is too long ({len(label)} characters, "
                           f"{len(label.encode())} bytes of UTF-8): {RULE}")
    bad = sorted({char for char in label if char in FORBIDDEN_CHARACTERS or _invisible(char)})
    if bad:
        shown = " ".join(char if char.isprintable() else f"U+{ord(char):04X}" for char in bad)
        raise InvalidLabel(f"label {label!r} contains {shown}: {RULE}")
    if label.startswith(".") or label.endswith("."):
        raise InvalidLabel(f"label {label!r} starts or ends with '.': {RULE}")
    return label


def _invisible(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def identity(label: str) -> str:
    """What makes two labels the same one: their NFC form without letter case."""
    return unicodedata.normalize("NFC", label).casefold()


def same_as(label: str, existing: Iterable[str]) -> str | None:
    """The label among ``existing`` that ``label`` differs from only in letter case or Unicode
    normalisation (None when there is none, or when ``label`` is itself among them)."""
    wanted = identity(label)
    for other in existing:
        if other != label and identity(other) == wanted:
            return other
    return None


def check_new_label(name: object, existing: Iterable[str]) -> str:
    """:func:`check_label`, refusing also a label that is an existing one but for case or normalisation
    (``Red`` when ``red`` exists): what an answer, the task template and an upload into a new folder call."""
    label = check_label(name)
    known = list(existing)
    if label in known:
        return label
    twin = same_as(label, known)
    if twin is not None:
        raise InvalidLabel(f"label {label!r} differs from the existing label {twin!r} only in letter case or "
                           f"accents' encoding: use {twin!r}")
    return label
