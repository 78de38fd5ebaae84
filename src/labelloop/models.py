"""Every table, so Alembic and the engine see the whole schema."""

from labelloop.db import Base
from labelloop.notifications.models import Notification
from labelloop.parameters.models import Parameter, ParameterChange
from labelloop.workforce.models import ApiToken, User

metadata = Base.metadata

__all__ = ["ApiToken", "Notification", "Parameter", "ParameterChange", "User", "metadata"]
