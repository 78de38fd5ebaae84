"""Schemathesis fuzzes the live OpenAPI document for a bounded time: no 5xx, no response off its schema."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import Server

FUZZ_SECONDS = int(os.environ.get("LABELLOOP_FUZZ_SECONDS", "60"))
FUZZ_SEED = int(os.environ.get("LABELLOOP_FUZZ_SEED", "1"))  # other seeds explore other inputs
# Changing the admin's own password or revoking its token would end the session the fuzzer runs on.
EXCLUDED = ["/api/v1/auth/password", "/api/v1/tokens/{token_id}"]

pytestmark = pytest.mark.timeout(FUZZ_SECONDS + 240)


def test_fuzz_the_openapi_spec(server: Server, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    token = server.token()
    command = [str(schemathesis), "run", f"{server.url}/openapi.json", "-H",
               f"Authorization: Bearer {token}", "--checks",
               "not_a_server_error,response_schema_conformance", "--max-time", str(FUZZ_SECONDS), "--workers", "2",
               "--suppress-health-check", "all", "--seed", str(FUZZ_SEED)]
    for path in EXCLUDED:
        command += ["--exclude-path", path]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False,
                              timeout=FUZZ_SECONDS + 180)
    output = finished.stdout + finished.stderr
    if finished.returncode != 0 and not re.search(r"\bST\d{3}\b", output):
        # The fuzzer itself crashed (seen once: a hypothesis-internal error) without finding anything: run again.
        command[command.index("--seed") + 1] = str(FUZZ_SEED + 1)
        finished = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False,
                                  timeout=FUZZ_SECONDS + 180)
        output = finished.stdout + finished.stderr
    cases = re.search(r"(\d+) generated", output)
    print(f"schemathesis: {cases.group(0) if cases else output[-500:]} in {FUZZ_SECONDS}s")
    # Only routes that take no user token may answer 401 to a request that carried the fuzzer's token: sign-in
    # itself (fuzzed with made-up passwords) and the S3 event endpoint (a shared secret the fuzzer does not have).
    # (Schemathesis also sends requests without the header on purpose; those must get 401 and are not counted.)
    refused = {f"{method} {path}" for method, path in refused_with_token(tmp_path / "report")}
    assert refused <= {"POST /api/v1/auth/token", "POST /api/v1/events/s3"}, (sorted(refused), output[-3000:])
    # Fail on what the fuzzer found in labelloop (ST1xx: server errors, schema violations); a crash inside the
    # fuzzer itself that persists after the rerun above is reported but is not a finding about the server.
    findings = sorted(set(re.findall(r"\bST\d{3}\b", output)))
    assert not findings, output[-6000:]
    if finished.returncode != 0:
        print("schemathesis ended with an internal error but found nothing:", output[-800:])
    assert cases and int(cases.group(1)) > 100


def refused_with_token(report: Path) -> set[tuple[str, str]]:
    """(method, path) of every recorded request that carried the fuzzer's token and was answered 401 (the
    report hides the header's value; requests sent without one on purpose have no header at all)."""
    found = set()
    for cassette in report.glob("*.yaml"):
        for interaction in yaml.safe_load(cassette.read_text())["http_interactions"]:
            if interaction.get("response") is None:  # no answer recorded (a time-out): nothing to judge
                continue
            request, code = interaction["request"], str(interaction["response"]["status"]["code"])
            headers = {name.lower() for name in request.get("headers") or {}}
            if code == "401" and "authorization" in headers:
                found.add((request["method"], urlsplit(request["uri"]).path))
    return found
