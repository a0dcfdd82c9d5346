//! The wasm side: raw ABI exports, per-context state and the operation interpreter.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::null_mut;
use std::rc::Rc;

use serde_json::{Map, Value, json};

use crate::abi::{self, take};
use crate::codec::{b64, decode_pairs, decode_value, encode_pairs, lossy, pairs_json};
use crate::script::{Cas, Op, Script, Step, Target};
use crate::{ROOT_TRACE_PREFIX, STREAM_TRACE_PREFIX, TRACE_HEADER_PREFIX};

/// An id no host hands out, to exercise NOT_FOUND paths.
const INVALID_ID: u32 = 0xffff_fff0;

struct Stream {
    root: u32,
    script: Rc<Script>,
    events: Vec<Value>,
    counts: HashMap<&'static str, u32>,
    paused: bool,
}

#[derive(Default)]
struct Vm {
    vm_script: Option<Rc<Script>>,
    roots: HashMap<u32, Rc<Script>>,
    root_counts: HashMap<(u32, &'static str), u32>,
    streams: HashMap<u32, Stream>,
    /// http-call token → the context that dispatched it.
    tokens: HashMap<u32, u32>,
    queues: HashMap<String, u32>,
    metrics: HashMap<String, u32>,
    cas: HashMap<String, u32>,
}

thread_local! {
    static VM: RefCell<Vm> = RefCell::new(Vm::default());
}

/// Runs `f` with a short-lived borrow (never held across a hostcall: hosts may call back inline).
fn with_vm<R>(f: impl FnOnce(&mut Vm) -> R) -> R {
    VM.with(|vm| f(&mut vm.borrow_mut()))
}

fn empty_script() -> Rc<Script> {
    Rc::new(Script::parse(b"").unwrap_or_default())
}

fn read_buffer(t: u32, len: usize) -> (u32, Vec<u8>) {
    let mut ptr = null_mut();
    let mut got = 0usize;
    // SAFETY: out-pointers are valid locals; the returned buffer is ours on OK.
    let status = unsafe { abi::proxy_get_buffer_bytes(t, 0, len, &mut ptr, &mut got) };
    let bytes = if status == 0 { unsafe { take(ptr, got) } } else { Vec::new() };
    (status, bytes)
}

fn status_only(status: u32) -> Value {
    json!({ "status": status })
}

fn key_bytes(k: &str) -> (*const u8, usize) {
    (k.as_ptr(), k.len())
}

/// Executes the ops of one callback in context `ctx` (root `root`), returning their records.
fn run_ops(ctx: u32, root: u32, ops: &[Op]) -> Vec<Value> {
    ops.iter().map(|op| run_op(ctx, root, op)).collect()
}

#[allow(clippy::too_many_lines)]
fn run_op(ctx: u32, root: u32, op: &Op) -> Value {
    let mut rec = match op {
        Op::Log { level, msg } => {
            // SAFETY: valid str pointer/len.
            status_only(unsafe { abi::proxy_log(*level, msg.as_ptr(), msg.len()) })
        }
        Op::GetLogLevel => {
            let mut level = 0u32;
            let status = unsafe { abi::proxy_get_log_level(&mut level) };
            json!({ "status": status, "~level": level })
        }
        Op::GetCurrentTime => {
            let mut t = 0u64;
            let status = unsafe { abi::proxy_get_current_time_nanoseconds(&mut t) };
            json!({ "status": status, "nonzero": t > 0, "~value": t })
        }
        Op::SetTickPeriod { ms } => status_only(unsafe { abi::proxy_set_tick_period_milliseconds(*ms) }),
        Op::GetHeader { map, key } => {
            let (kp, kl) = key_bytes(key);
            let (mut ptr, mut len) = (null_mut(), 0usize);
            let status = unsafe { abi::proxy_get_header_map_value(map.0, kp, kl, &mut ptr, &mut len) };
            let mut r = status_only(status);
            if status == 0 {
                r["value"] = json!(lossy(&unsafe { take(ptr, len) }));
            }
            r
        }
        Op::GetHeaders { map } => {
            let (mut ptr, mut len) = (null_mut(), 0usize);
            let status = unsafe { abi::proxy_get_header_map_pairs(map.0, &mut ptr, &mut len) };
            let mut r = status_only(status);
            if status == 0 {
                let bytes = unsafe { take(ptr, len) };
                r["pairs"] = decode_pairs(&bytes)
                    .map(|p| pairs_json(&p))
                    .unwrap_or_else(|| json!({ "malformed": b64(&bytes) }));
            }
            r
        }
        Op::GetHeaderMapSize { map } => {
            let mut size = 0usize;
            let status = unsafe { abi::proxy_get_header_map_size(map.0, &mut size) };
            json!({ "status": status, "~size": size })
        }
        Op::AddHeader { map, key, value } => status_only(unsafe {
            abi::proxy_add_header_map_value(map.0, key.as_ptr(), key.len(), value.as_ptr(), value.len())
        }),
        Op::ReplaceHeader { map, key, value } => status_only(unsafe {
            abi::proxy_replace_header_map_value(map.0, key.as_ptr(), key.len(), value.as_ptr(), value.len())
        }),
        Op::RemoveHeader { map, key } => {
            status_only(unsafe { abi::proxy_remove_header_map_value(map.0, key.as_ptr(), key.len()) })
        }
        Op::SetHeaders { map, pairs } => {
            let enc = encode_pairs(pairs);
            status_only(unsafe { abi::proxy_set_header_map_pairs(map.0, enc.as_ptr(), enc.len()) })
        }
        Op::GetBuffer { buffer, start, max } => {
            let (mut ptr, mut len) = (null_mut(), 0usize);
            let status = unsafe {
                abi::proxy_get_buffer_bytes(buffer.0, *start as usize, *max as usize, &mut ptr, &mut len)
            };
            let mut r = status_only(status);
            if status == 0 {
                r["value"] = json!(lossy(&unsafe { take(ptr, len) }));
            }
            r
        }
        Op::GetBufferStatus { buffer } => {
            let (mut len, mut flags) = (0usize, 0u32);
            let status = unsafe { abi::proxy_get_buffer_status(buffer.0, &mut len, &mut flags) };
            json!({ "status": status, "len": len, "flags": flags })
        }
        Op::SetBuffer { buffer, start, size, value } => status_only(unsafe {
            abi::proxy_set_buffer_bytes(
                buffer.0,
                *start as usize,
                *size as usize,
                value.as_ptr(),
                value.len(),
            )
        }),
        Op::GetProperty { path, decode } => {
            let p = path.join("\0");
            let (mut ptr, mut len) = (null_mut(), 0usize);
            let status = unsafe { abi::proxy_get_property(p.as_ptr(), p.len(), &mut ptr, &mut len) };
            let mut r = status_only(status);
            if status == 0 {
                r["value"] = decode_value(&unsafe { take(ptr, len) }, *decode);
            }
            r
        }
        Op::SetProperty { path, value } => {
            let p = path.join("\0");
            status_only(unsafe { abi::proxy_set_property(p.as_ptr(), p.len(), value.as_ptr(), value.len()) })
        }
        Op::GetShared { key } => {
            let (mut ptr, mut len, mut cas) = (null_mut(), 0usize, 0u32);
            let status =
                unsafe { abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut len, &mut cas) };
            let mut r = status_only(status);
            if status == 0 {
                r["value"] = json!(lossy(&unsafe { take(ptr, len) }));
                r["cas_nonzero"] = json!(cas != 0);
                r["~cas"] = json!(cas);
                with_vm(|vm| vm.cas.insert(key.clone(), cas));
            }
            r
        }
        Op::SetShared { key, value, cas } => {
            let last = with_vm(|vm| vm.cas.get(key).copied().unwrap_or(0));
            let cas = match cas {
                Cas::None => 0,
                Cas::Last => last,
                Cas::Wrong => last.wrapping_add(1_000_003),
                Cas::Value(v) => *v,
            };
            let status = unsafe {
                abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
            };
            json!({ "status": status, "~cas": cas })
        }
        Op::RegisterQueue { name } => {
            let mut id = 0u32;
            let status = unsafe { abi::proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) };
            if status == 0 {
                with_vm(|vm| vm.queues.insert(name.clone(), id));
            }
            json!({ "status": status, "~id": id })
        }
        Op::ResolveQueue { vm_id, name } => {
            let mut id = 0u32;
            let status = unsafe {
                abi::proxy_resolve_shared_queue(
                    vm_id.as_ptr(),
                    vm_id.len(),
                    name.as_ptr(),
                    name.len(),
                    &mut id,
                )
            };
            if status == 0 {
                with_vm(|vm| vm.queues.insert(name.clone(), id));
            }
            json!({ "status": status, "~id": id })
        }
        Op::Enqueue { queue, value } => {
            let id = with_vm(|vm| vm.queues.get(queue).copied().unwrap_or(INVALID_ID));
            status_only(unsafe { abi::proxy_enqueue_shared_queue(id, value.as_ptr(), value.len()) })
        }
        Op::Dequeue { queue } => {
            let id = with_vm(|vm| vm.queues.get(queue).copied().unwrap_or(INVALID_ID));
            dequeue(id)
        }
        Op::DequeueInvalid => dequeue(INVALID_ID),
        Op::DefineMetric { kind, name } => {
            let mut id = 0u32;
            let status = unsafe { abi::proxy_define_metric(kind.0, name.as_ptr(), name.len(), &mut id) };
            if status == 0 {
                with_vm(|vm| vm.metrics.insert(name.clone(), id));
            }
            json!({ "status": status, "~id": id })
        }
        Op::IncrementMetric { name, delta } => {
            let id = with_vm(|vm| vm.metrics.get(name).copied().unwrap_or(INVALID_ID));
            status_only(unsafe { abi::proxy_increment_metric(id, *delta) })
        }
        Op::RecordMetric { name, value } => {
            let id = with_vm(|vm| vm.metrics.get(name).copied().unwrap_or(INVALID_ID));
            status_only(unsafe { abi::proxy_record_metric(id, *value) })
        }
        Op::GetMetric { name } => {
            let id = with_vm(|vm| vm.metrics.get(name).copied().unwrap_or(INVALID_ID));
            let mut v = 0u64;
            let status = unsafe { abi::proxy_get_metric(id, &mut v) };
            let mut r = status_only(status);
            if status == 0 {
                r["value"] = json!(v);
            }
            r
        }
        Op::HttpCall { upstream, headers, body, trailers, timeout_ms } => {
            let h = encode_pairs(headers);
            let t = encode_pairs(trailers);
            let mut token = 0u32;
            let status = unsafe {
                abi::proxy_http_call(
                    upstream.as_ptr(),
                    upstream.len(),
                    h.as_ptr(),
                    h.len(),
                    body.as_ptr(),
                    body.len(),
                    t.as_ptr(),
                    t.len(),
                    *timeout_ms,
                    &mut token,
                )
            };
            if status == 0 {
                with_vm(|vm| vm.tokens.insert(token, ctx));
            }
            json!({ "status": status, "~token": token })
        }
        Op::SendLocalResponse { status, details, body, headers, grpc_status } => {
            let body = if body == "$trace" {
                with_vm(|vm| vm.streams.get(&ctx).map(|s| Value::Array(s.events.clone()).to_string()))
                    .unwrap_or_default()
            } else {
                body.clone()
            };
            let h = encode_pairs(headers);
            status_only(unsafe {
                abi::proxy_send_local_response(
                    *status,
                    details.as_ptr(),
                    details.len(),
                    body.as_ptr(),
                    body.len(),
                    h.as_ptr(),
                    h.len(),
                    *grpc_status,
                )
            })
        }
        Op::ContinueStream { stream } => status_only(unsafe { abi::proxy_continue_stream(stream.0) }),
        Op::CloseStream { stream } => status_only(unsafe { abi::proxy_close_stream(stream.0) }),
        Op::GetStatus => {
            let (mut code, mut ptr, mut len) = (0u32, null_mut(), 0usize);
            let status = unsafe { abi::proxy_get_status(&mut code, &mut ptr, &mut len) };
            let mut r = status_only(status);
            if status == 0 {
                r["code"] = json!(code);
                r["message"] = json!(lossy(&unsafe { take(ptr, len) }));
            }
            r
        }
        Op::CallForeign { name, args } => {
            let (mut ptr, mut len) = (null_mut(), 0usize);
            let status = unsafe {
                abi::proxy_call_foreign_function(
                    name.as_ptr(),
                    name.len(),
                    args.as_ptr(),
                    args.len(),
                    &mut ptr,
                    &mut len,
                )
            };
            let mut r = status_only(status);
            if status == 0 {
                r["value"] = json!(b64(&unsafe { take(ptr, len) }));
            }
            r
        }
        Op::SetEffectiveContext { target } => {
            let id = match target {
                Target::Root => root,
                Target::This => ctx,
                Target::Invalid => INVALID_ID,
            };
            status_only(unsafe { abi::proxy_set_effective_context(id) })
        }
        Op::Done => status_only(unsafe { abi::proxy_done() }),
        Op::ResumePaused { stream } => {
            let paused: Vec<u32> = with_vm(|vm| {
                let mut ids: Vec<u32> =
                    vm.streams.iter_mut().filter(|(_, s)| s.paused).map(|(id, _)| *id).collect();
                ids.sort_unstable();
                for id in &ids {
                    if let Some(s) = vm.streams.get_mut(id) {
                        s.paused = false;
                    }
                }
                ids
            });
            let statuses: Vec<Value> = paused
                .iter()
                .map(|id| {
                    let set = unsafe { abi::proxy_set_effective_context(*id) };
                    let cont = unsafe { abi::proxy_continue_stream(stream.0) };
                    json!([set, cont])
                })
                .collect();
            let back = unsafe { abi::proxy_set_effective_context(ctx) };
            json!({ "resumed": statuses, "restore_status": back })
        }
    };
    let name = serde_json::to_value(op_name(op)).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut rec {
        let mut out = Map::new();
        out.insert("op".to_owned(), name);
        out.append(m);
        return Value::Object(out);
    }
    rec
}

