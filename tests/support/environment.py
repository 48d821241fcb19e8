"""The dispatcher environment tests run in: local servers on loopback are allowed."""

from delivery.dispatchers import DispatcherEnvironment

LOCAL = DispatcherEnvironment(allow_private_networks=True)
