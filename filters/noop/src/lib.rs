//! A filter that does nothing: the baseline for per-callback host cost.
