"""The models of ``tests/support/models.py``, column for column, as Tortoise models.

Table and column names are the SQLAlchemy models' so that every adapter serves the
same tables the same way. The tables themselves are Tortoise's (its schema generator
creates them), with Tortoise's column types: on SQLite, for example, decimals are
stored as text and UUIDs as ``CHAR(36)``.
"""

from __future__ import annotations

from typing import Any

from tortoise import fields
from tortoise.models import Model


class User(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=200)
    email = fields.CharField(max_length=200, null=True)
    status = fields.CharField(max_length=50, default="active")
    age = fields.IntField(null=True)
    score = fields.FloatField(null=True)
    active = fields.BooleanField(default=True)

    posts: fields.ReverseRelation[Post]

    class Meta:
        table = "users"


class Post(Model):
    id = fields.IntField(primary_key=True)
    title = fields.CharField(max_length=200)
    content = fields.TextField(default="")
    # The database's constraint decides, as with SQLAlchemy (NO ACTION).
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="posts", on_delete=fields.NO_ACTION
    )
    rank = fields.IntField(default=0)

    class Meta:
        table = "posts"


class Thing(Model):
    """One column of every portable type."""

    id = fields.UUIDField(primary_key=True)
    count = fields.IntField(null=True)
    ratio = fields.FloatField(null=True)
    price = fields.DecimalField(max_digits=12, decimal_places=2, null=True)
    label = fields.CharField(max_length=100, null=True)
    body = fields.TextField(null=True)
    flag = fields.BooleanField(null=True)
    day = fields.DateField(null=True)
    moment = fields.DatetimeField(null=True)
    clock = fields.TimeField(null=True)
    doc: fields.JSONField[Any] = fields.JSONField(null=True)
    blob = fields.BinaryField(null=True)

    class Meta:
        table = "things"


MODELS = {"public.users": User, "public.posts": Post, "public.things": Thing}