fn dequeue(id: u32) -> Value {
    let (mut ptr, mut len) = (null_mut(), 0usize);
    let status = unsafe { abi::proxy_dequeue_shared_queue(id, &mut ptr, &mut len) };
    let mut r = status_only(status);
    if status == 0 {
        r["value"] = json!(lossy(&unsafe { take(ptr, len) }));
    }
    r
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Log { .. } => "log",
        Op::GetLogLevel => "get_log_level",
        Op::GetCurrentTime => "get_current_time",
        Op::SetTickPeriod { .. } => "set_tick_period",
        Op::GetHeader { .. } => "get_header",
        Op::GetHeaders { .. } => "get_headers",
        Op::GetHeaderMapSize { .. } => "get_header_map_size",
        Op::AddHeader { .. } => "add_header",
        Op::ReplaceHeader { .. } => "replace_header",
        Op::RemoveHeader { .. } => "remove_header",
        Op::SetHeaders { .. } => "set_headers",
        Op::GetBuffer { .. } => "get_buffer",
        Op::GetBufferStatus { .. } => "get_buffer_status",
        Op::SetBuffer { .. } => "set_buffer",
        Op::GetProperty { .. } => "get_property",
        Op::SetProperty { .. } => "set_property",
        Op::GetShared { .. } => "get_shared",
        Op::SetShared { .. } => "set_shared",
        Op::RegisterQueue { .. } => "register_queue",
        Op::ResolveQueue { .. } => "resolve_queue",
        Op::Enqueue { .. } => "enqueue",
        Op::Dequeue { .. } => "dequeue",
        Op::DequeueInvalid => "dequeue_invalid",
        Op::DefineMetric { .. } => "define_metric",
        Op::IncrementMetric { .. } => "increment_metric",
        Op::RecordMetric { .. } => "record_metric",
        Op::GetMetric { .. } => "get_metric",
        Op::HttpCall { .. } => "http_call",
        Op::SendLocalResponse { .. } => "send_local_response",
        Op::ContinueStream { .. } => "continue_stream",
        Op::CloseStream { .. } => "close_stream",
        Op::GetStatus => "get_status",
        Op::CallForeign { .. } => "call_foreign",
        Op::SetEffectiveContext { .. } => "set_effective_context",
        Op::Done => "done",
        Op::ResumePaused { .. } => "resume_paused",
    }
}

