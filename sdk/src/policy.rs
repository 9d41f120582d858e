//! Recovery policies across the ABI: pure state machines, `on_event(event) -> actions`.
//!
//! A policy does no I/O of its own: the host (or the deterministic simulator) feeds it
//! events and carries out the actions it returns, so the same code runs in production and in
//! simulation. Events and actions cross the ABI as JSON documents (one per event, one per
//! action) so that new event and action types can be added without a new table layout: a
//! policy that does not know an event sees [`Event::Unknown`] and may ignore it; a host that
//! does not know an action logs it and carries on.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::abi::*;
use crate::backend::libc_errno;
use crate::{panic_message, Host};

/// Something that happened, as a policy sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// This node started; `role` is e.g. "server" or "controller".
    Started {
        node: String,
        role: String,
    },
    /// This node is stopping with a shutdown mode ("normal", "expedite", "immediate", "force").
    Stopping {
        mode: String,
    },
    /// A peer server or controller became reachable or unreachable.
    PeerUp {
        peer: String,
    },
    PeerDown {
        peer: String,
        reason: String,
    },
    ControllerUp {
        controller: String,
    },
    ControllerDown {
        controller: String,
    },
    /// A replication error on a volume set (code as reported by the link or the peer).
    ReplicationError {
        volume_set: String,
        code: i32,
        message: String,
    },
    /// A line of the running log, for trigger matching.
    LogLine {
        text: String,
    },
    /// An operator or cluster-manager command with its arguments.
    Admin {
        command: String,
        args: serde_json::Value,
    },
    /// Time passed (milliseconds since the node started).
    Tick {
        now_ms: u64,
    },
    /// The replication engine reports a change of a volume set: `change` is one of
    /// `link_up`, `link_down`, `resync_complete`, `resync_failed`, `frozen`, `released`,
    /// `promoted`, `demoted`, `peer_is_production`; `local_site` and `production` say where
    /// this node is and which site serves the set's volumes now.
    VolumeSet {
        volume_set: String,
        change: String,
        #[serde(default)]
        local_site: String,
        #[serde(default)]
        production: String,
        #[serde(default)]
        detail: String,
    },
    /// Quorum recovery (controllers). A shutdown command for `servers` with a shutdown mode
    /// (`normal`, `expedite`, `immediate`, `force`), from the operator (`from` = "operator")
    /// or rebroadcast by controller `from`.
    ShutdownCommand {
        servers: Vec<String>,
        mode: String,
        from: String,
    },
    /// The command to bring servers back online (FIG. 4 step 450), from the operator or a
    /// controller.
    ReturnCommand {
        servers: Vec<String>,
        from: String,
    },
    /// What a controller learned of a server: whether it is operational, its position (last
    /// replicated sequence / copy token) and how much copy work towards it is pending.
    ServerReport {
        server: String,
        operational: bool,
        position: u64,
        copies_pending: u64,
    },
    /// A message from another controller (the policy defines its body).
    ControllerMessage {
        from: String,
        body: serde_json::Value,
    },
    /// At start: this controller's saved shutdown key, or none (missing, torn or corrupt keys
    /// are reported as none: never as a yes).
    KeyLoaded {
        key: Option<serde_json::Value>,
    },
    /// An event this SDK version does not know, passed through as it came.
    #[serde(skip)]
    Unknown(serde_json::Value),
}

/// Something a policy asks the host to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    GoOnline {
        target: String,
    },
    GoOffline {
        target: String,
        reason: String,
    },
    Vote {
        election: String,
        candidate: String,
        yes: bool,
    },
    Warmstart {
        target: String,
        reason: String,
    },
    SetVolumeSetState {
        volume_set: String,
        state: String,
    },
    CaptureBundle {
        reason: String,
    },
    Log {
        level: String,
        message: String,
    },
    /// Ask the replication engine to carry out a mechanism on a volume set: `suspend`,
    /// `resync`, `freeze`, `run`, `swap`, `failover`, `demote`.
    Replicate {
        volume_set: String,
        op: String,
    },
    /// Refuse the admin command being handled; `reason` is shown to the operator and the
    /// command's other actions are not carried out.
    Refuse {
        reason: String,
    },
    /// Quorum recovery: save this controller's shutdown key durably (fsync'd, checksummed).
    SaveKey {
        key: serde_json::Value,
    },
    /// Send a message to another controller (`to` = its id, or `*` for every other one).
    SendToController {
        to: String,
        body: serde_json::Value,
    },
    /// Take a server offline with a shutdown mode.
    ShutdownServer {
        server: String,
        mode: String,
    },
    /// Publish a status entry (e.g. the quorum outcome and why), shown by status commands.
    Report {
        key: String,
        value: serde_json::Value,
    },
    /// An action this SDK version does not know, passed through as it came.
    #[serde(skip)]
    Unknown(serde_json::Value),
}

