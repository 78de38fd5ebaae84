"""Imports every module that defines workflows, so the engine knows them all before it launches."""

from labelloop.detection import flows as detection_flows
from labelloop.modeling import flows as modeling_flows
from labelloop.parameters import flows as parameter_flows
from labelloop.review import flows as review_flows
from labelloop.sampling import flows as sampling_flows
from labelloop.storage import flows as storage_flows

__all__ = ["detection_flows", "modeling_flows", "parameter_flows", "review_flows", "sampling_flows", "storage_flows"]
