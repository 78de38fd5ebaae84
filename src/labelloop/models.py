"""Every table, so Alembic and the engine see the whole schema."""

from labelloop.db import Base
from labelloop.detection.models import DetectionEvent
from labelloop.modeling.models import ModelVersion, UnusableImage
from labelloop.notifications.models import Notification
from labelloop.parameters.models import Parameter, ParameterChange
from labelloop.review.models import GoldTask, HumanLoop, TaskTemplate
from labelloop.workforce.models import ApiToken, User

metadata = Base.metadata

__all__ = ["ApiToken", "DetectionEvent", "GoldTask", "HumanLoop", "ModelVersion", "Notification", "Parameter",
           "ParameterChange", "TaskTemplate", "UnusableImage", "User", "metadata"]
