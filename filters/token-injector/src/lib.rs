//! Outbound OAuth2 client-credentials token injection filter.
