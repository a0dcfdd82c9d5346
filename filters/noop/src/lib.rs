//! A filter that does nothing: every callback returns Continue. It is the baseline for the host's
//! per-callback cost (benchmarks) and a smoke test that a plain Rust SDK module loads and runs.

/// The plugin's name in logs.
pub const NAME: &str = "meshwasm noop";

#[cfg(target_arch = "wasm32")]
mod glue {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
    }}

    struct NoopRoot;

    impl Context for NoopRoot {}

    impl RootContext for NoopRoot {
        fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
            true
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Noop))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Noop;

    impl Context for Noop {}

    impl HttpContext for Noop {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            Action::Continue
        }

        fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            Action::Continue
        }

        fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
            Action::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn name_is_stable() {
        assert_eq!(super::NAME, "meshwasm noop");
    }
}
