"""The gateway's configuration, in one place, from its two sources:

file.py  the shared config file's `services:` (who may call, with which keys, for which models, how often) and
         `gateway:` (transport settings) sections: GatewayConfig, load_gateway_config
env.py   the environment (12-factor: one gateway image, many deployments): GatewaySettings

Import both from here: `from gateway.config import GatewayConfig, GatewaySettings, load_gateway_config`.
"""

from gateway.config.env import GatewaySettings
from gateway.config.file import (
    DEFAULT_CONFIG,
    SHA256_HEX,
    GatewayConfig,
    RateLimits,
    ServiceLimits,
    ServiceSpec,
    TransportSettings,
    load_gateway_config,
)

__all__ = [
    "DEFAULT_CONFIG",
    "SHA256_HEX",
    "GatewayConfig",
    "GatewaySettings",
    "RateLimits",
    "ServiceLimits",
    "ServiceSpec",
    "TransportSettings",
    "load_gateway_config",
]
