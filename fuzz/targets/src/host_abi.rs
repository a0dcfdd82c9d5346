//! The host ABI fuzzer: a guest module whose hostcalls come from the fuzz input.
//!
//! The guest ([`GUEST`], WAT, compiled once) is a small interpreter: in `proxy_on_configure` it copies
//! its plugin configuration, a program of hostcalls, into its memory, and every callback runs the
//! program's operations for that callback (configure, context create, the six header/body/trailer
//! callbacks, http-call response, tick, queue ready, done, log, delete). An operation names any
//! `env` hostcall the host links, and each argument is fuzzed: valid pointers to strings the program
//! carries (header names, property paths, upstream names, queue names, map-encoded pairs) with
//! their exact or a wrong length, or raw pointers and lengths (out of bounds, huge, wrapping), and
//! integers (map, buffer and stream types, context, queue and metric ids, CAS values, timeouts).
//!
//! Three streams run on one worker, hence one VM: stream 1 carries a secret in its request headers,
//! body and trailers, waits at the upstream while stream 2 runs the program, then gets a response
//! full of the secret; stream 3 runs the program after stream 1 finished. The guest runs no operation
//! in stream 1's callbacks, and it never passes stream 1's context id to `proxy_set_effective_context`
//! (which the ABI allows a VM for its own contexts). Must hold for every input:
//! - the host never panics (a guest trap is fine: the VM fails as configured);
//! - the secret is nowhere in the guest's memory afterwards: no hostcall of streams 2 and 3 or of the
//!   root context ever returned stream 1's data;
//! - stream 1 is unaffected: its upstream sees its headers and body, and (unless the VM failed) its
//!   client gets the upstream's answer unchanged;
//! - after the streams end (the ones still paused are cancelled, as a client going away) and the
//!   clock moves on past every http-call timeout, the worker holds no stream, no stream context and
//!   no pending http call.

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use meshwasm_host::{
    CallReply, FailurePolicy, Host, HostOptions, Module, Plugin, Proxy, Request, StreamState, Upstream,
    UpstreamReply,
};

/// What stream 1 carries and no other stream may see.
pub const SECRET: &[u8] = b"S3CRET-7f1e9c2b4d6a8e0f3a5c7e9b1d3f5a7c";

/// Where the guest copies the program (plugin configuration) to.
const PROG: u32 = 65536;
/// Largest program (the guest copies at most this much).
const PROG_MAX: usize = 60_000;
/// Header: operation count, then one action (return value) per phase.
const HEADER: u32 = 4 + 4 * 16;
/// Each operation: phase, hostcall, 14 argument words.
const OP_SIZE: u32 = 64;
const MAX_OPS: usize = 48;
/// Return slots the program may point hostcalls at (valid memory).
const SCRATCH: u32 = 40960;

/// The kinds of argument slot of a hostcall.
#[derive(Clone, Copy)]
enum Slot {
    /// A (pointer, length) pair of input bytes.
    Bytes,
    /// An i32.
    Int,
    /// An i64 (two words).
    Long,
    /// A pointer the host writes a result to.
    Ret,
}
use Slot::*;

