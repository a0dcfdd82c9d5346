//! Test harness for meshwasm: starts real Envoy and the other real parts on loopback, and cleans up.
