"""Callback modules shipped with rabbitsocks: ``callbacks.echo`` and ``callbacks.pubsub``."""