/// Every `env` hostcall the guest imports, with its argument slots (ABI 0.2.1, wasm32).
const CALLS: &[(&str, &[Slot])] = &[
    ("proxy_log", &[Int, Bytes]),
    ("proxy_get_log_level", &[Ret]),
    ("proxy_get_current_time_nanoseconds", &[Ret]),
    ("proxy_set_tick_period_milliseconds", &[Int]),
    ("proxy_get_buffer_bytes", &[Int, Int, Int, Ret, Ret]),
    ("proxy_set_buffer_bytes", &[Int, Int, Int, Bytes]),
    ("proxy_get_buffer_status", &[Int, Ret, Ret]),
    ("proxy_get_header_map_pairs", &[Int, Ret, Ret]),
    ("proxy_set_header_map_pairs", &[Int, Bytes]),
    ("proxy_get_header_map_size", &[Int, Ret]),
    ("proxy_get_header_map_value", &[Int, Bytes, Ret, Ret]),
    ("proxy_add_header_map_value", &[Int, Bytes, Bytes]),
    ("proxy_replace_header_map_value", &[Int, Bytes, Bytes]),
    ("proxy_remove_header_map_value", &[Int, Bytes]),
    ("proxy_continue_stream", &[Int]),
    ("proxy_continue_request", &[]),
    ("proxy_continue_response", &[]),
    ("proxy_close_stream", &[Int]),
    ("proxy_get_status", &[Ret, Ret, Ret]),
    ("proxy_send_local_response", &[Int, Bytes, Bytes, Bytes, Int]),
    ("proxy_http_call", &[Bytes, Bytes, Bytes, Bytes, Int, Ret]),
    ("proxy_grpc_call", &[Bytes, Bytes, Bytes, Bytes, Bytes, Int, Ret]),
    ("proxy_get_shared_data", &[Bytes, Ret, Ret, Ret]),
    ("proxy_set_shared_data", &[Bytes, Bytes, Int]),
    ("proxy_register_shared_queue", &[Bytes, Ret]),
    ("proxy_resolve_shared_queue", &[Bytes, Bytes, Ret]),
    ("proxy_enqueue_shared_queue", &[Int, Bytes]),
    ("proxy_dequeue_shared_queue", &[Int, Ret, Ret]),
    ("proxy_define_metric", &[Int, Bytes, Ret]),
    ("proxy_increment_metric", &[Int, Long]),
    ("proxy_record_metric", &[Int, Long]),
    ("proxy_get_metric", &[Int, Ret]),
    ("proxy_get_property", &[Bytes, Ret, Ret]),
    ("proxy_set_property", &[Bytes, Bytes]),
    ("proxy_set_effective_context", &[Int]),
    ("proxy_call_foreign_function", &[Bytes, Bytes, Ret, Ret]),
    ("proxy_done", &[]),
];

/// Strings a `Known` bytes argument picks from: upstream, header, property, shared-data, queue,
/// metric and foreign-function names the host knows, and a few values.
const KNOWN: &[&[u8]] = &[
    b"up",
    b"slow",
    b"never",
    b"fail",
    b"x-secret",
    b":path",
    b":method",
    b":authority",
    b":status",
    b"content-length",
    b"request\0headers",
    b"request\0path",
    b"request\0body",
    b"response\0headers",
    b"response\0code",
    b"plugin_name",
    b"plugin_root_id",
    b"plugin_vm_id",
    b"node\0id",
    b"source\0address",
    b"connection\0mtls",
    b"filter_state\0x",
    b"upstream\0address",
    b"k1",
    b"q1",
    b"",
    b"abi",
    b"metric.a",
    b"verify_signature",
    b"set_envoy_filter_state",
    b"declare_property",
    b"/",
    b"GET",
];

/// Pairs a `Pairs` argument encodes, besides its own.
const CALL_HEADERS: &[(&[u8], &[u8])] = &[(b":method", b"GET"), (b":path", b"/x"), (b":authority", b"up")];

/// Integers a `Known` integer argument picks from.
const INTS: &[u32] =
    &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 50, 200, 503, 1000, 65535, 65536, 0x7fff_ffff, 0xffff_ffff];

/// One argument as fuzzed; what it becomes depends on the slot it fills.
#[derive(Debug, Arbitrary)]
enum Arg {
    /// Bytes: a [`KNOWN`] string; int: an [`INTS`] value; ret: a scratch slot.
    Known(u8),
    /// Bytes: these bytes; int: their first four; ret: a scratch slot.
    Data(Vec<u8>),
    /// Bytes: map-encoded pairs (keys from [`KNOWN`]), after [`CALL_HEADERS`] if the flag is set.
    Pairs(bool, Vec<(u8, Vec<u8>)>),
    /// Bytes: a valid pointer to a [`KNOWN`] string with this (wrong) length; int: the length.
    WrongLen(u8, u32),
    /// Bytes: this pointer and length; int: the pointer; ret: the pointer (hostile).
    Raw(u32, u32),
}

