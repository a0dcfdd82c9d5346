//! Raw proxy-wasm ABI 0.2.1 imports (module `env`), each returning the raw status code.

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    pub fn proxy_log(level: u32, ptr: *const u8, len: usize) -> u32;
    pub fn proxy_get_log_level(ret: *mut u32) -> u32;
    pub fn proxy_get_current_time_nanoseconds(ret: *mut u64) -> u32;
    pub fn proxy_set_tick_period_milliseconds(ms: u32) -> u32;
    pub fn proxy_get_buffer_bytes(
        t: u32,
        start: usize,
        max: usize,
        ret_ptr: *mut *mut u8,
        ret_len: *mut usize,
    ) -> u32;
    pub fn proxy_get_buffer_status(t: u32, ret_len: *mut usize, ret_flags: *mut u32) -> u32;
    pub fn proxy_set_buffer_bytes(t: u32, start: usize, size: usize, ptr: *const u8, len: usize) -> u32;
    pub fn proxy_get_header_map_pairs(map: u32, ret_ptr: *mut *mut u8, ret_len: *mut usize) -> u32;
    pub fn proxy_set_header_map_pairs(map: u32, ptr: *const u8, len: usize) -> u32;
    pub fn proxy_get_header_map_size(map: u32, ret: *mut usize) -> u32;
    pub fn proxy_get_header_map_value(
        map: u32,
        kp: *const u8,
        kl: usize,
        ret_ptr: *mut *mut u8,
        ret_len: *mut usize,
    ) -> u32;
    pub fn proxy_add_header_map_value(map: u32, kp: *const u8, kl: usize, vp: *const u8, vl: usize) -> u32;
    pub fn proxy_replace_header_map_value(
        map: u32,
        kp: *const u8,
        kl: usize,
        vp: *const u8,
        vl: usize,
    ) -> u32;
    pub fn proxy_remove_header_map_value(map: u32, kp: *const u8, kl: usize) -> u32;
    pub fn proxy_get_property(pp: *const u8, pl: usize, ret_ptr: *mut *mut u8, ret_len: *mut usize) -> u32;
    pub fn proxy_set_property(pp: *const u8, pl: usize, vp: *const u8, vl: usize) -> u32;
    pub fn proxy_get_shared_data(
        kp: *const u8,
        kl: usize,
        ret_ptr: *mut *mut u8,
        ret_len: *mut usize,
        ret_cas: *mut u32,
    ) -> u32;
    pub fn proxy_set_shared_data(kp: *const u8, kl: usize, vp: *const u8, vl: usize, cas: u32) -> u32;
    pub fn proxy_register_shared_queue(np: *const u8, nl: usize, ret_id: *mut u32) -> u32;
    pub fn proxy_resolve_shared_queue(
        vp: *const u8,
        vl: usize,
        np: *const u8,
        nl: usize,
        ret_id: *mut u32,
    ) -> u32;
    pub fn proxy_dequeue_shared_queue(id: u32, ret_ptr: *mut *mut u8, ret_len: *mut usize) -> u32;
    pub fn proxy_enqueue_shared_queue(id: u32, ptr: *const u8, len: usize) -> u32;
    pub fn proxy_continue_stream(stream: u32) -> u32;
    pub fn proxy_close_stream(stream: u32) -> u32;
    pub fn proxy_send_local_response(
        status: u32,
        dp: *const u8,
        dl: usize,
        bp: *const u8,
        bl: usize,
        hp: *const u8,
        hl: usize,
        grpc_status: i32,
    ) -> u32;
    pub fn proxy_http_call(
        up: *const u8,
        ul: usize,
        hp: *const u8,
        hl: usize,
        bp: *const u8,
        bl: usize,
        tp: *const u8,
        tl: usize,
        timeout_ms: u32,
        ret_token: *mut u32,
    ) -> u32;
    pub fn proxy_get_status(ret_code: *mut u32, ret_ptr: *mut *mut u8, ret_len: *mut usize) -> u32;
    pub fn proxy_set_effective_context(ctx: u32) -> u32;
    pub fn proxy_call_foreign_function(
        np: *const u8,
        nl: usize,
        ap: *const u8,
        al: usize,
        ret_ptr: *mut *mut u8,
        ret_len: *mut usize,
    ) -> u32;
    pub fn proxy_done() -> u32;
    pub fn proxy_define_metric(kind: u32, np: *const u8, nl: usize, ret_id: *mut u32) -> u32;
    pub fn proxy_increment_metric(id: u32, delta: i64) -> u32;
    pub fn proxy_record_metric(id: u32, value: u64) -> u32;
    pub fn proxy_get_metric(id: u32, ret: *mut u64) -> u32;
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`.
///
/// # Safety
/// `ptr`/`len` must come from a hostcall that returned OK (null or an allocation of exactly `len`).
pub unsafe fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: the host allocated exactly `len` bytes through our allocator (Vec::with_capacity(len)).
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// Logs a message (ignoring the status).
pub fn log(level: u32, msg: &str) {
    // SAFETY: valid pointer and length of a live str.
    unsafe {
        proxy_log(level, msg.as_ptr(), msg.len());
    }
}