fn root_event(ctx: u32, cb: &'static str, script: &Script, step: &Step, mut ev: Value, ret: Option<Value>) {
    let n = with_vm(|vm| {
        let c = vm.root_counts.entry((ctx, cb)).or_insert(0);
        *c += 1;
        *c
    });
    let ops = if step.first_only && n > 1 { Vec::new() } else { run_ops(ctx, ctx, &step.ops) };
    ev["probe"] = json!(script.name);
    ev["cb"] = json!(cb);
    ev["n"] = json!(n);
    ev["ops"] = Value::Array(ops);
    if let Some(r) = ret {
        ev["ret"] = r;
    }
    abi::log(2, &format!("{ROOT_TRACE_PREFIX}{ev}"));
}

fn root_script(ctx: u32) -> Rc<Script> {
    with_vm(|vm| vm.roots.get(&ctx).cloned()).unwrap_or_else(empty_script)
}

/// Runs a stream callback: records it, runs its ops, returns the action code.
fn stream_cb(ctx: u32, cb: &'static str, args: Value, pick: fn(&Script) -> &Step, eos: bool) -> Option<u32> {
    let (script, root, n) = with_vm(|vm| {
        let s = vm.streams.get_mut(&ctx)?;
        let c = s.counts.entry(cb).or_insert(0);
        *c += 1;
        Some((s.script.clone(), s.root, *c))
    })?;
    let step = pick(&script);
    let ops = if step.first_only && n > 1 { Vec::new() } else { run_ops(ctx, root, &step.ops) };
    let action = step.action.code(eos);
    let mut ev = json!({ "cb": cb });
    if let (Value::Object(e), Value::Object(a)) = (&mut ev, args) {
        e.extend(a);
    }
    ev["ops"] = Value::Array(ops);
    let is_headers = cb.ends_with("headers") || cb.ends_with("body") || cb.ends_with("trailers");
    if is_headers {
        ev["action"] = json!(action);
    }
    with_vm(|vm| {
        if let Some(s) = vm.streams.get_mut(&ctx) {
            s.events.push(ev);
            if is_headers && action == 1 {
                s.paused = true;
            }
        }
    });
    Some(action)
}

