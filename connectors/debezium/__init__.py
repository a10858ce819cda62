"""Debezium PostgreSQL connector records: the event model and the decoder."""

from connectors.debezium.decode import Decoder, InvalidEvent
from connectors.debezium.model import Event

__all__ = ["Decoder", "Event", "InvalidEvent"]
