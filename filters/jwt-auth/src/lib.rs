//! Inbound OAuth2/JWT validation filter.
