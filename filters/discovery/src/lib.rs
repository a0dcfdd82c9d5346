//! Service discovery filter: registries and DNS-over-HTTPS into shared endpoint sets.
