"""SQLModel models of the spec's users and posts, for ``tests/integration/test_sqlmodel.py``.

No ``from __future__ import annotations`` here: SQLModel reads the relationships'
annotations when it builds each class and cannot resolve postponed (string) ones.
"""

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import Text
from sqlmodel import Field, Relationship, SQLModel


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    email: str | None = None
    status: str = "active"
    active: bool = True
    age: int | None = None
    score: float | None = None
    balance: Decimal | None = Field(default=None, max_digits=10, decimal_places=2)
    joined: dt.datetime | None = None
    key: uuid.UUID = Field(default_factory=uuid.uuid4)
    posts: list["Post"] = Relationship(back_populates="user")


class Post(SQLModel, table=True):
    __tablename__ = "posts"

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=200)
    body: str = Field(default="", sa_type=Text)
    user_id: int = Field(foreign_key="users.id")
    published: dt.date | None = None
    user: User | None = Relationship(back_populates="posts")


MODELS = {"public.users": User, "public.posts": Post}
