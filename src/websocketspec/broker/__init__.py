"""Brokers carry committed changes from the write path to every subscription matcher."""

from websocketspec.broker.base import Broker, ChangeSink
from websocketspec.broker.memory import MemoryBroker

__all__ = ["Broker", "ChangeSink", "MemoryBroker"]