/// A shutdown mode (seed 000, FIG. 4 step 430), as carried in `ShutdownCommand`,
/// `ShutdownServer` and `Stopping`: how much of the pending copy work is done before a server
/// goes out of operation. Ordered from the gentlest to the most abrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ShutdownMode {
    /// Finish the pending copies first.
    Normal,
    /// Finish them first, with raised priority or bandwidth.
    Expedite,
    /// Go offline now; the copies stay pending (tracked, resumed later).
    Immediate,
    /// Go offline now, doing nothing more.
    Force,
}

impl ShutdownMode {
    pub const ALL: [ShutdownMode; 4] =
        [ShutdownMode::Normal, ShutdownMode::Expedite, ShutdownMode::Immediate, ShutdownMode::Force];

    pub fn name(self) -> &'static str {
        match self {
            ShutdownMode::Normal => "normal",
            ShutdownMode::Expedite => "expedite",
            ShutdownMode::Immediate => "immediate",
            ShutdownMode::Force => "force",
        }
    }

    pub fn parse(s: &str) -> Option<ShutdownMode> {
        ShutdownMode::ALL.into_iter().find(|m| m.name() == s)
    }
}

impl Event {
    /// Parse an event, keeping unknown types as [`Event::Unknown`] instead of failing.
    pub fn from_json(text: &str) -> Result<Event, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("event is not JSON: {e}"))?;
        Ok(serde_json::from_value(v.clone()).unwrap_or(Event::Unknown(v)))
    }

    pub fn to_json(&self) -> String {
        match self {
            Event::Unknown(v) => v.to_string(),
            e => serde_json::to_string(e).unwrap_or_default(),
        }
    }
}

impl Action {
    pub fn from_json(text: &str) -> Result<Action, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("action is not JSON: {e}"))?;
        Ok(serde_json::from_value(v.clone()).unwrap_or(Action::Unknown(v)))
    }

    pub fn to_json(&self) -> String {
        match self {
            Action::Unknown(v) => v.to_string(),
            a => serde_json::to_string(a).unwrap_or_default(),
        }
    }
}

/// A recovery policy plugin: a pure state machine.
///
/// Threading: the host calls `on_event` for one instance from one thread at a time (it holds
/// a lock), so `&mut self` is safe. No I/O: everything the policy wants done is an action.
pub trait RecoveryPolicy: Send + Sized + 'static {
    fn open(host: &Host, config: &serde_json::Value) -> Result<Self, String>;
    fn on_event(&mut self, event: &Event) -> Vec<Action>;
}

struct Instance<P> {
    inner: std::sync::Mutex<P>,
    failed: AtomicBool,
}

unsafe extern "C" fn open_shim<P: RecoveryPolicy>(
    host: *const GwHostApi,
    config: GwStr,
    _next: *const GwBackendHandle,
    out: *mut GwInstance,
    err: *mut GwError,
) -> i32 {
    // SAFETY: forwarded ABI arguments.
    unsafe {
        crate::open_instance(host, config, out, err, |h, c| {
            P::open(h, c).map(|p| Instance { inner: std::sync::Mutex::new(p), failed: AtomicBool::new(false) })
        })
    }
}

unsafe extern "C" fn on_event_shim<P: RecoveryPolicy>(
    i: GwInstance,
    event: GwStr,
    sink: GwSink,
    err: *mut GwError,
) -> i32 {
    // SAFETY: the host passes its instance and an event string for this call.
    let (s, text) = unsafe { (&*(i as *const Instance<P>), event.as_str()) };
    let set_err = |m: &str| {
        if !err.is_null() {
            // SAFETY: the host's error buffer for this call.
            unsafe { (*err).set(m) }
        }
    };
    let event = match Event::from_json(text) {
        Ok(e) => e,
        Err(m) => {
            set_err(&m);
            return libc_errno::EINVAL;
        }
    };
    let (false, Ok(mut policy)) = (s.failed.load(Ordering::Acquire), s.inner.lock()) else {
        set_err("policy failed earlier (it panicked) and accepts no more events");
        return libc_errno::EIO;
    };
    match catch_unwind(AssertUnwindSafe(|| policy.on_event(&event))) {
        Ok(actions) => {
            if let Some(emit) = sink.emit {
                for a in actions {
                    let json = a.to_json();
                    // SAFETY: the host's sink with its context, valid for this call.
                    unsafe { emit(sink.ctx, GwStr::new(&json)) };
                }
            }
            GW_OK
        }
        Err(p) => {
            s.failed.store(true, Ordering::Release);
            set_err(&format!("panicked: {}", panic_message(&p)));
            GW_EPANIC
        }
    }
}

/// The table a recovery policy plugin exports.
pub const fn policy_vtable<P: RecoveryPolicy>() -> GwPolicyVtable {
    GwPolicyVtable {
        struct_size: std::mem::size_of::<GwPolicyVtable>(),
        open: Some(open_shim::<P>),
        close: Some(crate::close_boxed::<Instance<P>>),
        on_event: Some(on_event_shim::<P>),
    }
}

unsafe extern "C" fn collect(ctx: *mut c_void, json: GwStr) {
    // SAFETY: ctx is the Vec<String> ImportedPolicy::on_event passed, alive for the call.
    let out = unsafe { &mut *(ctx as *mut Vec<String>) };
    // SAFETY: the plugin passes a string valid for this call.
    out.push(unsafe { json.as_str() }.to_owned());
}

