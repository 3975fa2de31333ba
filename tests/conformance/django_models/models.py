"""The models of ``tests/support/models.py``, column for column, as Django models.

Table and column names are the SQLAlchemy models' so that both adapters serve the same
tables the same way.
"""

from __future__ import annotations

import uuid

from django.db import models


class User(models.Model):  # type: ignore[misc]  # Django ships no types
    id = models.AutoField(primary_key=True)
    name = models.CharField(max_length=200)
    email = models.CharField(max_length=200, null=True)
    status = models.CharField(max_length=50, default="active")
    age = models.IntegerField(null=True)
    score = models.FloatField(null=True)
    active = models.BooleanField(default=True)

    class Meta:
        app_label = "django_models"
        db_table = "users"


class Post(models.Model):  # type: ignore[misc]  # Django ships no types
    id = models.AutoField(primary_key=True)
    title = models.CharField(max_length=200)
    content = models.TextField(default="")
    # The database's constraint decides, as with SQLAlchemy (the adapter never runs
    # Django's Python-side on_delete handlers).
    user = models.ForeignKey(User, on_delete=models.DO_NOTHING, related_name="posts")
    rank = models.IntegerField(default=0)

    class Meta:
        app_label = "django_models"
        db_table = "posts"


class Thing(models.Model):  # type: ignore[misc]  # Django ships no types
    """One column of every portable type."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    count = models.IntegerField(null=True)
    ratio = models.FloatField(null=True)
    price = models.DecimalField(max_digits=12, decimal_places=2, null=True)
    label = models.CharField(max_length=100, null=True)
    body = models.TextField(null=True)
    flag = models.BooleanField(null=True)
    day = models.DateField(null=True)
    moment = models.DateTimeField(null=True)
    clock = models.TimeField(null=True)
    doc = models.JSONField(null=True)
    blob = models.BinaryField(null=True)

    class Meta:
        app_label = "django_models"
        db_table = "things"


MODELS = {"public.users": User, "public.posts": Post, "public.things": Thing}
