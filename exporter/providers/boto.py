"""What the providers that speak to AWS through boto3 share: clients, error mapping, one counted request.

Used by Cost Explorer (``aws``) and the focus source's Athena engine (``focus_athena``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from exporter.providers.base import ProviderContext, RetryPolicy, SourceError, Throttled

THROTTLE_CODES = frozenset(
    {"LimitExceededException", "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)


def boto_clients(
    session: Any,
    ctx: ProviderContext,
    timeout: float,
    endpoint_url: str | None,
    services: tuple[str, ...],
    max_read_timeout: float | None = None,
) -> list[Any]:
    """boto3 clients for one refresh: timeouts follow the time left in it, botocore's own retries are off
    (retries are ours, so every request is counted), and the credentials are registered as secrets."""
    left = max(min(timeout, ctx.remaining_seconds(timeout)), 1.0)
    botocfg = BotoConfig(
        connect_timeout=min(left, 10.0),
        read_timeout=min(left, max_read_timeout) if max_read_timeout else left,
        retries={"total_max_attempts": 1, "mode": "standard"},
        user_agent_extra="spend-exporter",
    )
    creds = session.get_credentials()
    if creds is None:
        raise SourceError(
            "no AWS credentials found (environment, shared config and credentials files, SSO, container or "
            "instance role)"
        )
    frozen = creds.get_frozen_credentials()
    ctx.register_secret(frozen.secret_key)
    ctx.register_secret(frozen.token)
    return [session.client(name, endpoint_url=endpoint_url, config=botocfg) for name in services]


def boto_error(operation: str, e: Exception) -> SourceError:
    """A botocore exception as ``Throttled`` or ``SourceError`` with the service's code and message."""
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code") or "")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(err.get("Message") or "").strip()
        if code in THROTTLE_CODES or "rate exceeded" in message.lower():
            return Throttled(f"{operation}: throttled by AWS ({code})")
        detail = f": {message}" if message else ""
        kind = f" {code}" if code and code != str(status) else ""  # botocore makes the status the code of a bare error
        return SourceError(f"{operation} failed: HTTP {status}{kind}{detail}")
    return SourceError(f"{operation} failed: {e.__class__.__name__}: {e}")


def boto_call(
    ctx: ProviderContext,
    retry: RetryPolicy,
    operation: str,
    method: Callable[..., Any],
    params: dict[str, Any],
    *,
    label: str | None = None,
    cost_usd: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """One request through ``ctx.call`` (counted as ``operation``, retried while throttled); its response.

    ``label`` names the request in error messages (default: ``operation``).
    """
    what = label or operation

    def attempt() -> Any:
        try:
            return method(**params)
        except (ClientError, BotoCoreError) as e:
            raise boto_error(what, e) from None

    response = ctx.call(operation, attempt, retry, cost_usd=cost_usd, sleep=sleep)
    if not isinstance(response, dict):
        raise SourceError(f"{what}: unexpected response type {type(response).__name__}")
    return response
