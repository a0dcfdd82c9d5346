//! Side-by-side benchmarks of meshwasm filters against Envoy native filters.
