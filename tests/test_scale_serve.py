"""Scale-out: several ``labelloop serve`` processes on one PostgreSQL database and S3 bucket act as one server."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from conftest import LABELLOOP, Server, Worker, server_env, wait_until
from images import box_logo, smile_logo
from labelloop.loop.routing import object_created_run_id as event_id

pytestmark = pytest.mark.timeout(600)


@pytest.mark.same_on_every_database
def test_two_serve_processes_share_users_parameters_and_work(tmp_path: Path, postgres_database: str,
                                                             s3_server) -> None:
    common = {**s3_server.env(s3_server.bucket()), "LABELLOOP_DATABASE_URL": postgres_database,
              "LABELLOOP_CACHE_FOLDER": str(tmp_path / "cache"), "LABELLOOP_DATABASE_POOL_SIZE": "4"}
    # Started together: the start-up lock lets one migrate and create the admin while the other waits.
    servers = [Server(home=tmp_path / f"serve{i}", env=server_env(**common)) for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda server: server.start(timeout=120), servers))
    a, b = servers
    try:
        token = a.token()  # signed in on one, recognised by the other
        api_a, api_b = a.client(token), b.client(token)
        changed = api_b.put("/parameters/Minimum-Untrained-Images", json={"value": "7"}).json()
        a.wait_run(changed["run_id"])
        assert api_a.get("/parameters/Minimum-Untrained-Images").json()["value"] == "7"

        # Uploads alternate between the two (as a load balancer would send them); both run the work.
        keys = [f"images_for_detection/rr-{i:02d}.png" for i in range(40)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda item: (api_a, api_b)[item[0] % 2].put(
                f"/objects/{item[1]}", content=(smile_logo, box_logo)[item[0] % 2](item[0])), enumerate(keys)))
        assert all(answer.status_code == 201 for answer in answers)

        def recorded() -> list[dict] | None:
            events = [e for e in api_b.get("/detections", params={"limit": 1000}).json() if e["object_key"] in keys]
            return events if len(events) == len(keys) else None

        events = wait_until(recorded, 120, 0.25, "a detection event per upload")
        assert sorted(e["object_key"] for e in events) == keys  # exactly one each

        def finished() -> dict[str, int] | None:  # uploads whose run ended, by the executor that ran it
            with psycopg.connect(postgres_database) as connection:
                done = dict(connection.execute(
                    "SELECT w.executor_id, count(*) FROM detection_events d JOIN dbos.workflow_status w ON "
                    "w.workflow_uuid = d.run_id WHERE d.object_key LIKE 'images_for_detection/rr-%%' AND "
                    "w.name = 'object_created' AND w.status = 'SUCCESS' GROUP BY w.executor_id").fetchall())
            return done if sum(done.values()) == len(keys) else None

        executors = wait_until(finished, 60, 0.25, "every run finished")
        assert len(executors) == 2, executors
        runs = {run["id"] for run in api_a.get("/runs", params={"limit": 500}).json()}
        assert runs == {run["id"] for run in api_b.get("/runs", params={"limit": 500}).json()}
    finally:
        for server in servers:
            server.stop()


@pytest.mark.same_on_every_database
def test_an_executor_id_is_held_by_one_process_at_a_time(tmp_path: Path, postgres_database: str) -> None:
    env = server_env(LABELLOOP_DATABASE_URL=postgres_database, LABELLOOP_EXECUTOR_ID="worker-one",
                     LABELLOOP_STORAGE_URL=f"file://{tmp_path / 'bucket'}")
    first = Worker(home=tmp_path / "w1", env=env).start()
    try:
        assert first.executor_id == "worker-one"
        second = subprocess.run([*LABELLOOP, "worker", "--home", str(tmp_path / "w2")], env=env,
                                capture_output=True, timeout=120)
        assert second.returncode != 0
        assert b"executor id 'worker-one' is in use by a running labelloop process" in second.stderr + second.stdout
    finally:
        first.stop()
    # Once it has stopped, the id may be used again (a restart under a fixed id, e.g. a systemd unit).
    again = Worker(home=tmp_path / "w1", env=env).start()
    again.stop()


@pytest.mark.same_on_every_database
def test_the_executor_lock_comes_back_after_its_connection_breaks(tmp_path: Path, postgres_database: str) -> None:
    env = server_env(LABELLOOP_DATABASE_URL=postgres_database, LABELLOOP_EXECUTOR_ID="worker-two",
                     LABELLOOP_RECOVERY_CHECK_SECONDS="0.5", LABELLOOP_STORAGE_URL=f"file://{tmp_path / 'bucket'}")
    worker = Worker(home=tmp_path / "w", env=env).start()
    holder = ("SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = "
              "'advisory' AND a.application_name = 'labelloop executor worker-two'")
    try:
        with psycopg.connect(postgres_database, autocommit=True) as connection:
            [(before,)] = connection.execute(holder).fetchall()
            connection.execute("SELECT pg_terminate_backend(%s)", (before,))  # as a database restart would
            wait_until(lambda: [row for row in connection.execute(holder).fetchall() if row[0] != before], 30,
                       0.2, "the lock held again on a new connection")
        refused = subprocess.run([*LABELLOOP, "worker", "--home", str(tmp_path / "w2")], env=env,
                                 capture_output=True, timeout=120)
        assert b"is in use by a running labelloop process" in refused.stderr + refused.stdout
    finally:
        worker.stop()


@pytest.mark.same_on_every_database
def test_unknown_queue_names_are_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "labelloop", "worker", "--home", str(tmp_path),
                           "--queues", "object-events,trainin"], env=server_env(), capture_output=True,
                          timeout=120)
    assert done.returncode != 0
    assert b"unknown queue(s) trainin" in done.stderr + done.stdout


def test_a_web_only_server_leaves_the_runs_to_workers(tmp_path: Path) -> None:
    """A worker sharing the server's home (and database) takes the runs a web-only server leaves."""
    home = tmp_path / "home"
    web = Server(home=home, env=server_env(LABELLOOP_QUEUES="")).start()
    try:
        with web.client() as api:
            stored = api.put("/objects/images_labeled_by_folder/cats/a.png", content=smile_logo(1)).json()
            run_id = event_id(stored["key"], stored["etag"])
            assert api.get(f"/runs/{run_id}").json()["status"] == "ENQUEUED"
            # The server's own settings (in a --database=postgresql run, its database too), all queues.
            worker = Worker(home=home, env={k: v for k, v in web.env.items() if k != "LABELLOOP_QUEUES"}).start()
            try:
                run = web.wait_run(run_id)
                assert run["status"] == "SUCCESS" and run["executor"] == worker.executor_id, (run, stored)
            finally:
                worker.stop()
    finally:
        web.stop()
