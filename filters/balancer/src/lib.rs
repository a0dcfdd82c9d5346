//! Load-balancing filter: picks one endpoint per request and steers Envoy to it.
