"""Faults: a full disk fails one upload with a clear error; a kill while answers are applied loses nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import Server, wait_until
from images import blend, upload_training_set

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 3 MiB tmpfs for the bucket (the test runs as root, as CI does)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_fails_that_upload_clearly_and_the_rest_keeps_working(make_server, small_disk: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server(LABELLOOP_STORAGE_URL=f"file://{small_disk}/bucket")
    with server.client() as api:
        stored, refused = [], None
        for i in range(20):
            response = api.put(f"/objects/manifests/blob_{i}.bin", content=bytes(400_000))
            if response.status_code != 201:
                refused = response
                break
            stored.append(i)
        assert refused is not None and stored, "the disk never filled"
        assert refused.status_code == 507, refused.text
        assert "storage is full" in refused.json()["detail"]
        assert not list((small_disk / "bucket.tmp").iterdir()), "a half-written upload was left behind"
        assert api.get("/parameters/Minimum-F1-Score").status_code == 200
        assert api.delete(f"/objects/manifests/blob_{stored[0]}.bin").status_code == 200
        assert api.put("/objects/manifests/after.bin", content=bytes(1000)).status_code == 201
        listed = {o["key"] for o in api.get("/objects", params={"prefix": "manifests/"}).json()}
        assert f"manifests/blob_{len(stored)}.bin" not in listed


def test_kill_while_answers_are_applied_copies_each_exactly_once(server: Server) -> None:
    with server.client() as api:
        upload_training_set(api, 5)
        server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
        api.put("/parameters/Minimum-Label-Detection-Confidence", json={"value": "100"})
        keys = [f"images_for_detection/fault_{i}.png" for i in range(12)]
        for i, key in enumerate(keys):
            api.put(f"/objects/{key}", content=blend(40 + i))
        loops = wait_until(lambda: (found := api.get("/human-loops", params={"status": "InProgress"}).json())
                           and len(found) == len(keys) and found, 120, 0.25, "a loop per image")
        answered = {}
        for loop in loops:
            label = "amazon_logo" if len(answered) % 2 else "aws_logo"
            assert api.post(f"/human-loops/{loop['name']}/answer", json={"label": label}).status_code == 200
            answered[loop["name"]] = label
    server.kill()
    server.start()
    with server.client() as api:
        def applied() -> bool:
            loops = [api.get(f"/human-loops/{name}").json() for name in answered]
            recorded = {e["human_loop_name"] for e in api.get("/detections", params={"answered": True}).json()}
            return all(loop["output_key"] and loop["copied_key"] for loop in loops) and recorded >= set(answered)

        wait_until(applied, 120, 0.5, "every answer applied after the restart")
        labeled = [o["key"] for o in api.get("/objects", params={"prefix": "images_labeled_by_folder/"}).json()]
        for name, label in answered.items():
            copies = [key for key in labeled if f"humanLoopName-{name}-" in key]
            assert len(copies) == 1 and copies[0].startswith(f"images_labeled_by_folder/{label}/"), (name, copies)
        events = {e["human_loop_name"]: e for e in api.get("/detections", params={"answered": True}).json()}
        assert {name: events[name]["human_label"] for name in answered} == answered


def test_database_connections_killed_under_requests_fail_cleanly_and_recover(make_server,  # type: ignore[no-untyped-def]
                                                                             postgres_database: str) -> None:
    """PostgreSQL drops every connection of the server (as a restart or failover does) while requests flow:
    no request gets a 500, a failed one says why (503), and the server answers normally again."""
    import psycopg
    from sqlalchemy import make_url

    server = make_server(LABELLOOP_DATABASE_URL=postgres_database)
    name = make_url(postgres_database).database
    admin_url = make_url(postgres_database).set(database="postgres", drivername="postgresql")
    statuses: list[int] = []
    with server.client() as api:
        for _ in range(3):
            with psycopg.connect(admin_url.render_as_string(hide_password=False), autocommit=True) as conn:
                killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                      "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchone()[0]
            assert killed > 0
            for _ in range(5):
                response = api.get("/parameters/Minimum-F1-Score")
                statuses.append(response.status_code)
                if response.status_code != 200:
                    assert response.status_code == 503 and "database" in response.json()["detail"], response.text
        assert statuses[-1] == 200
        assert api.put("/parameters/Minimum-F1-Score", json={"value": "0.7"}).status_code == 200
    assert 500 not in statuses
