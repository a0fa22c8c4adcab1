"""Settings, all read from the environment (`.env.example` lists every variable).

Readers fail loudly on bad values. With no DATABASE_URL / CELERY_BROKER_URL the embedded
PostgreSQL+pgvector and redis-server of `catalog_review.runtime` are used.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

from catalog_review import runtime

BASE_DIR = runtime.PROJECT_ROOT


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be >= {minimum}")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be >= {minimum}")
    return value


def database_from_url(url: str) -> dict:
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(f"DATABASE_URL must be postgres://…, got scheme {parsed.scheme!r}")
    options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": env_str("DATABASE_NAME", unquote(parsed.path.lstrip("/")) or "catalog_review"),
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": options.pop("host", parsed.hostname or ""),
        "PORT": str(parsed.port or ""),
        "OPTIONS": options,
        "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
    }


SECRET_KEY = env_str("SECRET_KEY", "")
DEBUG = env_bool("DEBUG", False)
if not SECRET_KEY:
    if not DEBUG and env_bool("REQUIRE_SECRET_KEY", False):
        raise ImproperlyConfigured("SECRET_KEY must be set in production")
    # A per-checkout key, stable across processes, for the embedded/dev setup.
    _key_file = runtime.VAR_DIR / "secret_key"
    if not _key_file.exists():
        import secrets

        runtime.VAR_DIR.mkdir(parents=True, exist_ok=True)
        _key_file.write_text(secrets.token_urlsafe(50))
    SECRET_KEY = _key_file.read_text().strip()

ALLOWED_HOSTS = [h.strip() for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_htmx",
    "template_partials",
    "ninja",  # /api/docs: Swagger UI from its own static files (no CDN)
    "catalog_review",
]

MIDDLEWARE = [
    "catalog_review.middleware.ServerTiming",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "catalog_review.urls"
WSGI_APPLICATION = "catalog_review.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "catalog_review.context_processors.active_model_version",
            ],
        },
    }
]

DATABASE_URL = env_str("DATABASE_URL", "")
EMBEDDED_POSTGRES = not DATABASE_URL
if EMBEDDED_POSTGRES:
    DATABASES = {
        "default": {
            # Django's PostgreSQL backend that starts the embedded server on first connection.
            "ENGINE": "catalog_review.embedded_db",
            "NAME": env_str("DATABASE_NAME", "catalog_review"),
            "USER": "postgres",
            "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 60),
            "CONN_HEALTH_CHECKS": True,
        }
    }
else:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
# DATABASE_POOL_MAX_SIZE > 0: each process keeps a psycopg connection pool of up to that many
# connections (Django's "pool" option) instead of one persistent connection (CONN_MAX_AGE): for threaded
# servers and workers, or a PostgreSQL whose connection set-up is slow (TLS, a remote host)
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 0, minimum=0)
if DATABASE_POOL_MAX_SIZE:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps the connections
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_MAX_SIZE,
        "timeout": env_float("DATABASE_POOL_TIMEOUT_S", 10.0, minimum=0.1),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# login throttle: after this many failed logins within LOGIN_LOCKOUT_S, an account (or an address, for
# any account) is refused until the oldest failure leaves the window
LOGIN_MAX_FAILURES_PER_ACCOUNT = env_int("LOGIN_MAX_FAILURES_PER_ACCOUNT", 5, minimum=1)
LOGIN_MAX_FAILURES_PER_ADDRESS = env_int("LOGIN_MAX_FAILURES_PER_ADDRESS", 20, minimum=1)
LOGIN_LOCKOUT_S = env_int("LOGIN_LOCKOUT_S", 900, minimum=1)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "catalogue"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(runtime.VAR_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every start when it is missing
# static files served by WhiteNoise straight from the finders: no collectstatic step for the demo
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(runtime.VAR_DIR / "media")))
# Media are served by a login-protected view (every page needs login), never publicly.
MEDIA_URL = "media/"

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
X_FRAME_OPTIONS = "DENY"

# --- Celery ---------------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "")
EMBEDDED_REDIS = not CELERY_BROKER_URL
if EMBEDDED_REDIS:
    CELERY_BROKER_URL = runtime.redis_url(env_int("EMBEDDED_REDIS_DB", 0))
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "catalog_review.tasks.*": {"queue": "default"},
    "catalog_review.gpu_tasks.*": {"queue": "gpu"},
}
CELERY_RESULT_BACKEND = None  # progress and results live in our Job table
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# a task's visibility timeout: a task not acknowledged by then (its worker was killed, or it runs
# longer) is delivered again. A train job re-delivered while it still runs is not trained twice (the
# delivery finds its heartbeat fresh, `services.jobs.job_claim_run`); one whose worker died is taken
# over once its heartbeat is JOB_HEARTBEAT_STALE_S old
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
JOB_HEARTBEAT_STALE_S = env_int("JOB_HEARTBEAT_STALE_S", 600, minimum=10)
# a chunk of a score job is claimed by the worker that runs it; a claim this old is anyone's (a hung
# worker that still answers pings)
CHUNK_LEASE_S = env_int("CHUNK_LEASE_S", 1800, minimum=10)
# the reaper (a beat task on the default queue, `services.recovery`): every REAPER_INTERVAL_S it asks the
# workers to answer (a ping) and re-publishes the chunks and train jobs held by a worker that did not,
# once their claim (and a train job's heartbeat) is REAPER_GRACE_S old: a killed worker's work is redone
# within a minute or two instead of at the broker's visibility timeout
REAPER_INTERVAL_S = env_int("REAPER_INTERVAL_S", 30, minimum=1)
REAPER_GRACE_S = env_int("REAPER_GRACE_S", 60, minimum=0)
REAPER_PING_TIMEOUT_S = env_float("REAPER_PING_TIMEOUT_S", 2.0, minimum=0.1)
# the admin dashboard's aggregates are computed in the background every DASHBOARD_REFRESH_S and read
# as stored (their age shown); a page finding them older than DASHBOARD_MAX_AGE_S (no beat running)
# computes them itself
# torch threads of each web process (catalog_review.wsgi): a search query's encoding needs one
WEB_TORCH_THREADS = env_int("WEB_TORCH_THREADS", 1, minimum=1)
# each web process loads the active version and its title encoder as it starts (in the background), so
# the first search by meaning in it does not wait 1-2 s for them
WEB_WARM_MEANING_SEARCH = env_bool("WEB_WARM_MEANING_SEARCH", True)
# a list longer than this (the planner's estimate) shows "about N" instead of counting every row
ESTIMATE_COUNTS_ABOVE = env_int("ESTIMATE_COUNTS_ABOVE", 20_000, minimum=0)
# ... and a word search's matches past this many (counting the matches of a trigram search is its cost)
SEARCH_ESTIMATE_COUNTS_ABOVE = env_int("SEARCH_ESTIMATE_COUNTS_ABOVE", 1_000, minimum=0)
DASHBOARD_REFRESH_S = env_int("DASHBOARD_REFRESH_S", 60, minimum=1)
DASHBOARD_MAX_AGE_S = env_int("DASHBOARD_MAX_AGE_S", 300, minimum=0)
CELERY_BEAT_SCHEDULE = {
    "reap-stalled-work": {"task": "catalog_review.tasks.reap_stalled_work", "schedule": REAPER_INTERVAL_S},
    "refresh-dashboard": {"task": "catalog_review.tasks.refresh_dashboard", "schedule": DASHBOARD_REFRESH_S},
}
# no task holds a worker forever: a soft limit raises inside the task (its job fails with the reason),
# the hard limit 60 s later kills the process. Training has its own, longer limit.
TASK_SOFT_TIME_LIMIT_S = env_int("TASK_SOFT_TIME_LIMIT_S", 1800, minimum=10)
TRAIN_SOFT_TIME_LIMIT_S = env_int("TRAIN_SOFT_TIME_LIMIT_S", 6 * 3600, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = TASK_SOFT_TIME_LIMIT_S
CELERY_TASK_TIME_LIMIT = TASK_SOFT_TIME_LIMIT_S + 60
CELERY_TASK_ANNOTATIONS = {
    "catalog_review.gpu_tasks.train_version": {
        "soft_time_limit": TRAIN_SOFT_TIME_LIMIT_S,
        "time_limit": TRAIN_SOFT_TIME_LIMIT_S + 60,
    },
}

# --- Catalogue import -----------------------------------------------------------------------------
IMAGE_MAX_BYTES = env_int("IMAGE_MAX_BYTES", 20 * 1024 * 1024, minimum=1)
IMAGE_MAX_PIXELS = env_int("IMAGE_MAX_PIXELS", 40_000_000, minimum=1)
IMAGE_FETCH_TIMEOUT_S = env_float("IMAGE_FETCH_TIMEOUT_S", 15.0, minimum=0.1)
IMAGE_FETCH_MAX_RETRIES = env_int("IMAGE_FETCH_MAX_RETRIES", 3)
# image URLs reach public internet addresses only; these hosts (names, addresses or networks such as
# 10.0.0.0/8, comma-separated) may be reached as well, e.g. an image server inside your network
IMAGE_FETCH_ALLOWED_HOSTS = [
    h.strip() for h in env_str("IMAGE_FETCH_ALLOWED_HOSTS", "").split(",") if h.strip()
]
TITLE_MAX_CHARS = env_int("TITLE_MAX_CHARS", 500, minimum=1)
CATALOGUE_PAGE_SIZE = env_int("CATALOGUE_PAGE_SIZE", 48, minimum=1)
# "Match meaning" search: hits less similar than this (cosine in the title space) are not shown.
# Measured: queries that mean nothing ("xxxx", "asdf") reach 0.28-0.40, real ones 0.50-1.00
MEANING_MIN_SIMILARITY = env_float("MEANING_MIN_SIMILARITY", 0.45, minimum=-1.0)
REVIEW_PAGE_SIZE = env_int("REVIEW_PAGE_SIZE", 50, minimum=1)
REVIEW_CLAIM_SECONDS = env_int("REVIEW_CLAIM_SECONDS", 300, minimum=10)  # a flag page renews it while open

# --- Model, scoring, flags -----------------------------------------------------------------------
# Model versions are written to the model store (Django storage "models": files under MODEL_STORE_DIR,
# or an S3-compatible bucket when MODEL_STORE_S3_BUCKET is set) and each worker keeps a verified copy in
# its own MODEL_DIR; FEATURE_CACHE_DIR caches backbone features per worker (an optimisation, never
# required). Workers on several machines share the store and the database, no disk.
MODEL_DIR = Path(env_str("MODEL_DIR", str(runtime.VAR_DIR / "models")))
MODEL_STORE_DIR = Path(env_str("MODEL_STORE_DIR", str(runtime.VAR_DIR / "model-store")))
MODEL_STORE_S3_BUCKET = env_str("MODEL_STORE_S3_BUCKET", "")
if MODEL_STORE_S3_BUCKET:
    STORAGES["models"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": MODEL_STORE_S3_BUCKET,
            "endpoint_url": env_str("MODEL_STORE_S3_ENDPOINT_URL", "") or None,  # MinIO, Ceph...: its URL
            "region_name": env_str("MODEL_STORE_S3_REGION", "") or None,
            "location": env_str("MODEL_STORE_S3_PREFIX", "models"),
            "file_overwrite": True,
            "querystring_auth": False,
        },  # credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, as boto3 reads them
    }
else:
    STORAGES["models"] = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MODEL_STORE_DIR), "allow_overwrite": True},
    }
FEATURE_CACHE_DIR = Path(env_str("FEATURE_CACHE_DIR", str(runtime.VAR_DIR / "feature-cache")))
ML_DEVICE = env_str("ML_DEVICE", "auto")  # auto = cuda when available, else cpu
SCORE_CHUNK_LISTINGS = env_int("SCORE_CHUNK_LISTINGS", 256, minimum=1)  # listings per embedding task
DUPLICATE_NEIGHBOURS = env_int("DUPLICATE_NEIGHBOURS", 20, minimum=1)  # kNN candidates per listing
HNSW_EF_SEARCH = env_int("HNSW_EF_SEARCH", 100, minimum=1)
# scores are probabilities (ml_worker.evidence: combiners fitted on errors planted into the catalogue);
# on hm-dev (zero-shot) 0.1 flags wrong variants at precision ~0.58 / recall ~0.9, duplicates at 0.2
# with precision ~0.75 / recall ~0.92 (BENCHMARKS.md): a reviewer's look is worth it there
FLAG_WRONG_VARIANT_THRESHOLD = env_float("FLAG_WRONG_VARIANT_THRESHOLD", 0.1)
FLAG_DUPLICATE_THRESHOLD = env_float("FLAG_DUPLICATE_THRESHOLD", 0.2)
# a score job first fits its version's scorer on at most this many listings (whole families)
SCORER_FIT_LISTINGS = env_int("SCORER_FIT_LISTINGS", 5000, minimum=50)
# at most this fraction of a version's scored listings is flagged as wrong variants (1 = no cap)
FLAG_WRONG_VARIANT_MAX_FRACTION = env_float("FLAG_WRONG_VARIANT_MAX_FRACTION", 0.1)
TRAIN_STEPS = env_int("TRAIN_STEPS", 200, minimum=1)
# a new version starts from the active version's weights when that is a trained version of the same
# configuration (the review loop's rounds: minutes instead of a full retraining), for these steps
TRAIN_WARM_START = env_bool("TRAIN_WARM_START", True)
TRAIN_WARM_STEPS = env_int("TRAIN_WARM_STEPS", 60, minimum=1)
TRAIN_FOLDS = env_int("TRAIN_FOLDS", 2, minimum=1)
# fine-tune both backbones with each version (+0.09 duplicate AP from the same reviewer labels,
# BENCHMARKS.md; minutes on a GPU, hours on a CPU): auto = when the gpu worker has CUDA
TRAIN_END_TO_END = env_choice("TRAIN_END_TO_END", "auto", ("auto", "on", "off"))
# a new version is activated when its validation PR-AUC >= the active one's minus this tolerance
PROMOTION_TOLERANCE = env_float("PROMOTION_TOLERANCE", 0.005)
# held-out reviewer-labelled pairs needed before they count in the promotion gate
PROMOTION_MIN_REVIEW_PAIRS = env_int("PROMOTION_MIN_REVIEW_PAIRS", 20, minimum=1)
SCORE_ON_IMPORT = env_bool("SCORE_ON_IMPORT", True)
# a confirmed (or undone) wrong variant re-scores its family at once (its siblings' scores change)
RESCORE_FAMILY_ON_CONFIRM = env_bool("RESCORE_FAMILY_ON_CONFIRM", True)
SCORE_AFTER_ACTIVATION = env_bool(
    "SCORE_AFTER_ACTIVATION", True
)  # activating a version re-scores  # import enqueues scoring of the changed families

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # a refused request (403, 404, 409...) is one line in the log, not a traceback: only server errors
    # (5xx) keep theirs
    "filters": {"client_errors_in_one_line": {"()": "catalog_review.log_filters.ClientErrorsInOneLine"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "filters": ["client_errors_in_one_line"]},
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "WARNING")},
}
