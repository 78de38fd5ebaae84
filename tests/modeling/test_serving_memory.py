"""What a serving process keeps of a training's memory (README Performance, item 44).

Each check runs in a fresh interpreter, whose resident memory is what is measured."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and glibc's malloc"),
              pytest.mark.same_on_every_database]  # no database: a fresh interpreter's memory

# A serving unit's session has run a batch; then a training's session embeds a batch of 32 and is dropped.
TRAINING = """
import sys
import numpy as np
from labelloop import memory
from labelloop.modeling import endpoint
from labelloop.modeling.embedding import Embedder
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
unit = Embedder(endpoint.backbone_path(), threads=1)  # the serving units' sessions share one arena
unit.embed(np.zeros((1, 3, 224, 224), np.float32))
before = rss_mib()
if sys.argv[1] == "training":
    embedder = endpoint.training_embedder()[0]
else:  # a session on the serving units' shared arena, as the training's was
    embedder = Embedder(endpoint.backbone_path())
embedder.embed(np.random.default_rng(0).random((32, 3, 224, 224), dtype=np.float32))
during = rss_mib()
del embedder
memory.release_free_memory(after="test")
print(before, during, rss_mib())
"""


# Two serving units' sessions run batches of every size up to the micro-batcher's largest, at the same time.
UNITS = """
import threading
import numpy as np
from labelloop.modeling import endpoint
from labelloop.modeling.embedding import Embedder
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
units = [Embedder(endpoint.backbone_path(), threads=1) for _ in range(2)]
for unit in units:
    unit.embed(np.zeros((1, 3, 224, 224), np.float32))
before = rss_mib()
def serve(unit, seed):
    for size in np.random.default_rng(seed).integers(1, 9, 30):
        unit.embed(np.zeros((size, 3, 224, 224), np.float32))
threads = [threading.Thread(target=serve, args=(unit, seed)) for seed, unit in enumerate(units)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(before, rss_mib())
"""


def _rss(script: str, cache: Path, *args: str) -> list[float]:
    """What ``script`` prints: RSS figures in MiB."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LABELLOOP_")}
    env.update(LABELLOOP_CACHE_FOLDER=str(cache), LABELLOOP_HOME=str(cache.parent / "home"))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          timeout=120, check=True, env=env)
    return [float(value) for value in done.stdout.split()]


def test_a_trainings_backbone_session_gives_its_memory_back(backbone_onnx: Path) -> None:
    before, during, after = _rss(TRAINING, backbone_onnx.parent, "training")
    assert during > before + 150, f"a batch of 32 should need its buffers ({before:.0f} → {during:.0f} MiB)"
    assert after < before + 60, f"the training's session kept {after - before:.0f} MiB after it was dropped"


def test_a_session_on_the_shared_arena_keeps_its_largest_batch(backbone_onnx: Path) -> None:
    """Why training has a session of its own: on the serving units' arena, its batch stayed for good."""
    before, during, after = _rss(TRAINING, backbone_onnx.parent, "shared")
    assert during > before + 150
    assert after > before + 150, f"the shared arena gave back {during - after:.0f} MiB"


def test_serving_units_share_their_buffers_across_batch_sizes(backbone_onnx: Path) -> None:
    """One planned block per batch size (ONNX Runtime's memory pattern) in arena regions of the requested size took
    240-360 MiB here; tensor by tensor 150-190 MiB; planned blocks in one first region of 192 MiB about 185 (README
    Performance, items 44 and 55)."""
    before, after = _rss(UNITS, backbone_onnx.parent)
    assert after < before + 210, f"two units' batches of 1 to 8 took {after - before:.0f} MiB"