fn trace_header(ctx: u32, map: u32, name: &str) {
    let events = with_vm(|vm| vm.streams.get(&ctx).map(|s| Value::Array(s.events.clone()).to_string()));
    if let Some(ev) = events {
        let key = format!("{TRACE_HEADER_PREFIX}{name}");
        let value = b64(ev.as_bytes());
        unsafe {
            abi::proxy_add_header_map_value(map, key.as_ptr(), key.len(), value.as_ptr(), value.len());
        }
    }
}

// ---- exports ----

#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(ctx: u32, parent: u32) {
    if parent == 0 {
        with_vm(|vm| vm.roots.insert(ctx, empty_script()));
        return;
    }
    let script = root_script(parent);
    with_vm(|vm| {
        vm.streams.insert(
            ctx,
            Stream { root: parent, script, events: Vec::new(), counts: HashMap::new(), paused: false },
        )
    });
    stream_cb(ctx, "context_create", json!({}), |s| &s.context_create, true);
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_vm_start(ctx: u32, size: usize) -> u32 {
    std::panic::set_hook(Box::new(|info| abi::log(5, &format!("meshwasm probe: panic: {info}"))));
    let (status, bytes) = read_buffer(6, size);
    let script = match Script::parse(&bytes) {
        Ok(s) => Rc::new(s),
        Err(e) => {
            abi::log(4, &format!("{e} (vm configuration)"));
            return 0;
        }
    };
    with_vm(|vm| vm.vm_script = Some(script.clone()));
    let ret = script.vm_start.ret.unwrap_or(true);
    root_event(
        ctx,
        "vm_start",
        &script,
        &script.vm_start,
        json!({ "config_status": status, "config_len": size }),
        Some(json!(ret)),
    );
    u32::from(ret)
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(ctx: u32, size: usize) -> u32 {
    let (status, bytes) = read_buffer(7, size);
    let script = match Script::parse(&bytes) {
        Ok(s) => Rc::new(s),
        Err(e) => {
            abi::log(4, &e);
            return 0;
        }
    };
    with_vm(|vm| vm.roots.insert(ctx, script.clone()));
    let ret = script.configure.ret.unwrap_or(true);
    root_event(
        ctx,
        "configure",
        &script,
        &script.configure,
        json!({ "config_status": status, "config_len": size }),
        Some(json!(ret)),
    );
    u32::from(ret)
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_tick(ctx: u32) {
    let script = root_script(ctx);
    root_event(ctx, "tick", &script, &script.tick, json!({}), None);
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_queue_ready(ctx: u32, queue_id: u32) {
    let script = root_script(ctx);
    let name = with_vm(|vm| vm.queues.iter().find(|(_, id)| **id == queue_id).map(|(n, _)| n.clone()));
    root_event(
        ctx,
        "queue_ready",
        &script,
        &script.queue_ready,
        json!({ "queue": name, "~id": queue_id }),
        None,
    );
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_foreign_function(ctx: u32, function_id: u32, size: usize) {
    let (status, bytes) = read_buffer(8, size);
    let args = json!({ "~function_id": function_id, "args_status": status, "args": b64(&bytes) });
    if stream_cb(ctx, "foreign_function", args.clone(), |s| &s.foreign_function, true).is_none() {
        let script = root_script(ctx);
        root_event(ctx, "foreign_function", &script, &script.foreign_function, args, None);
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(ctx: u32, headers: u32, eos: u32) -> u32 {
    let args = json!({ "headers": headers, "eos": eos != 0 });
    let action = stream_cb(ctx, "request_headers", args, |s| &s.request_headers, eos != 0).unwrap_or(0);
    if let Some(script) = with_vm(|vm| vm.streams.get(&ctx).map(|s| s.script.clone()))
        && script.trace_request_header
    {
        trace_header(ctx, 0, &script.name);
    }
    action
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_body(ctx: u32, size: usize, eos: u32) -> u32 {
    let args = json!({ "size": size, "eos": eos != 0 });
    stream_cb(ctx, "request_body", args, |s| &s.request_body, eos != 0).unwrap_or(0)
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_trailers(ctx: u32, trailers: u32) -> u32 {
    stream_cb(ctx, "request_trailers", json!({ "trailers": trailers }), |s| &s.request_trailers, true)
        .unwrap_or(0)
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_headers(ctx: u32, headers: u32, eos: u32) -> u32 {
    let args = json!({ "headers": headers, "eos": eos != 0 });
    let action = stream_cb(ctx, "response_headers", args, |s| &s.response_headers, eos != 0).unwrap_or(0);
    if let Some(script) = with_vm(|vm| vm.streams.get(&ctx).map(|s| s.script.clone()))
        && script.trace_response_header
    {
        trace_header(ctx, 2, &script.name);
    }
    action
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_body(ctx: u32, size: usize, eos: u32) -> u32 {
    let args = json!({ "size": size, "eos": eos != 0 });
    stream_cb(ctx, "response_body", args, |s| &s.response_body, eos != 0).unwrap_or(0)
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_trailers(ctx: u32, trailers: u32) -> u32 {
    stream_cb(ctx, "response_trailers", json!({ "trailers": trailers }), |s| &s.response_trailers, true)
        .unwrap_or(0)
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_http_call_response(
    ctx: u32,
    token: u32,
    headers: u32,
    body: usize,
    trailers: u32,
) {
    let caller = with_vm(|vm| vm.tokens.remove(&token));
    let is_root = with_vm(|vm| vm.roots.contains_key(&ctx));
    let ctx_arg = match caller {
        Some(c) if c == ctx => "caller",
        _ if is_root => "root",
        _ => "other",
    };
    let args = json!({ "ctx_arg": ctx_arg, "headers": headers, "body": body, "trailers": trailers, "~token": token });
    let Some(caller) = caller else {
        let script = root_script(ctx);
        let mut a = args;
        a["unknown_token"] = json!(true);
        root_event(ctx, "http_call_response", &script, &Step::default(), a, None);
        return;
    };
    let mut args = args;
    if caller != ctx {
        // Like the SDK: act on behalf of the context that dispatched the call.
        args["set_effective_context"] = json!(unsafe { abi::proxy_set_effective_context(caller) });
    }
    if stream_cb(caller, "http_call_response", args.clone(), |s| &s.http_call_response, true).is_none() {
        let script = root_script(caller);
        root_event(caller, "http_call_response", &script, &script.http_call_response, args, None);
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_done(ctx: u32) -> u32 {
    let script = with_vm(|vm| vm.streams.get(&ctx).map(|s| s.script.clone()));
    match script {
        Some(script) => {
            let ret = script.done.ret.unwrap_or(true);
            stream_cb(ctx, "done", json!({ "ret": ret }), |s| &s.done, true);
            u32::from(ret)
        }
        None => {
            let script = root_script(ctx);
            root_event(ctx, "done", &script, &Step::default(), json!({}), Some(json!(true)));
            1
        }
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_log(ctx: u32) {
    stream_cb(ctx, "log", json!({}), |s| &s.log, true);
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_delete(ctx: u32) {
    if stream_cb(ctx, "delete", json!({}), |s| &s.delete, true).is_none() {
        with_vm(|vm| vm.roots.remove(&ctx));
        return;
    }
    let Some(stream) = with_vm(|vm| vm.streams.remove(&ctx)) else { return };
    with_vm(|vm| vm.tokens.retain(|_, c| *c != ctx));
    if stream.script.trace_log {
        let line = json!({ "probe": stream.script.name, "events": stream.events });
        abi::log(2, &format!("{STREAM_TRACE_PREFIX}{line}"));
    }
}
