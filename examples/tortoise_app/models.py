"""``users`` and ``posts``, column for column those of ``examples/quickstart.py``.

The tables have the same names and columns as the SQLAlchemy quickstart's, so that
``python examples/quickstart.py --orm tortoise`` serves the same wire behaviour (and
either ORM can serve a database the other created).
"""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

UNBOUNDED = 10_485_760
"""PostgreSQL's longest ``VARCHAR``: Tortoise's ``CharField`` needs a length, and
SQLAlchemy's ``String()`` has none (both are ``string`` columns on the wire)."""


class User(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=200)
    email = fields.CharField(max_length=200)
    status = fields.CharField(max_length=50, default="active")

    posts: fields.ReverseRelation[Post]

    class Meta:
        table = "users"


class Post(Model):
    id = fields.IntField(primary_key=True)
    title = fields.CharField(max_length=200)
    content = fields.CharField(max_length=UNBOUNDED, default="")
    # NO ACTION: websocketspec deletes rows with the database's own constraints deciding.
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="posts", on_delete=fields.NO_ACTION
    )

    class Meta:
        table = "posts"
