"""Schemathesis fuzzes the live OpenAPI document for a bounded time: no 5xx, no response off its schema."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Server

FUZZ_SECONDS = int(os.environ.get("LABELLOOP_FUZZ_SECONDS", "60"))
FUZZ_SEED = int(os.environ.get("LABELLOOP_FUZZ_SEED", "1"))  # other seeds explore other inputs
# Changing the admin's own password or revoking its token would end the session the fuzzer runs on.
EXCLUDED = ["/api/v1/auth/password", "/api/v1/tokens/{token_id}"]

pytestmark = pytest.mark.timeout(FUZZ_SECONDS + 240)


def test_fuzz_the_openapi_spec(server: Server, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    command = [str(schemathesis), "run", f"{server.url}/openapi.json", "-H",
               f"Authorization: Bearer {server.token()}", "--checks",
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
    # Only routes that take no user token may answer nothing but 401: sign-in itself (fuzzed with made-up
    # passwords) and the S3 event endpoint (a shared secret the fuzzer does not have).
    refused = set(re.findall(r"^\s+- ([A-Z]+ /\S+)$", output.split("401 Unauthorized")[-1].split("\n\n")[0],
                             re.MULTILINE)) if "401 Unauthorized" in output else set()
    assert refused <= {"POST /api/v1/auth/token", "POST /api/v1/events/s3"}, output[-3000:]
    # Fail on what the fuzzer found in labelloop (ST1xx: server errors, schema violations); a crash inside the
    # fuzzer itself that persists after the rerun above is reported but is not a finding about the server.
    findings = sorted(set(re.findall(r"\bST\d{3}\b", output)))
    assert not findings, output[-6000:]
    if finished.returncode != 0:
        print("schemathesis ended with an internal error but found nothing:", output[-800:])
    assert cases and int(cases.group(1)) > 100
