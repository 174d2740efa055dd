"""Model hosting: loading, chat formatting, activation reading and steering."""

from steerguard.model.chat import Conversation, normalise_request
from steerguard.model.host import ModelHost

__all__ = ["Conversation", "ModelHost", "normalise_request"]
