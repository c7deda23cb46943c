"""http(s) image URLs, fetched by the gateway only where the operator enabled them (GATEWAY_IMAGE_URLS=1).

A URL is a way into the gateway's network, so the fetch is held in: one deadline for the whole of it
(resolving, connecting, redirects, the body), at most MAX_REDIRECTS redirects, each followed by hand, and no
target (first or redirected) whose address is loopback, private, link-local or otherwise not public unless it
is in a network the operator allows (GATEWAY_IMAGE_URL_NETWORKS). The connection goes to the address that was
checked (the Host header and TLS name stay the URL's), so a name that resolves differently the second time
cannot get round the check. The client learns what went wrong in its own terms, never an upstream's error text.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from urllib.parse import urljoin

import httpx

from gateway.config import GatewaySettings
from gateway.errors import APIError
from protocol import ErrorCode

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
log = logging.getLogger("gateway.images")
MAX_REDIRECTS = 3


def _refused(message: str, param: str) -> APIError:
    return APIError(ErrorCode.INVALID_REQUEST, message, param=param)


def _allowed(address: IPAddress, networks: list[IPNetwork]) -> bool:
    return (address.is_global and not address.is_multicast) or any(address in network for network in networks)


async def _address(url: httpx.URL, networks: list[IPNetwork], param: str) -> str:
    """The address to connect to for `url`: the first its host resolves to, refused if any is not allowed."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise _refused(f"The image URL's host {url.host!r} could not be resolved", param) from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not all(_allowed(address, networks) for address in addresses):
        raise _refused("The image URL points at a private, loopback or link-local address", param)
    return str(addresses[0])


def _pinned(url: httpx.URL, address: str) -> httpx.Request:
    """A GET to `address` for `url`: the Host header and the TLS server name stay the URL's host."""
    target = url.copy_with(host=address)
    return httpx.Request("GET", target, headers={"Host": url.netloc.decode()}, extensions={"sni_hostname": url.host})


async def _get(client: httpx.AsyncClient, url: httpx.URL, settings: GatewaySettings, param: str) -> bytes:
    limit = settings.max_image_bytes
    networks = [ipaddress.ip_network(n, strict=False) for n in settings.image_url_networks]
    for _ in range(MAX_REDIRECTS + 1):
        if url.scheme not in ("http", "https"):
            raise _refused("The image URL redirects to something other than an http(s) URL", param)
        address = await _address(url, networks, param)
        response = await client.send(_pinned(url, address), stream=True)
        try:
            if response.is_redirect:
                url = httpx.URL(urljoin(str(url), response.headers.get("location", "")))
                continue
            if response.status_code != 200:
                raise _refused(f"Fetching the image gave HTTP {response.status_code}", param)
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > limit:
                    raise APIError(
                        ErrorCode.INVALID_REQUEST,
                        f"The image is too large (more than {limit} bytes); the limit is {limit} bytes",
                        param=param,
                        status=413,
                    )
            return bytes(data)
        finally:
            await response.aclose()
    raise _refused(f"The image URL redirects more than {MAX_REDIRECTS} times", param)


async def fetch_image(url: str, settings: GatewaySettings, param: str) -> bytes:
    """The bytes at `url`, within the limits above; raises APIError (400, 413) naming `param`."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise _refused("The image URL is not a valid URL", param) from None
    try:
        async with asyncio.timeout(settings.image_fetch_timeout), httpx.AsyncClient(follow_redirects=False) as client:
            return await _get(client, parsed, settings, param)
    except TimeoutError:
        raise _refused(f"Fetching the image took longer than {settings.image_fetch_timeout:g}s", param) from None
    except httpx.HTTPError as exc:  # the details are for the log: they may hold what the network looks like inside
        log.info("fetching an image from %s failed: %r", parsed.host, exc)
        raise _refused("The image could not be fetched", param) from None
