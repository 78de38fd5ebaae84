"""The benchmark's images: real logos (Debian icon themes), real object photos (Tux Paint's photo stamps) and
real scenes (Debian wallpapers that are photographs), each as a task with known labels and an open set.

Every image is made deterministically from installed Debian files (`make bench-data` installs them), so two
runs see the same bytes. Licences: README.md beside this file.

* **logos**: an application's icon as drawn by different icon themes is one label (Papirus, Moka, Faenza,
  Numix-Circle, Oxygen, Breeze, Suru, MATE, GNOME, elementary, Adwaita, hicolor). Names that one theme draws
  with the same file in at least two themes are one application (aliases such as `inkscape` and
  `org.inkscape.Inkscape`); freedesktop's generic names (`preferences-…`, `utilities-…`, …) are left out, as
  they are not one application's logo. Applications drawn by ≥ 6 themes: a seeded half are the known labels (up
  to 5 themes train, the others test); the other half, and every application drawn by 3–5 themes, are the
  open set (one drawing each; applications never trained on).
* **objects**: Tux Paint's photographic stamps (cut-out photos on transparent ground, composited on white);
  known labels mammal, bird, fruit, flower, vegetable; open set: the other photographic stamp folders
  (household things, tools, hats, instruments, fish, insects, trees, planets …); cartoon folders are left out.
* **scenes**: hand-picked wallpapers that are photographs (`SCENE_PHOTOS`); the label is the photo: train on
  crops from its left 65 %, test on crops from its right 35 % (no pixel in both); a seeded half of the photos
  are never trained on and give the open set.
* **pasted** variants (harder): each test and open-set logo or object pasted at an angle (±35°) and a random
  scale onto a crop of a scene photo.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "out" / "real_images"
DATA_VERSION = "2"
ICONS = Path("/usr/share/icons")
THEMES = ("Papirus", "Moka", "Faenza", "Numix-Circle", "oxygen", "breeze", "suru", "mate", "gnome", "elementary",
          "Adwaita", "hicolor")
STAMPS = Path("/usr/share/tuxpaint/stamps")
OBJECT_LABELS = {"animals/mammals": "mammal", "animals/birds": "bird", "food/fruit": "fruit",
                 "plants/flowers": "flower", "food/vegetables": "vegetable"}
# Stamp folders that are drawings, not photographs: never used.
DRAWN_STAMPS = ("cartoon", "symbols", "town", "seasonal", "people", "naturalforces", "medical")
# Open-set folders that hold kinds of a known label (eggplant, lettuce: vegetables; marsupials: mammals).
AMBIGUOUS_STAMPS = ("plants", "food", "animals/marsupials")
SCENE_PHOTOS = (
    "/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg", "/usr/share/backgrounds/Dragonfly_by_Bolly.jpg",
    "/usr/share/backgrounds/Infinite-Sea_by_Aury88.jpg", "/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
    "/usr/share/backgrounds/Picture_0B_by_freespace.jpg", "/usr/share/backgrounds/Picture_1A_by_freespace.jpg",
    "/usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg", "/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg",
    "/usr/share/backgrounds/free_by_Peter_Nerlich.jpg", "/usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg",
    "/usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg", "/usr/share/backgrounds/mate/nature/Aqua.jpg",
    "/usr/share/backgrounds/mate/nature/Blinds.jpg", "/usr/share/backgrounds/mate/nature/Dune.jpg",
    "/usr/share/backgrounds/mate/nature/FreshFlower.jpg", "/usr/share/backgrounds/mate/nature/Garden.jpg",
    "/usr/share/backgrounds/mate/nature/GreenMeadow.jpg", "/usr/share/backgrounds/mate/nature/LadyBird.jpg",
    "/usr/share/backgrounds/mate/nature/RainDrops.jpg", "/usr/share/backgrounds/mate/nature/Storm.jpg",
    "/usr/share/backgrounds/mate/nature/TwoWings.jpg", "/usr/share/backgrounds/mate/nature/Wood.jpg",
    "/usr/share/backgrounds/mate/nature/YellowFlower.jpg",
    "/usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "/usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg",
    "/usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg",
    "/usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/Kite/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/Path/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/Volna/contents/images/5120x2880.jpg",
    "/usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg",
)
GENERIC_ICONS = ("preferences-", "accessories-", "utilities-", "system-", "applications-", "internet-", "office-",
                 "multimedia-", "help-", "user-", "config-", "gnome-", "cs-", "mate-", "xfce", "kde-", "desktop-",
                 "application-", "org.gnome.", "distributor-", "start-here", "folder", "emblem", "text-", "web-",
                 "media-")
MAX_ALIASES = 5  # a file shared by more names is a theme's generic fallback drawing, not an alias
MIN_LOGO_THEMES = 6
MAX_LOGO_TRAIN = 5
MAX_LOGO_OPEN = 240
OBJECT_POOL = 10
SCENE_TRAIN, SCENE_TEST, SCENE_OPEN = 100, 20, 10
TRAIN_SHARE = 0.65


@dataclass(frozen=True)
class Item:
    """One benchmark image: a unique key, its true label and a loader for its encoded bytes."""

    key: str
    label: str
    load: Callable[[], bytes] = field(compare=False, repr=False)


@dataclass
class Task:
    """Known labels with a training pool (drawn from in pool order) and a test set, plus open-set images."""

    name: str
    pool: dict[str, list[Item]]
    test: list[Item]
    open: list[Item]
    pasted_test: list[Item] = field(default_factory=list)
    pasted_open: list[Item] = field(default_factory=list)
    sizes: tuple[int, ...] = (5,)
    closed_pool: int = 20  # training images per label the features part reads (its largest size)

    @property
    def labels(self) -> list[str]:
        """Known labels, sorted."""
        return sorted(self.pool)

    def items(self) -> list[Item]:
        """Every image of the task, once."""
        return [*(i for items in self.pool.values() for i in items), *self.test, *self.open,
                *self.pasted_test, *self.pasted_open]


def _rng(*parts: object) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def missing_sources() -> list[str]:
    """What `make bench-data` must install before the benchmark can run (empty when all is there)."""
    missing = [str(ICONS / t) for t in THEMES if not (ICONS / t).is_dir()]
    missing += [str(STAMPS)] if not STAMPS.is_dir() else []
    missing += [p for p in SCENE_PHOTOS if not Path(p).is_file()]
    if not shutil.which("rsvg-convert"):
        missing.append("rsvg-convert (librsvg2-bin)")
    return missing


# ── logos ─────────────────────────────────────────────────────────────────────────────────────────


def _icon_files() -> dict[str, dict[str, Path]]:
    """Concept -> theme -> the drawing to use (largest PNG up to 256 px, else the SVG); cached in OUT."""
    index = OUT / f"icons-{DATA_VERSION}.json"
    if index.is_file():
        return {c: {t: Path(p) for t, p in themes.items()} for c, themes in json.loads(index.read_text()).items()}
    concepts = _scan_icons()
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps({c: {t: str(p) for t, p in themes.items()} for c, themes in concepts.items()}))
    return concepts


def _scan_icons() -> dict[str, dict[str, Path]]:
    found: dict[str, dict[str, set[Path]]] = defaultdict(lambda: defaultdict(set))
    for theme in THEMES:
        for path in sorted((ICONS / theme).rglob("*")):
            if ("apps" not in path.parts or path.suffix not in (".png", ".svg") or "symbolic" in path.name
                    or path.stem.lower().startswith(GENERIC_ICONS)):
                continue
            real = Path(os.path.realpath(path))
            if real.is_file():
                found[path.stem][theme].add(real)
    sharing: dict[tuple[str, Path], set[str]] = defaultdict(set)
    for name, themes in found.items():
        for theme, reals in themes.items():
            for real in reals:
                sharing[(theme, real)].add(name)
    together: Counter[tuple[str, str]] = Counter()
    for names in sharing.values():
        if 1 < len(names) <= MAX_ALIASES:
            together.update(itertools.combinations(sorted(names), 2))
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    for (a, b), themes in together.items():
        if themes >= 2:  # aliases in two themes at least: one application under two names
            parent[find(a)] = find(b)
    groups: dict[str, list[str]] = defaultdict(list)
    for name in found:
        groups[find(name)].append(name)
    out = {}
    for names in groups.values():
        ranked = sorted(names, key=lambda n: (-len(found[n]), len(n), n))
        drawings: dict[str, Path] = {}
        for name in ranked:  # the canonical name's drawing first, an alias's where it has none
            for theme, reals in found[name].items():
                drawings.setdefault(theme, _best_drawing(sorted(reals)))
        out[ranked[0]] = drawings
    return out


def _icon_size(path: Path) -> int:
    for part in reversed(path.parts):
        head = part.split("x")[0].split("@")[0]
        if head.isdigit():
            return int(head)
    return 0


def _best_drawing(paths: list[Path]) -> Path:
    svgs = sorted(p for p in paths if p.suffix == ".svg")
    pngs = sorted((p for p in paths if p.suffix == ".png" and _icon_size(p) <= 256), key=lambda p: (_icon_size(p), p))
    if pngs and (_icon_size(pngs[-1]) >= 96 or not svgs):
        return pngs[-1]
    return svgs[-1] if svgs else sorted(paths)[-1]


def _icon_loader(path: Path) -> Callable[[], bytes]:
    def load() -> bytes:
        if path.suffix == ".png":
            return path.read_bytes()
        target = OUT / "icons" / (hashlib.sha256(str(path).encode()).hexdigest()[:20] + ".png")
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["rsvg-convert", "-w", "256", "-h", "256", "--keep-aspect-ratio", "-o", str(target),
                            str(path)], check=True, capture_output=True)
        return target.read_bytes()
    return load


def logo_task(seed: int = 0) -> Task:
    """Known logo concepts (≥ 6 themes), their held-out themes, and never-trained applications."""
    concepts = _icon_files()
    rich = sorted(c for c, themes in concepts.items() if len(themes) >= MIN_LOGO_THEMES)
    rng = _rng("logos", seed)
    known = set(rng.permutation(rich)[:len(rich) // 2].tolist())
    pool, test, open_set = {}, [], []
    for concept in sorted(concepts):
        themes = concepts[concept]
        if len(themes) < 3:
            continue
        items = [Item(f"logo/{concept}/{theme}", concept, _icon_loader(themes[theme]))
                 for theme in _rng("themes", seed, concept).permutation(sorted(themes)).tolist()]
        if concept in known:
            pool[concept], rest = items[:MAX_LOGO_TRAIN], items[MAX_LOGO_TRAIN:]
            test += rest
        else:
            open_set.append(items[0])  # one drawing per never-trained application
    open_set = [open_set[i] for i in sorted(rng.permutation(len(open_set))[:MAX_LOGO_OPEN])]
    task = Task("logos", pool, test, open_set, sizes=(1, 3, 5))
    task.pasted_test = [_pasted(item, "logo") for item in test]
    task.pasted_open = [_pasted(item, "logo") for item in open_set[:MAX_LOGO_OPEN // 2]]
    return task


# ── objects ───────────────────────────────────────────────────────────────────────────────────────


def _stamp_folder(path: Path) -> str:
    return "/".join(path.relative_to(STAMPS).parts[:2])


def object_task(seed: int = 0) -> Task:
    """Photo stamps: five known categories (a pool of 10 per label, the rest test) and other photo folders."""
    by_folder: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(STAMPS.rglob("*.png")):
        parts = path.relative_to(STAMPS).parts
        if any(word in parts for word in DRAWN_STAMPS) or parts[0] in DRAWN_STAMPS:
            continue
        by_folder[_stamp_folder(path)].append(path)
    pool, test, open_set = {}, [], []
    for folder, paths in sorted(by_folder.items()):
        label = OBJECT_LABELS.get(folder, folder.replace("/", "-"))
        items = [Item(f"object/{folder}/{p.name}", label, p.read_bytes)
                 for p in _rng("objects", seed, folder).permutation(paths).tolist()]
        if folder in OBJECT_LABELS:
            pool[label], rest = items[:OBJECT_POOL], items[OBJECT_POOL:]
            test += rest
        elif not folder.startswith(AMBIGUOUS_STAMPS):
            open_set += items
    task = Task("objects", pool, test, open_set, sizes=(1, 5, 10))
    task.pasted_test = [_pasted(item, "object") for item in test]
    task.pasted_open = [_pasted(item, "object") for item in open_set]
    return task


# ── scenes ────────────────────────────────────────────────────────────────────────────────────────


@cache
def _photo(path: str) -> Image.Image:
    """A scene photo, decoded once at most 1600 px wide."""
    image = Image.open(path)
    image.draft("RGB", (1600, 1600))
    image = image.convert("RGB")
    if image.width > 1600:
        image = image.resize((1600, round(image.height * 1600 / image.width)), Image.Resampling.LANCZOS)
    return image


def _crop(path: str, rng: np.random.Generator, x_range: tuple[float, float]) -> bytes:
    """A square crop (25–45 % of the short side) whose every pixel lies in the x_range share of the photo."""
    image = _photo(path)
    side = int(min(image.size) * rng.uniform(0.25, 0.45))
    lo, hi = int(x_range[0] * image.width), int(x_range[1] * image.width) - side
    left = int(rng.integers(lo, max(lo + 1, hi)))
    top = int(rng.integers(0, image.height - side))
    return _encode(image.crop((left, top, left + side, top + side)).resize((320, 320), Image.Resampling.LANCZOS),
                   "JPEG")


def _crop_loader(path: str, key: str, x_range: tuple[float, float]) -> Callable[[], bytes]:
    return lambda: _crop(path, _rng("crop", key), x_range)


def scene_task(seed: int = 0) -> Task:
    """Which photo is this a crop of: train on its left 65 %, test on its right 35 %; unseen photos are open."""
    photos = _rng("scenes", seed).permutation(list(SCENE_PHOTOS)).tolist()
    known, unseen = photos[:len(photos) // 2], photos[len(photos) // 2:]
    pool, test, open_set = {}, [], []
    for path in known:
        label = _scene_label(path)
        pool[label] = [Item(f"scene/{label}/train-{i}", label,
                            _crop_loader(path, f"{label}/train-{i}", (0.0, TRAIN_SHARE))) for i in range(SCENE_TRAIN)]
        test += [Item(f"scene/{label}/test-{i}", label, _crop_loader(path, f"{label}/test-{i}", (TRAIN_SHARE, 1.0)))
                 for i in range(SCENE_TEST)]
    for path in unseen:
        label = _scene_label(path)
        open_set += [Item(f"scene/{label}/open-{i}", label, _crop_loader(path, f"{label}/open-{i}", (0.0, 1.0)))
                     for i in range(SCENE_OPEN)]
    return Task("scenes", pool, test, open_set, sizes=(5, 20, 100))


def _scene_label(path: str) -> str:
    p = Path(path)
    return (p.parts[-4] if "contents" in p.parts else p.stem.split("_by_")[0]).lower()


# ── pasted variant ────────────────────────────────────────────────────────────────────────────────


def _pasted(item: Item, kind: str) -> Item:
    """`item` pasted at an angle onto a crop of a scene photo (a harder, photo-like variant)."""
    key = f"pasted/{item.key}"

    def load() -> bytes:
        rng = _rng("paste", key)
        background = _photo(SCENE_PHOTOS[int(rng.integers(len(SCENE_PHOTOS)))])
        w, h = 480, 360
        left = int(rng.integers(0, background.width - w))
        top = int(rng.integers(0, background.height - h))
        canvas = background.crop((left, top, left + w, top + h)).convert("RGBA")
        thing = Image.open(io.BytesIO(item.load())).convert("RGBA")
        if kind == "logo":  # a logo on a white card, as on a sign or a package
            card = Image.new("RGBA", (thing.width + 24, thing.height + 24), (255, 255, 255, 255))
            card.alpha_composite(thing, (12, 12))
            thing = card
        size = int(min(w, h) * rng.uniform(0.45, 0.75))
        thing.thumbnail((size, size), Image.Resampling.LANCZOS)
        thing = thing.rotate(float(rng.uniform(-35, 35)), Image.Resampling.BICUBIC, expand=True)
        x = int(rng.integers(0, max(1, w - thing.width)))
        y = int(rng.integers(0, max(1, h - thing.height)))
        canvas.alpha_composite(thing, (x, y))
        return _encode(canvas.convert("RGB"), "JPEG")

    return Item(key, item.label, load)


# ── closed-set, fine-grained tasks (no open set): do right answers stay confident? ─────────────────


DIGITS_POOL = 100
LOOKALIKE_PHOTOS = ("/usr/share/backgrounds/mate/nature/FreshFlower.jpg",  # orange petals, close up
                    "/usr/share/backgrounds/mate/nature/Garden.jpg")  # an orange-red flower on orange blur
LOOKALIKE_FOOD = ("food/fruit", "food/vegetables")


def digits_task(seed: int = 0) -> Task:
    """scikit-learn's load_digits (real handwriting scans, ten labels that look alike), rendered as the tests
    and the loop simulation render them: a pool of 100 per digit, the other 797 images test; no open set."""
    from bench.loop_simulation.data import load_digits_png

    by_label: dict[str, list[Item]] = defaultdict(list)
    for digit in load_digits_png():
        by_label[digit.label].append(Item(f"digits/{digit.name}", digit.label, lambda png=digit.png: png))
    pool, test = {}, []
    for label, items in sorted(by_label.items()):
        shuffled = [items[i] for i in _rng("digits", seed, label).permutation(len(items))]
        pool[label], rest = shuffled[:DIGITS_POOL], shuffled[DIGITS_POOL:]
        test += rest
    return Task("digits", pool, test, [], sizes=(5, 20, 100))


def flower_pair_task(seed: int = 0) -> Task:
    """Two photographs of orange flowers (crops as in the scenes task: 100 from the left 65 %, 40 from the
    right 35 %): two classes that look alike, with about the hidden two-class set's 100+ images per class."""
    pool, test = {}, []
    for path in LOOKALIKE_PHOTOS:
        label = _scene_label(path).lower()
        pool[label] = [Item(f"pair/{label}/train-{i}", label,
                            _crop_loader(path, f"pair/{label}/train-{i}", (0.0, TRAIN_SHARE)))
                       for i in range(SCENE_TRAIN)]
        test += [Item(f"pair/{label}/test-{i}", label,
                      _crop_loader(path, f"pair/{label}/test-{i}", (TRAIN_SHARE, 1.0))) for i in range(2 * SCENE_TEST)]
    return Task("flowers", pool, test, [], sizes=(5, 20, 100))


