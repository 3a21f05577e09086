"""OCI Usage API: daily cost by service and the team tag.

One ``UsageapiClient.request_summarized_usages`` query (``POST
/20200107/usage``) per refresh, DAILY granularity, ``queryType`` COST, grouped
by ``service``, ``compartmentName`` and ``tenantName`` and by the configured
defined tag, paged with ``opc-next-page``. Compartments are summed away (they
are not a label); the tenancy name feeds ``spend_account_info``.

Two gaps in the API are handled explicitly:

* ``computedAmount`` may be null (usage not yet rated). Such an item is passed
  on with a NaN amount, so the engine skips it and counts it under
  ``not_a_number``; it is never read as zero.
* ``currency`` may be null or blank in grouped results. The configured
  ``currency`` (the subscription's currency) is used then; without it the item
  keeps a blank currency and the engine skips it and counts it under
  ``no_rate_BLANK``. A blank is never read as USD.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections import defaultdict
from decimal import Decimal
from typing import Any

import oci

from exporter.model import AccountInfo, CostRecord, FetchResult, FetchWindow, RawFetch
from exporter.providers.base import (
    LabelChoice,
    ProviderContext,
    SourceError,
    Throttled,
    choices_from_context,
    paginate,
    query_cells,
    split_by_labels,
    utc_midnight,
)
from exporter.sources.oci import OciSource

PROVIDER = "oci"
OPERATION = "RequestSummarizedUsages"
GROUP_BY = ["service", "compartmentName", "tenantName"]
MAX_PAGES = 10_000  # a runaway opc-next-page loop is a bug, not data
UNKNOWN_SERVICE = "unknown"


class OciProvider:
    """Daily cost from the OCI Usage API through the ``oci`` SDK.

    Authentication is the SDK's config file (``config_file`` + ``profile``) or
    instance principals (``auth: instance_principal``); ``service_endpoint``
    replaces the regional endpoint.
    """

    def __init__(self, config: OciSource, ctx: ProviderContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self._auth: tuple[dict[str, Any], Any] | None = None

    # -- clients ----------------------------------------------------------------------------
    def _credentials(self) -> tuple[dict[str, Any], Any]:
        """The SDK config dict and signer (None: the client signs with the config's API key)."""
        if self._auth is not None:
            return self._auth
        if self.cfg.auth == "instance_principal":
            try:
                signer = oci.auth.signers.InstancePrincipalsSecurityTokenSigner()
            except Exception as e:
                raise SourceError(
                    f"OCI instance principal authentication failed: {e.__class__.__name__}: {e}"
                ) from None
            region = self.cfg.region or getattr(signer, "region", None)
            self._auth = ({"region": region} if region else {}, signer)
            return self._auth
        path = os.path.expanduser(self.cfg.config_file)
        try:
            sdk_config: dict[str, Any] = oci.config.from_file(path, self.cfg.profile)
        except oci.exceptions.ConfigFileNotFound:
            raise SourceError(f"OCI config file {path} not found") from None
        except oci.exceptions.ProfileNotFound:
            raise SourceError(f"profile {self.cfg.profile!r} not found in OCI config file {path}") from None
        except (oci.exceptions.ClientError, ValueError, OSError) as e:
            raise SourceError(f"cannot read OCI config file {path}: {e.__class__.__name__}: {e}") from None
        for secret in ("pass_phrase", "key_content"):
            self.ctx.register_secret(sdk_config.get(secret))
        if self.cfg.region:
            sdk_config["region"] = self.cfg.region
        try:
            oci.config.validate_config(sdk_config)
        except oci.exceptions.InvalidConfig as e:
            raise SourceError(f"invalid OCI config file {path} [{self.cfg.profile}]: {e}") from None
        self._auth = (sdk_config, None)
        return self._auth

    def _retry_strategy(self, budget: float) -> Any:
        # The operation is not retried by default; retry throttles (429), 5xx and
        # timeouts a bounded number of times, within the refresh's time budget.
        return oci.retry.RetryStrategyBuilder(
            max_attempts_check=True,
            max_attempts=self.cfg.retry_max_attempts,
            total_elapsed_time_check=True,
            total_elapsed_time_seconds=max(budget, 1.0),
            service_error_check=True,
            service_error_retry_config={429: []},
            service_error_retry_on_any_5xx=True,
            retry_base_sleep_time_seconds=self.cfg.retry_base_delay,
            retry_max_wait_between_calls_seconds=self.cfg.retry_max_delay,
            backoff_type=oci.retry.BACKOFF_FULL_JITTER_EQUAL_ON_THROTTLE_VALUE,
        ).get_retry_strategy()

    def _client(self, read_timeout: float) -> Any:
        sdk_config, signer = self._credentials()
        kwargs: dict[str, Any] = {
            "timeout": (min(10.0, read_timeout), read_timeout),
            # the scheduler already backs off a failing source; a breaker would only hide the error
            "circuit_breaker_strategy": oci.circuit_breaker.NoCircuitBreakerStrategy(),
        }
        if signer is not None:
            kwargs["signer"] = signer
        if self.cfg.service_endpoint:
            kwargs["service_endpoint"] = self.cfg.service_endpoint
        try:
            return oci.usage_api.UsageapiClient(sdk_config, **kwargs)
        except Exception as e:
            raise SourceError(f"cannot create the OCI Usage API client: {e.__class__.__name__}: {e}") from None

    # -- fetching ---------------------------------------------------------------------------
    def fetch(self, window: FetchWindow) -> FetchResult:
        budget = self.ctx.remaining_seconds(self.cfg.timeout)
        client = self._client(budget)
        retry_strategy = self._retry_strategy(budget)
        team_tag = self.cfg.team_tag
        team = [oci.usage_api.models.Tag(namespace=team_tag.namespace, key=team_tag.key)] if team_tag else None
        raw = RawFetch()

        def query(group_by_tag: list[Any] | None, flt: Any = None, **meta: Any) -> None:
            details = oci.usage_api.models.RequestSummarizedUsagesDetails(
                tenant_id=self.cfg.tenancy_id,
                time_usage_started=utc_midnight(window.start),
                time_usage_ended=utc_midnight(window.end, 1),  # exclusive
                granularity="DAILY",
                query_type="COST",
                group_by=list(GROUP_BY),
                group_by_tag=group_by_tag,
                filter=flt,
            )
            self._pages(client, details, retry_strategy, raw, meta)

        query(team)
        labels = self._label_tags()
        if labels:
            choices = self._label_choices(raw, labels, query)
            raw.context = {"choices": choices}

            def run(exprs: list[Any]) -> None:
                if exprs:  # the unfiltered request is the team's, made above
                    query(team, _filter(exprs), cell=exprs)

            query_cells(choices, run)
        return self.parse(window, raw)

    def _pages(self, client: Any, details: Any, retry_strategy: Any, raw: RawFetch, meta: dict[str, Any]) -> None:
        """Every page of one request into ``raw``, marked with ``meta`` (none: the request by the team's tag)."""
        params = oci.util.to_dict(details)

        def page(token: str | None) -> tuple[None, str | None]:
            with self.ctx.api_call(OPERATION):
                response = self._request(client, details, token, retry_strategy)
                page_items = getattr(response.data, "items", None)
                if not isinstance(page_items, list):
                    # the SDK maps a body that is not JSON to an empty model too: the two look alike here
                    raise SourceError("OCI Usage API returned a malformed or unexpected body: no list of items")
                if not all(isinstance(getattr(i, "time_usage_started", None), dt.datetime) for i in page_items):
                    raise SourceError("OCI Usage API returned an unexpected body: an item without timeUsageStarted")
            # the SDK's model as it is; kept, as its own to_dict writes it (timestamps in ISO 8601 UTC): parse reads
            # either, and a refresh without raw_retention converts nothing (to_dict costs 60 µs an item)
            request = {"method": "POST", "operation": f"usage_api:{OPERATION}", "params": params, "page": token}
            raw.add(OPERATION, request, response.data, as_json=oci.util.to_dict, **meta)
            return None, response.next_page or None

        for _ in paginate(f"OCI Usage API {OPERATION}", page, max_pages=MAX_PAGES):
            pass

    # -- extra labels (attribution.labels) ----------------------------------------------------------
    def _label_tags(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """The extra labels' defined tags, ``namespace.key`` (a key without a namespace is not read on OCI)."""
        out = []
        for name, keys in self.ctx.extra_labels:
            tags = [tuple(k.split(".", 1)) for k in keys if "." in k.strip(".")]
            if tags:
                out.append((name, [(ns, key) for ns, key in tags]))
        return out

    def _label_choices(
        self, raw: RawFetch, labels: list[tuple[str, list[tuple[str, str]]]], query: Any
    ) -> list[list[LabelChoice]]:
        """For each extra label, its values: one request grouped by each of its tags (``groupByTag`` takes one tag,
        the team's in the others). A value is the filter ``{"op": "AND", "tags": [[namespace, key, value]]}``; a
        second tag's values exclude the first tag's (inclusion-exclusion, ``split_by_labels``)."""
        choices: list[list[LabelChoice]] = []
        for name, tags in labels:
            mine: list[LabelChoice] = []
            earlier: list[Any] = []
            for ns, key in tags:
                query([oci.usage_api.models.Tag(namespace=ns, key=key)], tag=f"{ns}.{key}")
                values = sorted(
                    {
                        str(_get(t, "value")).strip()
                        for item in _items(raw, {"tag": f"{ns}.{key}"})
                        for t in (_get(item, "tags") or [])
                        if _same_tag(t, ns, key) and _get(t, "value") and str(_get(t, "value")).strip()
                    }
                )
                for v in values:
                    mine.append((name, v, [{"op": "AND", "tags": [[ns, key, v]]}], list(earlier)))
                if values:
                    earlier.append({"op": "OR", "tags": [[ns, key, v] for v in values]})
            choices.append(mine)
        return choices

    def _request(self, client: Any, details: Any, page: str | None, retry_strategy: Any) -> Any:
        try:
            return client.request_summarized_usages(details, page=page, retry_strategy=retry_strategy)
        except oci.exceptions.ServiceError as e:
            where = f"(opc-request-id {e.request_id})" if e.request_id else ""
            if e.status == 429:
                retry_after = _float((e.headers or {}).get("retry-after"))
                attempts = self.cfg.retry_max_attempts
                raise Throttled(
                    f"OCI Usage API throttled the request (429 {e.code}) after {attempts} attempts {where}".rstrip(),
                    retry_after=retry_after,
                ) from None
            # code and message are None when the body is not OCI's error object (a proxy's or load balancer's reply)
            what = " ".join(str(x) for x in (e.status, e.code) if x is not None)
            detail = f": {e.message}" if e.message else ""
            raise SourceError(f"OCI Usage API error {what}{detail} {where}".rstrip()) from None
        except (oci.exceptions.RequestException, oci.exceptions.ConnectTimeout) as e:
            raise SourceError(f"OCI Usage API request failed: {_transport_error(e)}") from None
        except ValueError as e:
            raise SourceError(f"OCI Usage API returned a malformed body: {e}") from None
        except Exception as e:
            raise SourceError(f"OCI Usage API call failed: {e.__class__.__name__}: {_first_line(e)}") from None

    def parse(self, window: FetchWindow, raw: RawFetch) -> FetchResult:
        """The records of the pages ``fetch`` kept (live or from the cache); no API call.

        With extra labels, the costs split exactly by their values: each combination of values is a request
        filtered on those tags (``split_by_labels``); unrated items, names and data through come from the
        unfiltered request."""
        result = self._result(window, raw, _items(raw, {}))
        try:
            choices = choices_from_context(raw.context.get("choices", []))
        except (TypeError, ValueError, IndexError):
            raise SourceError("OCI Usage API pages without the extra labels' values they were fetched with") from None
        if not choices:
            return result

        def run(exprs: list[Any]) -> dict[tuple[dt.date, str, str | None, str], Decimal]:
            items = _items(raw, {"cell": exprs} if exprs else {})
            sums: dict[tuple[dt.date, str, str | None, str], Decimal] = defaultdict(Decimal)
            for c in self._result(window, raw, items, quiet=True).costs:
                if c.amount == c.amount:  # not the unrated (NaN) ones
                    sums[(c.day, c.service_name, c.team_tag, c.currency)] += Decimal(repr(c.amount))
            return sums

        cells = split_by_labels(choices, run)
        result.costs = [c for c in result.costs if c.amount != c.amount]  # keep the unrated (NaN) records
        result.costs += [
            CostRecord(day, PROVIDER, self.cfg.tenancy_id, service, float(amount), currency, team_, "", labels_)
            for labels_, cell in sorted(cells.items())
            for (day, service, team_, currency), amount in sorted(cell.items(), key=lambda kv: _sort_key(kv[0]))
        ]
        return result

    def _result(self, window: FetchWindow, raw: RawFetch, items: list[Any], quiet: bool = False) -> FetchResult:
        """The records of the items; ``quiet``: no warnings (a filtered request of the extra labels' split)."""
        account = self.cfg.tenancy_id
        sums: dict[tuple[dt.date, str, str | None, str], float] = defaultdict(float)
        unrated: list[CostRecord] = []
        names: set[str] = set()
        blank_currency = 0
        data_through: dt.datetime | None = None
        fallback_currency = (self.cfg.currency or "").upper()
        for item in items:
            started = _time(_get(item, "time_usage_started"))
            if started is None:
                raise SourceError("OCI Usage API returned an unexpected body: an item without timeUsageStarted")
            if _get(item, "is_forecast"):
                continue
            day = started.astimezone(dt.UTC).date()
            service = (_get(item, "service") or "").strip() or UNKNOWN_SERVICE
            team = self._team(_get(item, "tags"))
            tenant_name = _get(item, "tenant_name")
            if tenant_name:
                names.add(tenant_name)
            currency = (_get(item, "currency") or "").strip().upper()
            if not currency:
                blank_currency += 1
                currency = fallback_currency
            amount = _get(item, "computed_amount")
            if amount is None:
                unrated.append(CostRecord(day, PROVIDER, account, service, math.nan, currency, team))
                continue
            if not isinstance(amount, int | float):
                raise SourceError(f"OCI Usage API returned an unexpected body: computedAmount {amount!r}")
            sums[(day, service, team, currency)] += float(amount)
            ended = _time(_get(item, "time_usage_ended"))
            if ended is not None and (data_through is None or ended > data_through):
                data_through = ended
        if unrated and not quiet:
            self.ctx.log.warning(
                "source %s: %d OCI usage items have no computedAmount (not rated yet); skipped",
                self.ctx.source_name,
                len(unrated),
            )
        if blank_currency and not fallback_currency and not quiet:
            self.ctx.log.warning(
                "source %s: %d OCI usage items have a blank currency; set `currency` on the source to your "
                "subscription's currency, until then they are skipped",
                self.ctx.source_name,
                blank_currency,
            )
        costs = [
            CostRecord(day, PROVIDER, account, service, amount, currency, team)
            for (day, service, team, currency), amount in sorted(sums.items(), key=lambda kv: _sort_key(kv[0]))
        ]
        costs.extend(unrated)
        accounts = [AccountInfo(PROVIDER, account, sorted(names)[0])] if names else []
        return FetchResult(days=window.days(), costs=costs, accounts=accounts, data_through=data_through, raw=raw)

    def _team(self, tags: Any) -> str | None:
        wanted = self.cfg.team_tag
        if wanted is None or not isinstance(tags, list):
            return None
        for tag in tags:
            # defined-tag namespaces and keys are case-insensitive in OCI
            if (_get(tag, "namespace") or "").casefold() == wanted.namespace.casefold() and (
                _get(tag, "key") or ""
            ).casefold() == wanted.key.casefold():
                value = (_get(tag, "value") or "").strip()
                return value or None
        return None

    def close(self) -> None:
        self._auth = None


def _items(raw: RawFetch, meta: dict[str, Any]) -> list[Any]:
    """The items of the pages of one request (by its ``meta``); none kept for it is an error."""
    pages = [p for p in raw.pages if p.meta == meta]
    if not pages:
        raise SourceError(f"OCI Usage API pages of a request ({meta or 'by team tag'}) are missing")
    try:
        return [item for p in pages for item in _get(p.body, "items")]
    except TypeError:
        raise SourceError("OCI Usage API returned a malformed or unexpected body: no list of items") from None


def _filter(exprs: list[Any]) -> Any:
    """The request's filter of extra-label expressions (``OciProvider._label_choices``), all of them at once."""
    tag, flt = oci.usage_api.models.Tag, oci.usage_api.models.Filter
    parts = [flt(operator=e["op"], tags=[tag(namespace=n, key=k, value=v) for n, k, v in e["tags"]]) for e in exprs]
    return parts[0] if len(parts) == 1 else flt(operator="AND", filters=parts)


def _same_tag(tag: Any, namespace: str, key: str) -> bool:
    """Defined-tag namespaces and keys are case-insensitive in OCI."""
    return (_get(tag, "namespace") or "").casefold() == namespace.casefold() and (
        _get(tag, "key") or ""
    ).casefold() == key.casefold()


def _get(obj: Any, name: str) -> Any:
    """A field of the SDK's model (live) or of the dict ``oci.util.to_dict`` made of it (kept); None if absent."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _time(value: Any) -> dt.datetime | None:
    """A timestamp: the SDK's datetime (naive is UTC), or ``oci.util.to_dict``'s ISO 8601; None if neither."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _sort_key(key: tuple[dt.date, str, str | None, str]) -> tuple[dt.date, str, str, str]:
    day, service, team, currency = key
    return (day, service, team or "", currency)


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _transport_error(e: BaseException) -> str:
    """A short reason for a failed request; the SDK wraps the ``requests`` exception in its own."""
    inner = e.args[0] if e.args and isinstance(e.args[0], BaseException) else e
    # the SDK raises its vendored copy of requests' exceptions: compare by name
    names = {cls.__name__ for cls in type(inner).__mro__}
    if names & {"Timeout", "ReadTimeout", "ConnectTimeout", "BaseConnectTimeout"}:
        return "timed out"
    if "ConnectionError" in names:
        return "connection failed"
    return f"{inner.__class__.__name__}: {_first_line(inner)}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""
