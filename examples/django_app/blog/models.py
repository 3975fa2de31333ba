"""``users`` and ``posts``, column for column those of ``examples/quickstart.py``.

The tables have the same names and columns as the SQLAlchemy quickstart's, so that
``python examples/quickstart.py --orm django`` serves the same wire behaviour.
"""

from __future__ import annotations

from django.db import models


class User(models.Model):  # type: ignore[misc]  # Django ships no types
    id = models.AutoField(primary_key=True)
    name = models.CharField(max_length=200)
    email = models.CharField(max_length=200)
    status = models.CharField(max_length=50, default="active")

    class Meta:
        app_label = "blog"
        db_table = "users"


class Post(models.Model):  # type: ignore[misc]  # Django ships no types
    id = models.AutoField(primary_key=True)
    title = models.CharField(max_length=200)
    content = models.CharField(max_length=None, default="")  # no limit, as SQLAlchemy's
    # PROTECT: websocketspec deletes rows with the database's own constraints deciding
    # (Django's Python-side CASCADE would delete posts no subscriber hears of).
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="posts")

    class Meta:
        app_label = "blog"
        db_table = "posts"
