//! `make faults`: meshwasm in real Envoy under a fixed-rate load while its dependencies fail — a
//! backend killed, the IdP down, the registry down, a real etcd cluster losing its leader — each fault
//! with a checked bound, written to `bench/report/FAULTS.md` with a plot of errors over time.

pub mod load;
pub mod mesh;
pub mod plot;
pub mod relay;
pub mod report;
pub mod run;
