"""The models every test serves: users and posts (the spec's), and one of every type."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    LargeBinary,
    Numeric,
    String,
    Text,
    Time,
    Uuid,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# MariaDB/MySQL keep no fraction of a second unless asked: elsewhere these are the
# types SQLAlchemy picks for the annotations anyway.
MYSQL = ("mysql", "mariadb")
DATETIME = DateTime().with_variant(mysql.DATETIME(fsp=6), *MYSQL)
TIME = Time().with_variant(mysql.TIME(fsp=6), *MYSQL)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(50), default="active")
    age: Mapped[int | None]
    score: Mapped[float | None]
    active: Mapped[bool] = mapped_column(default=True)
    posts: Mapped[list[Post]] = relationship(back_populates="user")


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    content: Mapped[str] = mapped_column(Text, default="")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    rank: Mapped[int] = mapped_column(default=0)
    user: Mapped[User] = relationship(back_populates="posts")


class Thing(Base):
    """One column of every portable type."""

    __tablename__ = "things"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    count: Mapped[int | None]
    ratio: Mapped[float | None]
    price: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    label: Mapped[str | None] = mapped_column(String(100))
    body: Mapped[str | None] = mapped_column(Text)
    flag: Mapped[bool | None]
    day: Mapped[dt.date | None]
    moment: Mapped[dt.datetime | None] = mapped_column(DATETIME)
    clock: Mapped[dt.time | None] = mapped_column(TIME)
    doc: Mapped[Any] = mapped_column(JSON, nullable=True)
    blob: Mapped[bytes | None] = mapped_column(LargeBinary)


MODELS = {"public.users": User, "public.posts": Post, "public.things": Thing}