/// A recovery policy on the other side of the ABI, as the host (or the simulator) uses it.
pub struct ImportedPolicy {
    vt: GwPolicyVtable,
    instance: GwInstance,
    name: String,
    failed: bool,
}

// SAFETY: on_event is serialised by `&mut self`; the plugin may be called from any thread.
unsafe impl Send for ImportedPolicy {}

impl ImportedPolicy {
    /// # Safety
    /// `instance` must come from `vt.open` and stay owned by the returned value.
    pub unsafe fn new(vt: GwPolicyVtable, instance: GwInstance, name: String) -> Result<Self, String> {
        if vt.on_event.is_none() {
            return Err(format!("{name}: required entry missing: on_event"));
        }
        Ok(Self { vt, instance, name, failed: false })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Feed one event; returns the policy's actions, or why it could not answer.
    pub fn on_event(&mut self, event: &Event) -> Result<Vec<Action>, String> {
        if self.failed {
            return Err(format!("{}: policy failed earlier", self.name));
        }
        let Some(f) = self.vt.on_event else { return Err("no on_event entry".into()) };
        let json = event.to_json();
        let mut out: Vec<String> = Vec::new();
        let sink = GwSink { ctx: &mut out as *mut Vec<String> as *mut c_void, emit: Some(collect) };
        let mut err = GwError::default();
        // SAFETY: valid entry and instance; `json`, `out` and `err` live across the call.
        let code = unsafe { f(self.instance, GwStr::new(&json), sink, &mut err) };
        if code == GW_EPANIC {
            self.failed = true;
            return Err(format!("{}: policy {}; instance marked failed", self.name, err.message()));
        }
        if code != GW_OK {
            return Err(format!("{}: on_event failed ({code}): {}", self.name, err.message()));
        }
        out.iter().map(|j| Action::from_json(j)).collect()
    }
}

impl Drop for ImportedPolicy {
    fn drop(&mut self) {
        if let Some(close) = self.vt.close {
            // SAFETY: we own the instance; closed exactly once.
            unsafe { close(self.instance) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        errors: u32,
    }

    impl RecoveryPolicy for Counter {
        fn open(_host: &Host, config: &serde_json::Value) -> Result<Self, String> {
            if config.get("fail").is_some() {
                return Err("told to fail".into());
            }
            Ok(Counter { errors: 0 })
        }
        fn on_event(&mut self, event: &Event) -> Vec<Action> {
            match event {
                Event::ReplicationError { volume_set, .. } => {
                    self.errors += 1;
                    if self.errors == 2 {
                        panic!("second error");
                    }
                    vec![Action::GoOffline { target: volume_set.clone(), reason: "error".into() }]
                }
                Event::Unknown(v) => vec![Action::Log { level: "info".into(), message: v.to_string() }],
                _ => vec![],
            }
        }
    }

    fn open(config: &str) -> Result<ImportedPolicy, String> {
        let vt = policy_vtable::<Counter>();
        let mut out: GwInstance = std::ptr::null_mut();
        let mut err = GwError::default();
        let open = vt.open.unwrap();
        // SAFETY: valid arguments for the call; a null host table is allowed.
        let code = unsafe { open(std::ptr::null(), GwStr::new(config), std::ptr::null(), &mut out, &mut err) };
        if code != GW_OK {
            return Err(err.message());
        }
        // SAFETY: `out` came from this table's open.
        unsafe { ImportedPolicy::new(vt, out, "counter".into()) }
    }

    #[test]
    fn events_and_actions_cross_as_json() {
        assert_eq!(open(r#"{"fail":1}"#).err().unwrap(), "told to fail");
        let mut p = open("").unwrap();
        let e = Event::ReplicationError { volume_set: "vs1".into(), code: 5, message: "x".into() };
        assert_eq!(p.on_event(&e).unwrap(), vec![Action::GoOffline { target: "vs1".into(), reason: "error".into() }]);
        let future = serde_json::json!({"type": "quantum_event", "x": 1});
        let acts = p.on_event(&Event::Unknown(future.clone())).unwrap();
        assert_eq!(acts, vec![Action::Log { level: "info".into(), message: future.to_string() }]);
        let err = p.on_event(&e).unwrap_err();
        assert!(err.contains("second error") && err.contains("marked failed"), "{err}");
        assert!(p.failed());
        assert!(p.on_event(&Event::Tick { now_ms: 1 }).is_err());
    }

    #[test]
    fn unknown_types_survive_a_round_trip() {
        let a = Action::from_json(r#"{"type":"launch","target":"x"}"#).unwrap();
        assert!(matches!(a, Action::Unknown(_)));
        assert_eq!(Action::from_json(&a.to_json()).unwrap(), a);
        let e = Event::from_json(r#"{"type":"peer_down","peer":"b","reason":"eof"}"#).unwrap();
        assert_eq!(e, Event::PeerDown { peer: "b".into(), reason: "eof".into() });
        assert!(Event::from_json("not json").is_err());
    }
}
