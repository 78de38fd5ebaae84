"""Typed configuration from one place: ``LABELLOOP_*`` environment variables, CLI flags, defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting labelloop reads. CLI flags override these by setting the same fields."""

    model_config = SettingsConfigDict(env_prefix="LABELLOOP_", extra="ignore")

    home: Path = Field(default=Path("./labelloop-data"), description="Folder for the database, bucket and caches")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the application database; default a SQLite file in home"
    )
    system_database_url: str | None = Field(
        default=None,
        description="URL of the workflow engine's records; default a second SQLite file in home, "
        "or the application database when that is PostgreSQL",
    )
    storage_url: str | None = Field(
        default=None, description="Bucket: a local folder (file://PATH) or an S3-compatible bucket (s3://BUCKET); "
        "default home/bucket"
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="Address of the S3-compatible service (MinIO, Ceph, …); default AWS_ENDPOINT_URL_S3 "
        "or AWS_ENDPOINT_URL, else AWS S3 itself. Credentials and region come from the usual AWS_* variables"
    )
    s3_addressing_style: str | None = Field(
        default=None, pattern="^(auto|path|virtual)$",
        description="How bucket names go into S3 requests; default path-style with an endpoint URL, else auto",
    )
    s3_events_token: str | None = Field(
        default=None, description="Shared secret that S3 event notifications must carry (Authorization: Bearer "
        "TOKEN) at POST /api/v1/events/s3; the endpoint is off while this is unset"
    )
    database_pool_size: int = Field(
        default=10, ge=1, description="Connections each process keeps to a PostgreSQL database: the application "
        "pool may grow to twice this, the workflow engine's pool to twice this again"
    )
    executor_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$",
        description="Name of this process in the workflow engine's records; default HOST-ROLE-PID-RANDOM, new at "
        "every start. Two running processes may never share one",
    )
    # NoDecode: "a,b" is split by the validator below; an empty value means no queue (a web-only process).
    queues: Annotated[list[str] | None, NoDecode] = Field(
        default=None, description="Queues this process takes workflow runs from (object-events, training, "
        "parameters, sampling), comma-separated; default all of them; empty: none (answers HTTP only)",
    )
    recovery_check_seconds: float = Field(
        default=5.0, gt=0, description="How often a process looks for runs left by a stopped process and "
        "takes them over"
    )
    cache_folder: Path | None = Field(
        default=None, description="Per-machine cache (backbone ONNX file, embeddings); default home/cache. "
        "Processes on one machine may share it"
    )
    admin_password: str | None = Field(default=None, description="Password for the first admin user")
    public_url: str = Field(default="http://127.0.0.1:8080", description="Address users reach the server at")
    host: str = "127.0.0.1"
    port: int = 8080
    watch_folder: Path | None = Field(default=None, description="A drop folder whose files go into the bucket")
    scheduler_polling_seconds: float = Field(default=2.0, gt=0)
    # How often the object-events queue is polled (None: by the process's role, engine.object_events_polling). A
    # worker finds every run by polling: 0.2 s (a look takes at most 16 runs, engine.OBJECT_EVENTS_CONCURRENCY, so at
    # 0.5 s uploads could not start faster than 32 a second). A serving process starts its uploads' batches itself
    # and every other run it queues there wakes its worker, so the poll finds only runs queued elsewhere, scheduled
    # ones and batches over the cap: it polls at the idle period. Each poll costs 5–6 ms of CPU on an AVX2 EPYC
    # (README Performance, items 32 and 34).
    queue_polling_seconds: float | None = Field(default=None, gt=0)
    # The training, parameters and sampling queues take a run now and then; polling them as often as the
    # object-events queue was 6 % of the upload pipeline's CPU (each poll a write transaction on SQLite). A run
    # a process queues on them itself wakes its worker at once (engine.Wakeup): the period delays only runs
    # queued elsewhere or waiting for the one place each has.
    idle_queue_polling_seconds: float = Field(default=2.0, gt=0)
    log_level: str = "INFO"
    malloc_arenas: int = Field(default=2, ge=0, le=64, description="Most malloc arenas (glibc) the threads of a "
                               "serving or worker process share; each keeps the memory freed in it. 0: glibc's "
                               "default, eight per core")
    int8_weights: str = Field(default="auto", pattern="^(auto|full-range|reduce-range)$",
                              description="How Quantize-Backbone's int8 copies are built: auto (full range on a CPU "
                              "with VNNI, reduce-range without), full-range or reduce-range (for a fleet whose "
                              "workers lack VNNI, where a full-range copy can saturate)")
    head_blas_threads: int = Field(default=1, ge=0, le=64, description="BLAS threads (numpy's OpenBLAS) of a "
                                   "process that serves a model: the head's logits and centroid products on each "
                                   "served batch and whatever else the process multiplies (the familiarity bank's "
                                   "product runs in ONNX Runtime on the calling thread); 0: OpenBLAS's own, one per "
                                   "core")
    log_format: str = Field(default="json", pattern="^(json|text)$")
    # Client side (the CLI talking to a server)
    server: str = Field(default="http://127.0.0.1:8080", description="The server the CLI talks to")
    token: str | None = Field(default=None, description="API bearer token for the CLI")
    username: str | None = None
    password: str | None = None
    # Notifications
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_sender: str = "labelloop@localhost"
    # NoDecode: a comma-separated list is split by the validator below instead of being parsed as JSON.
    notify_email: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                         description="Addresses that get every notification")
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                         description="URLs that get every notification as JSON")
    webhook_timeout_seconds: float = 10.0
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_request_bytes: int = Field(default=1024 * 1024, gt=0, description=(
        "Largest body of any request that is not an image upload, and of any upload without credentials"))
    max_json_depth: int = Field(default=32, gt=0, description="Deepest nesting of arrays and objects in JSON bodies")
    token_ttl_hours: int = Field(default=24 * 30, gt=0)
    # Password hashing (argon2id): the defaults are argon2-cffi's (RFC 9106's low-memory profile: 64 MiB, 3 passes,
    # 4 lanes; 0.1-0.7 s of CPU per hash or check). The floors are OWASP's minimum for argon2id (19 MiB, 2 passes,
    # 1 lane): a small machine may go down to it, never below. Hashes made with other parameters still verify.
    password_hash_memory_kib: int = Field(
        default=65536, ge=19456, le=4 * 1024 * 1024, description="Memory of each password hash and check, in KiB "
        "(argon2id m; at least 19456, OWASP's minimum)")
    password_hash_passes: int = Field(default=3, ge=2, le=64, description="Passes over that memory of each password "
                                      "hash and check (argon2id t; at least 2, OWASP's minimum)")
    password_hash_lanes: int = Field(default=4, ge=1, le=64, description="Lanes (threads) of each password hash and "
                                     "check (argon2id p; at least 1)")
    # Review
    undo_seconds: float = Field(default=10.0, ge=0, le=600, description="How long a reviewer can undo an "
                                "answer before it is applied (0: no undo)")
    answer_sweep_minutes: int = Field(default=5, ge=1, le=1440, description="How often recorded answers not "
                                      "yet applied (a stop between answer and run), and detections left waiting "
                                      "while a version serves, are looked for")
    stranded_detection_retries: int = Field(default=3, ge=0, le=100, description="How many more runs an "
                                            "image left waiting while a version serves gets from that version "
                                            "before it is marked FAILED (a new version tries it again)")
    run_retention_days: int = Field(default=90, ge=0, le=36500, description="Finished workflow runs (their "
                                    "status, input, output and steps) are pruned once a day when older than this "
                                    "many days; 0 keeps them for ever. The run that trained a model version is "
                                    "kept as long as the version, and runs still pending are never pruned")
    upload_batch_seconds: float = Field(default=0.5, ge=0, le=5, description="Uploads for detection share one "
                                        "workflow run per this many seconds (each keeps its own detection event); "
                                        "an upload after a quiet spell has its run started at once. 0.5, not 0.2: "
                                        "a run's own records and reads cost some 10 ms of CPU (README Performance, "
                                        "item 46)")
    upload_batch_size: int = Field(default=64, ge=1, le=256, description="Most uploads for detection one "
                                   "workflow run detects. 64, not 32: under a steady stream the runs were full at "
                                   "32, and each run's own records and reads cost some 10 ms of CPU (README "
                                   "Performance, items 46 and 53)")
    flow_definition_name: str = Field(default="labelloop-review", pattern=r"^[a-z0-9](-*[a-z0-9])*$",
                                      max_length=63, description="The review flow's name in A2I output paths")
    local_bucket_name: str = Field(default="labelloop", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
                                   description="The bucket name in s3:// URIs of A2I output for local storage")

    @field_validator("notify_email", "webhook_urls", "queues", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            stripped = value.strip()
            if stripped.startswith("["):
                return json.loads(stripped)
            return [part.strip() for part in stripped.split(",") if part.strip()]
        return value

    @property
    def resolved_home(self) -> Path:
        """The home folder as an absolute path."""
        return self.home.expanduser().resolve()

    @property
    def app_database_url(self) -> str:
        """The application database URL, defaulting to a SQLite file in home (PostgreSQL uses psycopg 3)."""
        return with_driver(self.database_url or f"sqlite:///{self.resolved_home / 'labelloop.db'}")

    @property
    def engine_database_url(self) -> str:
        """The workflow engine's (DBOS) system database URL: with PostgreSQL, the application database."""
        if self.system_database_url:
            return with_driver(self.system_database_url)
        if is_postgresql(self.app_database_url):
            return self.app_database_url
        return f"sqlite:///{self.resolved_home / 'workflows.db'}"

    @property
    def bucket_url(self) -> str:
        """Where objects are stored."""
        return self.storage_url or f"file://{self.resolved_home / 'bucket'}"

    @property
    def cache_dir(self) -> Path:
        """Local cache folder (ONNX backbone, embeddings)."""
        if self.cache_folder is not None:
            return self.cache_folder.expanduser().resolve()
        return self.resolved_home / "cache"


def is_postgresql(url: str) -> bool:
    """Whether a database URL names PostgreSQL (``postgresql://``, ``postgres://``, ``postgresql+psycopg://``)."""
    return url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def with_driver(url: str) -> str:
    """``url`` with the driver labelloop installs: psycopg 3 for PostgreSQL (SQLAlchemy would pick psycopg2)."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


_settings: Settings | None = None


def get_settings() -> Settings:
    """The settings in force: those set by :func:`configure`, else read from the environment once."""
    global _settings
    if _settings is None:
        _settings = Settings()
    return _settings


def configure(**overrides: object) -> Settings:
    """Read the environment again and apply ``overrides`` (CLI flags; ``None`` means not given)."""
    global _settings
    given = {name: value for name, value in overrides.items() if value is not None}
    _settings = Settings(**given)
    return _settings