#[derive(Debug, Arbitrary)]
struct Op {
    phase: u8,
    call: u8,
    args: Vec<Arg>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// What each phase's callback returns (configure: 0 fails the plugin; headers: 1 pauses, ...).
    actions: [u8; 16],
    ops: Vec<Op>,
}

/// Phases (the first word of an operation), as the guest numbers its callbacks.
const PHASES: u32 = 15;

fn encode(input: &Input) -> Vec<u8> {
    let ops = &input.ops[..input.ops.len().min(MAX_OPS)];
    let blob_base = PROG + HEADER + OP_SIZE * ops.len() as u32;
    let mut words: Vec<u32> = vec![ops.len() as u32];
    for (phase, a) in input.actions.iter().enumerate() {
        // Mostly the usual returns (configure/done: true, headers: continue); sometimes anything.
        words.push(match (phase, a % 8) {
            (1 | 12, 0..=5) => 1,
            (_, 0..=4) => 0,
            (_, 5) => 1,
            _ => u32::from(*a),
        });
    }
    let mut blob: Vec<u8> = Vec::new();
    let mut place = |bytes: &[u8]| -> u32 {
        let at = blob_base + blob.len() as u32;
        blob.extend_from_slice(bytes);
        at
    };
    let known = |i: u8| KNOWN[usize::from(i) % KNOWN.len()];
    for op in ops {
        let (_, slots) = CALLS[usize::from(op.call) % CALLS.len()];
        let mut w = Vec::with_capacity(14);
        let mut args = op.args.iter();
        for slot in slots.iter() {
            let arg = args.next().unwrap_or(&Arg::Known(0));
            match (slot, arg) {
                (Bytes, Arg::Known(i)) => {
                    let s = known(*i);
                    w.extend([place(s), s.len() as u32]);
                }
                (Bytes, Arg::Data(d)) => w.extend([place(d), d.len() as u32]),
                (Bytes, Arg::Pairs(call, pairs)) => {
                    let mut all: Vec<(&[u8], &[u8])> = if *call { CALL_HEADERS.to_vec() } else { Vec::new() };
                    all.extend(pairs.iter().map(|(k, v)| (known(*k), v.as_slice())));
                    let enc = encode_pairs(&all);
                    w.extend([place(&enc), enc.len() as u32]);
                }
                (Bytes, Arg::WrongLen(i, len)) => w.extend([place(known(*i)), *len]),
                (Bytes, Arg::Raw(p, l)) => w.extend([*p, *l]),
                (Int, Arg::Known(i)) => w.push(INTS[usize::from(*i) % INTS.len()]),
                (Int, Arg::Data(d)) => w.push(u32::from_le_bytes(word(d))),
                (Int, Arg::Pairs(_, p)) => w.push(p.len() as u32),
                (Int, Arg::WrongLen(_, v) | Arg::Raw(v, _)) => w.push(*v),
                (Long, Arg::Raw(lo, hi)) => w.extend([*lo, *hi]),
                (Long, Arg::Known(i)) => {
                    let v = i64::from(INTS[usize::from(*i) % INTS.len()]) * if i % 2 == 1 { -1 } else { 1 };
                    w.extend([v as u32, (v >> 32) as u32]);
                }
                (Long, _) => w.extend([1, 0]),
                (Ret, Arg::Raw(p, _)) => w.push(*p),
                (Ret, Arg::Known(i) | Arg::WrongLen(i, _)) => w.push(SCRATCH + u32::from(*i % 64) * 8),
                (Ret, _) => w.push(SCRATCH),
            }
        }
        w.resize(14, 0);
        words.push(u32::from(op.phase) % (PHASES - 1) + 1);
        words.push(u32::from(op.call) % CALLS.len() as u32);
        words.extend(w);
    }
    let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    out.extend_from_slice(&blob);
    out.truncate(PROG_MAX);
    out
}

