"""The whole event contract as one AsyncAPI document, generated from the same models:

faststream docs gen lifeboat.common.asyncapi:app --yaml --out docs/asyncapi.yaml
"""

from __future__ import annotations

from faststream import FastStream
from faststream.nats import JStream, NatsBroker
from faststream.specification import AsyncAPI

from lifeboat.common.events import EVENT_TYPES
from lifeboat.common.subjects import ALL_TOPICS, Topic


def _channel(topic: Topic) -> str:
    return ".".join([topic.name, *(f"{{{p}}}" for p in topic.params)])


def build_broker() -> NatsBroker:
    broker = NatsBroker(
        description=(
            "NATS JetStream; node.health and wal.archived are kept in LIFEBOAT_HEARTBEATS "
            "(short retention), every other subject in LIFEBOAT_EVENTS (the history)"
        )
    )
    for topic in ALL_TOPICS:
        broker.publisher(
            _channel(topic),
            stream=JStream(topic.stream, declare=False),
            title=topic.name,
            description=topic.description,
            schema=EVENT_TYPES[topic.name],
        )
    return broker


app = FastStream(
    build_broker(),
    specification=AsyncAPI(
        title="Lifeboat events",
        version="0.1.0",
        description=(
            "Every event Lifeboat services publish. Payloads are JSON with one envelope "
            "(event_id, type, occurred_at, source, cluster, epoch); `type` equals the subject's "
            "leading tokens. Publishes carry Nats-Msg-Id = event_id for de-duplication."
        ),
    ),
)
