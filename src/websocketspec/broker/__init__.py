"""Brokers carry committed changes from the write path to every subscription matcher."""

from websocketspec.broker.base import Broker, ChangeSink
from websocketspec.broker.memory import MemoryBroker
from websocketspec.broker.relay import Relay
from websocketspec.broker.url import broker_from_url

__all__ = ["Broker", "ChangeSink", "MemoryBroker", "Relay", "broker_from_url"]