fn word(d: &[u8]) -> [u8; 4] {
    let mut w = [0; 4];
    for (i, b) in d.iter().take(4).enumerate() {
        w[i] = *b;
    }
    w
}

fn encode_pairs(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The interpreter guest, as WAT.
fn guest() -> String {
    let mut imports = String::new();
    let mut exec = String::new();
    for (i, (name, slots)) in CALLS.iter().enumerate() {
        let mut params = String::new();
        let mut args = String::new();
        let mut at = 8; // offset of the first argument word in an operation
        for slot in slots.iter() {
            match slot {
                Bytes => {
                    params.push_str(" i32 i32");
                    args.push_str(&format!(
                        " (i32.load offset={at} (local.get $op)) (i32.load offset={} (local.get $op))",
                        at + 4
                    ));
                    at += 8;
                }
                Long => {
                    params.push_str(" i64");
                    args.push_str(&format!(" (i64.load offset={at} (local.get $op))"));
                    at += 8;
                }
                Int | Ret => {
                    params.push_str(" i32");
                    if *name == "proxy_set_effective_context" {
                        args.push_str(&format!(
                            " (call $not_stream1 (i32.load offset={at} (local.get $op)))"
                        ));
                    } else {
                        args.push_str(&format!(" (i32.load offset={at} (local.get $op))"));
                    }
                    at += 4;
                }
            }
        }
        imports
            .push_str(&format!("  (import \"env\" \"{name}\" (func $h{i} (param{params}) (result i32)))\n"));
        exec.push_str(&format!(
            "    (if (i32.eq (local.get $call) (i32.const {i})) (then (drop (call $h{i}{args}))))\n"
        ));
    }
    let prog = PROG;
    let prog_max = PROG_MAX;
    let ops = PROG + HEADER;
    let op_size = OP_SIZE;
    let max_ops = MAX_OPS;
    let phases = PHASES;
    format!(
        r#"(module
{imports}
  (memory (export "memory") 4)
  ;; Bump allocator over 131072..262144, wrapping; a request that does not fit gets 0.
  (global $bump (mut i32) (i32.const 131072))
  (global $loaded (mut i32) (i32.const 0))
  ;; Stream 1's context: the first stream context created. No operation runs in its callbacks.
  (global $stream1 (mut i32) (i32.const 0))
  (global $ticks (mut i32) (i32.const 0))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (local $p i32)
    (if (i32.gt_u (local.get $n) (i32.const 131072)) (then (return (i32.const 0))))
    (if (i32.gt_u (i32.add (global.get $bump) (local.get $n)) (i32.const 262144))
      (then (global.set $bump (i32.const 131072))))
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (i32.add (local.get $n) (i32.const 8))))
    (local.get $p))
  (func (export "malloc") (param $n i32) (result i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func $not_stream1 (param $ctx i32) (result i32)
    (if (result i32) (i32.and (i32.ne (global.get $stream1) (i32.const 0)) (i32.eq (local.get $ctx) (global.get $stream1)))
      (then (i32.add (local.get $ctx) (i32.const 65536)))
      (else (local.get $ctx))))
  (func $exec (param $op i32) (local $call i32)
    (local.set $call (i32.load offset=4 (local.get $op)))
{exec}  )
  ;; Runs the operations of `phase` (each phase at most 8 times per VM: a queue or an http call
  ;; answered by more of them cannot loop forever).
  (func $run (param $phase i32) (param $ctx i32) (result i32)
    (local $n i32) (local $i i32) (local $op i32) (local $budget i32)
    (if (i32.eqz (global.get $loaded)) (then (return (i32.const 0))))
    (if (i32.and (i32.ne (local.get $ctx) (i32.const 0)) (i32.eq (local.get $ctx) (global.get $stream1)))
      (then (return (i32.const 0))))
    (local.set $budget (i32.add (i32.const 1024) (i32.shl (local.get $phase) (i32.const 2))))
    (if (i32.lt_u (i32.load (local.get $budget)) (i32.const 8)) (then
      (i32.store (local.get $budget) (i32.add (i32.load (local.get $budget)) (i32.const 1)))
      (local.set $n (i32.load (i32.const {prog})))
      (if (i32.gt_u (local.get $n) (i32.const {max_ops})) (then (local.set $n (i32.const {max_ops}))))
      (local.set $op (i32.const {ops}))
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.eq (i32.load (local.get $op)) (local.get $phase)) (then (call $exec (local.get $op))))
        (local.set $op (i32.add (local.get $op) (i32.const {op_size})))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))))
    ;; The phase's return value.
    (i32.load offset=4 (i32.add (i32.const {prog}) (i32.shl (i32.rem_u (local.get $phase) (i32.const {phases})) (i32.const 2)))))
  (func $ret (param $phase i32) (param $ctx i32) (param $default i32) (result i32)
    (local $r i32)
    (local.set $r (call $run (local.get $phase) (local.get $ctx)))
    (if (result i32) (i32.or (i32.eqz (global.get $loaded)) (i32.eq (local.get $ctx) (global.get $stream1)))
      (then (local.get $default)) (else (local.get $r))))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32) (local $len i32)
    (if (i32.eqz (call $h4 (i32.const 7) (i32.const 0) (i32.const {prog_max}) (i32.const 200) (i32.const 204)))
      (then
        (local.set $len (i32.load (i32.const 204)))
        (if (i32.gt_u (local.get $len) (i32.const {prog_max})) (then (local.set $len (i32.const {prog_max}))))
        (if (i32.ge_u (local.get $len) (i32.const 4)) (then
          (memory.copy (i32.const {prog}) (i32.load (i32.const 200)) (local.get $len))
          (global.set $loaded (i32.const 1))))))
    (call $ret (i32.const 1) (local.get $ctx) (i32.const 1)))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $root i32)
    (if (i32.ne (local.get $root) (i32.const 0)) (then
      (if (i32.eqz (global.get $stream1)) (then (global.set $stream1 (local.get $ctx))))
      (drop (call $run (i32.const 2) (local.get $ctx))))))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (call $ret (i32.const 3) (local.get $ctx) (i32.const 0)))
  (func (export "proxy_on_request_body") (param $ctx i32) (param i32 i32) (result i32)
    (call $ret (i32.const 4) (local.get $ctx) (i32.const 0)))
  (func (export "proxy_on_request_trailers") (param $ctx i32) (param i32) (result i32)
    (call $ret (i32.const 5) (local.get $ctx) (i32.const 0)))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param i32 i32) (result i32)
    (call $ret (i32.const 6) (local.get $ctx) (i32.const 0)))
  (func (export "proxy_on_response_body") (param $ctx i32) (param i32 i32) (result i32)
    (call $ret (i32.const 7) (local.get $ctx) (i32.const 0)))
  (func (export "proxy_on_response_trailers") (param $ctx i32) (param i32) (result i32)
    (call $ret (i32.const 8) (local.get $ctx) (i32.const 0)))
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param i32 i32 i32 i32)
    (drop (call $run (i32.const 9) (local.get $ctx))))
  (func (export "proxy_on_tick") (param $ctx i32)
    (drop (call $run (i32.const 10) (local.get $ctx)))
    (global.set $ticks (i32.add (global.get $ticks) (i32.const 1)))
    (if (i32.ge_u (global.get $ticks) (i32.const 4))
      (then (drop (call $h3 (i32.const 0))))))
  (func (export "proxy_on_queue_ready") (param $ctx i32) (param i32)
    (drop (call $run (i32.const 11) (local.get $ctx))))
  (func (export "proxy_on_done") (param $ctx i32) (result i32)
    (call $ret (i32.const 12) (local.get $ctx) (i32.const 1)))
  (func (export "proxy_on_log") (param $ctx i32)
    (drop (call $run (i32.const 13) (local.get $ctx))))
  (func (export "proxy_on_delete") (param $ctx i32)
    (drop (call $run (i32.const 14) (local.get $ctx))))
)
"#
    )
}

