"""The inbound routing decision (routing-rules.md, "Routing an inbound call").

Pure functions: no I/O, no clock. Every input gets a route and a reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .model import (
    Attempt,
    CallbackRule,
    Campaign,
    CampaignKind,
    CampaignState,
    Decision,
    Fallback,
    Number,
    NumberStatus,
    Outcome,
    Route,
)

DEFAULT_CALLBACK_WINDOW = 7 * 24 * 3600.0


def decide(
    number: Number | None,
    campaigns: Mapping[str, Campaign],
    attempts: Iterable[Attempt],
    now: float,
    window: float = DEFAULT_CALLBACK_WINDOW,
) -> Decision:
    """Where a call from a caller to `number` goes.

    `attempts` is the caller's history with this DID (any order, any owner); an empty history
    also stands for "no caller ID".
    """
    if number is None:
        return Decision(
            Route.to_fallback(Fallback.UNKNOWN_NUMBER), "DID is not a known number", "unknown_did"
        )
    if number.status is not NumberStatus.ACTIVE:
        return Decision(
            Route.to_fallback(Fallback.UNKNOWN_NUMBER), "number is disabled", "disabled"
        )
    if not (number.is_service or number.is_reserved):
        return Decision(
            Route.to_fallback(Fallback.UNKNOWN_NUMBER), "number is not reserved", "not_reserved"
        )

    attempt = latest_attempt(number, campaigns, attempts, now, window)
    if attempt is not None:
        campaign = campaigns[attempt.campaign]
        refusal = _callback_refusal(number, campaign, attempt)
        if refusal is None:
            return Decision(
                Route.outbound(campaign.id, attempt.id, campaign.scenario),
                f"first callback to outbound campaign {campaign.id}",
                "first_callback",
            )
        code, why = refusal
        return _otherwise(number, campaigns, f"callback not taken: {why}", code)
    return _otherwise(
        number, campaigns, "no recent call to this caller from this number", "no_recent_call"
    )


def latest_attempt(
    number: Number,
    campaigns: Mapping[str, Campaign],
    attempts: Iterable[Attempt],
    now: float,
    window: float,
) -> Attempt | None:
    """The newest attempt from this DID within the window whose campaign is one of the current
    owner's outbound campaigns (any account's for a service number)."""
    best: Attempt | None = None
    for attempt in attempts:
        if attempt.did != number.did or not (now - window <= attempt.at <= now):
            continue
        campaign = campaigns.get(attempt.campaign)
        if campaign is None or campaign.kind is not CampaignKind.OUTBOUND:
            continue
        if campaign.account != attempt.account:
            continue
        if not number.is_service and campaign.account != number.owner:
            continue
        if best is None or (attempt.at, attempt.id) > (best.at, best.id):
            best = attempt
    return best


def accepts_inbound(number: Number, campaign: Campaign) -> bool:
    """The effective "accept inbound": the number's callback rule over the campaign's setting."""
    if number.is_service or number.callback_rule is CallbackRule.AS_CAMPAIGN:
        return campaign.accept_inbound
    return number.callback_rule is CallbackRule.FORCE_YES


def fallback_without_store(number: Number | None, campaigns: Mapping[str, Campaign]) -> Decision:
    """Rule 6: the route when the history cannot be read. The bound inbound campaign if it is
    known and usable, else `engine_error`."""
    if number is not None and number.status is NumberStatus.ACTIVE and number.is_reserved:
        campaign = _bound_inbound(number, campaigns)
        if campaign is not None:
            return Decision(
                Route.inbound(campaign.id, campaign.scenario),
                "store unavailable: bound inbound campaign",
                "store_unavailable",
            )
    return Decision(
        Route.to_fallback(Fallback.ENGINE_ERROR), "store unavailable", "store_unavailable"
    )


def _callback_refusal(
    number: Number, campaign: Campaign, attempt: Attempt
) -> tuple[str, str] | None:
    """(code, words) of why the callback does not go to the campaign; None if it does."""
    if not accepts_inbound(number, campaign):
        return "not_accepting_inbound", "campaign does not accept inbound calls"
    if attempt.outcome is Outcome.ANSWERED:
        return "answered", "the outbound call was answered"
    if attempt.callbacks > 0:
        return "already_called_back", "a callback was already routed to the campaign"
    if campaign.state is CampaignState.FINISHED:
        return "campaign_finished", "campaign is finished"
    return None


def _otherwise(number: Number, campaigns: Mapping[str, Campaign], why: str, code: str) -> Decision:
    if number.is_service:
        return Decision(Route.to_fallback(Fallback.SERVICE_NUMBER), f"{why}; service number", code)
    campaign = _bound_inbound(number, campaigns)
    if campaign is None:
        return Decision(
            Route.to_fallback(Fallback.NO_INBOUND_CAMPAIGN),
            f"{why}; no inbound campaign bound",
            code,
        )
    return Decision(
        Route.inbound(campaign.id, campaign.scenario),
        f"{why}; inbound campaign {campaign.id}",
        code,
    )


def _bound_inbound(number: Number, campaigns: Mapping[str, Campaign]) -> Campaign | None:
    campaign = campaigns.get(number.inbound_campaign or "")
    if (
        campaign is None
        or campaign.kind is not CampaignKind.INBOUND
        or campaign.account != number.owner
        or campaign.state is CampaignState.FINISHED
    ):
        return None
    return campaign
