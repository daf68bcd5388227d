"""Names of the channel variables the engine sets; the dialplan reads exactly these.

`ZV_DECIDED` is set last, so that a session cut off halfway never looks like a decision.
"""

DECIDED = "ZV_DECIDED"  # "1" once the whole route below is set
ROUTE = "ZV_ROUTE"  # outbound | inbound | fallback
CAMPAIGN = "ZV_CAMPAIGN"  # campaign id (outbound and inbound routes)
ATTEMPT = "ZV_ATTEMPT"  # id of the outbound attempt this call is a callback to
FALLBACK = "ZV_FALLBACK"  # unknown_number | no_inbound_campaign | service_number | engine_error
TARGET_CONTEXT = "ZV_TARGET_CONTEXT"
TARGET_EXTEN = "ZV_TARGET_EXTEN"
REASON = "ZV_REASON"  # human-readable, for logs and CDRs
DID = "ZV_DID"  # the DID, normalised (E.164 digits)
CALLER = "ZV_CALLER"  # the caller, normalised; empty when there is none
