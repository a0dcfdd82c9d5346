//! The entry point of `meshwasm.wasm`: one root context type that becomes the root context of the
//! filter its plugin's `root_id` selects, and hands it every callback. Compiled for wasm32 only.
//!
//! The root_id is read from the `plugin_root_id` property when the root context is created (Envoy and
//! the meshwasm host both know the plugin by then), and again at `on_vm_start`/`on_configure` if that
//! read failed. A root_id that selects no filter fails `on_configure`, so the proxy rejects the plugin
//! with the message naming `root_id` and the valid ones; should a stream still reach such a root, it
//! gets a 503 (fail closed), never the next filter.

use meshwasm_filter_runtime::glue::{LogLevel, install_panic_hook, log};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType};

use crate::select::{Filter, select};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    install_panic_hook("meshwasm.wasm");
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        let mut root = Root { context_id, inner: Err(String::new()) };
        root.select();
        Box::new(root)
    });
}}

fn root_context(filter: Filter, context_id: u32) -> Box<dyn RootContext> {
    match filter {
        Filter::JwtAuth => meshwasm_jwt_auth::root_context(context_id),
        Filter::TokenInjector => meshwasm_token_injector::root_context(context_id),
        Filter::Discovery => meshwasm_discovery::root_context(context_id),
        Filter::Balancer => meshwasm_balancer::root_context(context_id),
        Filter::Authz => meshwasm_authz::root_context(context_id),
    }
}

struct Root {
    context_id: u32,
    /// The selected filter's root context, or why there is none.
    inner: Result<Box<dyn RootContext>, String>,
}

impl Root {
    /// Selects the filter from `plugin_root_id`, unless one is selected already.
    fn select(&mut self) {
        if self.inner.is_ok() {
            return;
        }
        self.inner = match hostcalls::get_property(vec!["plugin_root_id"]) {
            Ok(Some(bytes)) => match std::str::from_utf8(&bytes) {
                Ok(root_id) => select(root_id).map(|f| root_context(f, self.context_id)),
                Err(_) => Err("meshwasm.wasm: root_id is not UTF-8".to_string()),
            },
            // An empty root_id reads as no value on some hosts: the same error as "".
            Ok(None) => select("").map(|f| root_context(f, self.context_id)),
            Err(status) => {
                Err(format!("meshwasm.wasm: the proxy did not give the plugin's root_id ({status:?})"))
            }
        };
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        if let Ok(inner) = &mut self.inner {
            inner.on_http_call_response(token_id, num_headers, body_size, num_trailers);
        }
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Ok(inner) = &mut self.inner {
            inner.on_grpc_call_response(token_id, status_code, response_size);
        }
    }

    fn on_grpc_stream_initial_metadata(&mut self, token_id: u32, num_elements: u32) {
        if let Ok(inner) = &mut self.inner {
            inner.on_grpc_stream_initial_metadata(token_id, num_elements);
        }
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        if let Ok(inner) = &mut self.inner {
            inner.on_grpc_stream_message(token_id, message_size);
        }
    }

    fn on_grpc_stream_trailing_metadata(&mut self, token_id: u32, num_elements: u32) {
        if let Ok(inner) = &mut self.inner {
            inner.on_grpc_stream_trailing_metadata(token_id, num_elements);
        }
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        if let Ok(inner) = &mut self.inner {
            inner.on_grpc_stream_close(token_id, status_code);
        }
    }

    fn on_foreign_function(&mut self, function_id: u32, arguments_size: usize) {
        if let Ok(inner) = &mut self.inner {
            inner.on_foreign_function(function_id, arguments_size);
        }
    }

    fn on_done(&mut self) -> bool {
        match &mut self.inner {
            Ok(inner) => inner.on_done(),
            Err(_) => true,
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, vm_configuration_size: usize) -> bool {
        self.select();
        match &mut self.inner {
            Ok(inner) => inner.on_vm_start(vm_configuration_size),
            // Reported (and refused) by on_configure, which names the plugin's configuration.
            Err(_) => true,
        }
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        self.select();
        match &mut self.inner {
            Ok(inner) => inner.on_configure(plugin_configuration_size),
            Err(e) => {
                log(LogLevel::Error, e);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Ok(inner) = &mut self.inner {
            inner.on_tick();
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Ok(inner) = &mut self.inner {
            inner.on_queue_ready(queue_id);
        }
    }

    fn on_log(&mut self) {
        if let Ok(inner) = &mut self.inner {
            inner.on_log();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        match &self.inner {
            // Never None for an HTTP root: the SDK panics on a missing context.
            Ok(inner) => match inner.create_http_context(context_id) {
                Some(ctx) => Some(ctx),
                None => Some(Box::new(Refuse)),
            },
            Err(_) => Some(Box::new(Refuse)),
        }
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        match &self.inner {
            Ok(inner) => inner.create_stream_context(context_id),
            Err(_) => None,
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        match &self.inner {
            Ok(inner) => inner.get_type(),
            Err(_) => Some(ContextType::HttpContext),
        }
    }
}

/// The stream context of a root without a filter: every request gets a 503.
struct Refuse;

impl Context for Refuse {}

impl HttpContext for Refuse {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = hostcalls::send_http_response(
            503,
            vec![("content-type", "text/plain")],
            Some(b"meshwasm.wasm: this plugin's root_id selects no filter\n"),
        );
        Action::Pause
    }
}
