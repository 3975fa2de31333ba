"""Settings of the example project: one app, one database, no admin.

The database is ``app.db`` (SQLite) next to this project unless ``DATABASE_URL`` names
another (``postgresql://user@127.0.0.1:5432/app``).
"""

from __future__ import annotations

import os
from pathlib import Path

from project.database import database_settings

BASE_DIR = Path(__file__).resolve().parent.parent

# An example: never deploy with this key or with DEBUG on.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["blog"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "project.urls"

DATABASES = {
    "default": database_settings(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'app.db'}")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
TIME_ZONE = "UTC"
