"""Parameter tables (current value and every change) and their API schemas."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from labelloop.db import Base, UTCDateTime, utcnow


class Parameter(Base):
    """A named parameter's current value, as the Parameter Store holds it."""

    __tablename__ = "parameters"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    last_modified: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    modified_by: Mapped[str] = mapped_column(String(100), default="system")


class ParameterChange(Base):
    """One accepted change of a parameter: who, when, old and new value."""

    __tablename__ = "parameter_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int] = mapped_column(Integer)
    old_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    new_value: Mapped[str] = mapped_column(Text)
    changed_by: Mapped[str] = mapped_column(String(100))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ParameterRead(BaseModel):
    """A parameter as the API shows it."""

    name: str
    value: str
    type: str
    allowed: str
    description: str
    default: str | None
    version: int
    last_modified: datetime
    modified_by: str


class ParameterUpdate(BaseModel):
    """Body of ``PUT /parameters/{name}``."""

    value: str


class ParameterChangeRead(BaseModel):
    """One entry of a parameter's history."""

    name: str
    version: int
    old_value: str | None
    new_value: str
    changed_by: str
    changed_at: datetime
    run_id: str | None = None
