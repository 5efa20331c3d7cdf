"""The messages that travel between services, by job: `ids` (the ids they carry), `models` (run requests, batch
envelopes, partitions), `wire` (how a batch travels as bytes), `payload` (cutting a body to fit a message) and
`deadletter` (rejected records with the reason). The models a pipeline author meets are re-exported here."""

from jetl.messages.deadletter import DeadLetter, DeadRecord
from jetl.messages.models import Batch, RunRequest

__all__ = ["Batch", "DeadLetter", "DeadRecord", "RunRequest"]
