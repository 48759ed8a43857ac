"""Each item's network namespace, with deny-all egress plus the policy's allow-list."""

from infrastructure.sandbox.network.item_network import RESOLV_CONF, ItemNetwork

__all__ = ["RESOLV_CONF", "ItemNetwork"]