fn fixture() -> &'static (Host, Module) {
    static FIXTURE: OnceLock<(Host, Module)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let host = Host::new(HostOptions::default()).expect("host");
        let module = host.load_bytes("host_abi_guest", guest().as_bytes()).expect("the host ABI guest loads");
        (host, module)
    })
}

/// Whether the fixed guest loads (the replay test asserts it).
pub fn fixture_loads() -> bool {
    std::panic::catch_unwind(fixture).is_ok()
}

/// Whether `needle` (non-empty) occurs in `hay`. Slices are compared only where the first byte matches:
/// under libFuzzer every slice comparison is an intercepted, traced memcmp, and a window-by-window
/// scan of the guest's 256 KiB made that most of the target's time.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let first = needle[0];
    hay.windows(needle.len()).any(|w| w[0] == first && w == needle)
}

/// The target.
pub fn host_abi(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    // The fuzzer may write the secret itself; then finding it proves nothing.
    run(&input, !contains(data, SECRET));
}

/// Runs the three streams and checks; returns the proxy afterwards (None: the plugin did not configure).
fn run(input: &Input, check_secret: bool) -> Option<Proxy> {
    let program = encode(input);
    let check_secret = check_secret && !contains(&program, SECRET);
    let (host, module) = fixture();
    let answer = |_: &meshwasm_host::HttpCall| CallReply::response(200, [("x-answer", "yes")], "answer");
    let proxy = Proxy::builder(host)
        .plugin(Plugin::new(module.clone()).name("abi").config(&program))
        .upstream("up", Upstream::handler(answer))
        .upstream("slow", Upstream::handler(move |c| answer(c).after(Duration::from_millis(50))))
        .upstream("never", Upstream::handler(|_| CallReply::no_answer()))
        .upstream("fail", Upstream::handler(|_| CallReply::failure()))
        .failure_policy(if input.actions[15].is_multiple_of(2) {
            FailurePolicy::FailClosed
        } else {
            FailurePolicy::Reload
        })
        .build();
    // A program whose configure returns false (or traps) fails the plugin: nothing more to run.
    let Ok(mut proxy) = proxy else { return None };

    let s1 = proxy
        .start(
            0,
            Request::post("/s1").header("x-secret", SECRET).body(SECRET).trailer("x-secret-trailer", SECRET),
        )
        .expect("worker 0");
    let s1_forwarded = proxy.exchange(s1).and_then(|e| e.upstream_request);
    let reply = || UpstreamReply::new(200).header("x-up", "2").body("two").trailer("x-t", "2");
    let s2 = proxy
        .start(0, Request::post("/s2").header("x-h", "v").body("body2").trailer("x-t", "v"))
        .expect("worker 0");
    proxy.advance(Duration::from_millis(100));
    let _ = proxy.finish(s2, reply());
    let Ok(ex1) = proxy.finish(
        s1,
        UpstreamReply::new(200).header("x-secret", SECRET).body(SECRET).trailer("x-secret-trailer", SECRET),
    ) else {
        panic!("stream 1 vanished");
    };
    let s3 = proxy.start(0, Request::get("/s3")).expect("worker 0");
    proxy.advance(Duration::from_millis(100));
    let _ = proxy.finish(s3, reply());

    let worker = proxy.worker(0).expect("worker 0");
    let failed = worker.vm_stats().iter().any(|v| v.failed) || worker.vm_failure(0).is_some();
    // Stream 1 reached its upstream with its own request before stream 2 ran.
    if let Some(up) = s1_forwarded {
        assert_eq!(up.headers.get_bytes("x-secret"), Some(SECRET), "stream 1's request headers changed");
        assert_eq!(up.body, SECRET, "stream 1's request body changed");
    }
    if !failed && ex1.state == StreamState::Complete {
        assert_eq!(ex1.status, 200, "stream 1's response status changed: {ex1:?}");
        assert_eq!(ex1.response_body, SECRET, "stream 1's response body changed");
        assert_eq!(
            ex1.response_headers.get_bytes("x-secret"),
            Some(SECRET),
            "stream 1's response headers changed"
        );
    }
    if check_secret {
        for vm in 0..worker.vm_stats().len() {
            let memory = worker.vm_memory(vm).unwrap_or_default();
            assert!(!contains(&memory, SECRET), "stream 1's secret was written into the guest's memory");
        }
    }

    // Streams still paused end as a client going away; then every call times out or is answered.
    for id in [s1, s2, s3] {
        if matches!(proxy.stream_state(id), Some(StreamState::Paused { .. } | StreamState::WaitingUpstream)) {
            proxy.cancel(id);
        }
    }
    proxy.advance(Duration::from_secs(3600 * 24 * 50));
    let worker = proxy.worker(0).expect("worker 0");
    assert_eq!(worker.live_streams(), 0, "streams left behind");
    assert_eq!(worker.pending_calls(), 0, "http calls left pending");
    for vm in worker.vm_stats() {
        if !vm.failed {
            assert_eq!(vm.stream_contexts, 0, "stream contexts left behind: {vm:?}");
            assert_eq!(vm.root_contexts, 1, "root contexts: {vm:?}");
        }
    }
    Some(proxy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(phase: u8, call: &str, args: Vec<Arg>) -> Op {
        let call = CALLS.iter().position(|(n, _)| *n == call).expect("a hostcall") as u8;
        Op { phase: phase - 1, call, args }
    }

    #[test]
    fn the_guest_runs_the_program_and_the_memory_check_sees_what_the_host_returned() {
        // Stream 2's and 3's body and headers are read; stream 2's body lands in the guest's memory.
        let input = Input {
            actions: [0; 16],
            ops: vec![
                op(
                    4,
                    "proxy_get_buffer_bytes",
                    vec![Arg::Known(0), Arg::Known(0), Arg::Known(14), Arg::Known(1), Arg::Known(2)],
                ),
                op(3, "proxy_get_header_map_pairs", vec![Arg::Known(0), Arg::Known(3), Arg::Known(4)]),
                op(
                    3,
                    "proxy_http_call",
                    vec![
                        Arg::Known(0),
                        Arg::Pairs(true, vec![]),
                        Arg::Known(25),
                        Arg::Known(25),
                        Arg::Known(13),
                        Arg::Known(5),
                    ],
                ),
            ],
        };
        let proxy = run(&input, true).expect("configures");
        let counts = proxy.call_counts();
        let abi = counts.values().next().expect("one VM");
        assert_eq!(
            abi.hostcalls.get("proxy_get_header_map_pairs"),
            Some(&2),
            "streams 2 and 3, not 1: {abi:?}"
        );
        assert_eq!(abi.hostcalls.get("proxy_http_call"), Some(&2));
        assert_eq!(proxy.calls().len(), 2, "both calls dispatched");
        let memory = proxy.worker(0).and_then(|w| w.vm_memory(0)).expect("memory");
        assert!(contains(&memory, b"body2"), "stream 2's body was returned into the guest's memory");
        assert!(contains(&memory, b"/s2"), "stream 2's headers too");
    }
}