def food_pair_task(seed: int = 0) -> Task:
    """Fruit against vegetable photo stamps (26 and 18 photos): two similar classes of varied real photos."""
    pool, test = {}, []
    for folder in LOOKALIKE_FOOD:
        label = OBJECT_LABELS[folder]
        paths = sorted((STAMPS / folder).glob("*.png"))
        items = [Item(f"object/{folder}/{p.name}", label, p.read_bytes)
                 for p in _rng("objects", seed, folder).permutation(paths).tolist()]
        pool[label], rest = items[:OBJECT_POOL], items[OBJECT_POOL:]
        test += rest
    return Task("food", pool, test, [], sizes=(5, 10))


# ── two-class photo sets of about the size (~100 training photos per class, whole photos held out) ──


TWO_CLASS_POOL = {"animals": 80, "living": 100}  # training photos per class (the rest of the photos test)


def _photo_stamps() -> dict[str, list[Path]]:
    """Every photographic stamp, by its top-level folder (drawings left out)."""
    by_top: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(STAMPS.rglob("*.png")):
        parts = path.relative_to(STAMPS).parts
        if not (any(word in parts for word in DRAWN_STAMPS) or parts[0] in DRAWN_STAMPS):
            by_top[parts[0]].append(path)
    return by_top


def _two_class_task(name: str, classes: dict[str, tuple[str, ...]], seed: int) -> Task:
    """Whole photo stamps in two classes (each a set of top-level folders): a seeded TWO_CLASS_POOL[name] per
    class train, every other photo of the class tests (no crop of a training photo is ever tested)."""
    by_top = _photo_stamps()
    pool, test = {}, []
    for label, tops in classes.items():
        paths = [p for top in tops for p in by_top[top]]
        items = [Item(f"object/{p.relative_to(STAMPS)}", label, p.read_bytes)
                 for p in _rng(name, seed, label).permutation(paths).tolist()]
        pool[label], rest = items[:TWO_CLASS_POOL[name]], items[TWO_CLASS_POOL[name]:]
        test += rest
    return Task(name, pool, test, [], sizes=(10, 20, TWO_CLASS_POOL[name]), closed_pool=TWO_CLASS_POOL[name])


THINGS = ("household", "vehicles", "clothes", "space", "hobbies", "military", "sports")


def animal_task(seed: int = 0) -> Task:
    """Animal photos (128: mammals, birds, insects, fish …) against every other photo stamp (205: plants,
    food, household things, vehicles …): a two-class set of real photos, 80 training photos per class."""
    return _two_class_task("animals", {"animal": ("animals",), "other": ("plants", "food", *THINGS)}, seed)


def living_task(seed: int = 0) -> Task:
    """Living things (animals and plants, 167 photos) against food and objects (166): 100 training photos
    per class, 66–67 held out, the size of the issue's two-class set; fruit and vegetables against plants
    make the boundary hard in places."""
    return _two_class_task("living", {"living": ("animals", "plants"), "thing": ("food", *THINGS)}, seed)


TASKS = {"logos": logo_task, "objects": object_task, "scenes": scene_task, "digits": digits_task,
         "flowers": flower_pair_task, "food": food_pair_task, "animals": animal_task, "living": living_task}
CLOSED_TASKS = ("digits", "flowers", "food", "animals", "living")
