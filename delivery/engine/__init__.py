"""The sending engine: deliver one message, from claim to recorded attempt.

``service`` (claim, send, record, decide), ``instances`` (a dispatcher per channel, rebuilt
when the channel changes), ``channels`` (the channel store), ``breaker`` (the per-channel
circuit breaker), ``ratelimit``, ``retry`` (the retry policy), ``crypto`` (channel secrets at
rest), and ``assembly``: the one place that builds all of it from settings.
"""

from delivery.engine.assembly import Assembly, assemble
from delivery.engine.channels import Channel, ChannelStore
from delivery.engine.service import Decision, DeliveryService

__all__ = ["Assembly", "Channel", "ChannelStore", "Decision", "DeliveryService", "assemble"]
