"""The ``guard:`` section: which alerts the guard acts on, and how (``exporter.guard``, docs/guard.md).

Each rule is told apart by its ``action``, so that a bad parameter names its key
(``guard.rules[0].params.max_requests_per_1_minute``). What needs the sources (the AI source whose write
key a rule uses) is checked by ``exporter.config``, which sees both.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from exporter.config_types import ConfigModel, Duration, EnvName, NonEmptyStr

GUARD_ACTIONS = ("openai_project_rate_limit", "anthropic_api_key_status", "webhook")
ACTION_PROVIDER = {"openai_project_rate_limit": "openai", "anthropic_api_key_status": "anthropic"}
"""Actions that write to an AI provider's Admin API, and that provider (its source's ``write_key_env``)."""

OPENAI_RATE_LIMIT_FIELDS = (
    "max_requests_per_1_minute",
    "max_tokens_per_1_minute",
    "max_images_per_1_minute",
    "max_audio_megabytes_per_1_minute",
    "max_requests_per_1_day",
    "batch_1_day_max_input_tokens",
)
"""The fields of a project rate limit the update endpoint takes (openai SDK ``update_rate_limit``)."""

Limit = Annotated[int, Field(ge=0)]
RuleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]


class OpenAIRateLimitParams(ConfigModel):
    max_requests_per_1_minute: Limit | None = None
    max_tokens_per_1_minute: Limit | None = None
    max_images_per_1_minute: Limit | None = None
    max_audio_megabytes_per_1_minute: Limit | None = None
    max_requests_per_1_day: Limit | None = None
    batch_1_day_max_input_tokens: Limit | None = None

    @model_validator(mode="after")
    def _some(self) -> OpenAIRateLimitParams:
        if not self.limits():
            raise ValueError(f"give at least one of {', '.join(OPENAI_RATE_LIMIT_FIELDS)}")
        return self

    def limits(self) -> dict[str, int]:
        """The fields to set, and their new values."""
        return {f: v for f in OPENAI_RATE_LIMIT_FIELDS if (v := getattr(self, f)) is not None}


class AnthropicKeyParams(ConfigModel):
    lookback: Annotated[Duration, Field(ge=300, le=3600)] = 900.0
    """How far back a key's use of the model counts as "burning" (minute usage buckets)."""


class WebhookParams(ConfigModel):
    url_env: EnvName
    """The variable holding the URL (it may carry a token, so it is never written in the file)."""
    timeout: Annotated[Duration, Field(le=30)] = 10.0


class _RuleBase(ConfigModel):
    name: RuleName
    match: Annotated[dict[NonEmptyStr, str], Field(min_length=1)]
    """Alert labels and the values they must have, all of them (``alertname`` among them, usually)."""
    source: str | None = None
    """The AI source whose ``write_key_env`` and ``base_url`` the action uses (default: the only one of its
    provider)."""


class OpenAIRateLimitRule(_RuleBase):
    action: Literal["openai_project_rate_limit"]
    params: OpenAIRateLimitParams


class AnthropicKeyStatusRule(_RuleBase):
    action: Literal["anthropic_api_key_status"]
    params: AnthropicKeyParams = AnthropicKeyParams()


class WebhookRule(_RuleBase):
    action: Literal["webhook"]
    params: WebhookParams


GuardRule = Annotated[Union[OpenAIRateLimitRule, AnthropicKeyStatusRule, WebhookRule], Field(discriminator="action")]


class GuardConfig(ConfigModel):
    mode: Literal["dry_run", "enforce"] = "dry_run"
    token_env: EnvName | None = None
    """The variable holding the bearer token Alertmanager sends; without it every request gets 401."""
    token_file: NonEmptyStr | None = None
    """Or a file holding it (as Alertmanager's ``credentials_file``): a mounted secret, read at each request."""
    max_actions_per_day: Annotated[int, Field(ge=0, le=1000)] = 5
    rules: list[GuardRule] = []
    """Checked against the sources and the environment by ``exporter.config`` (``guard_errors``)."""

    @model_validator(mode="after")
    def _one_token(self) -> GuardConfig:
        if self.token_env is not None and self.token_file is not None:
            raise ValueError("give token_env or token_file, not both")
        return self
