//! The rule engine behind the fault filter: config parsing and the decision, per call, of
//! whether to delay, hang, fail or drop it. Pure apart from the trigger files it checks and the
//! counters it keeps, so it is unit-tested without a layer below; the filter (`lib.rs`) does
//! the sleeping, logging and passing through.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gateway_sdk::serde_json::{Map, Value};
use gateway_sdk::{BackendError, ErrorKind};

/// The operations a filter sees (`size` and `capabilities` are not faulted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Trim,
    Zero,
    Extents,
    Cache,
}

impl Op {
    pub const ALL: [Op; 7] = [Op::Read, Op::Write, Op::Flush, Op::Trim, Op::Zero, Op::Extents, Op::Cache];

    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Trim => "trim",
            Op::Zero => "zero",
            Op::Extents => "extents",
            Op::Cache => "cache",
        }
    }

    fn index(self) -> usize {
        Op::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }

    /// Operations that change or persist data: the only ones a drop can lose.
    fn droppable(self) -> bool {
        matches!(self, Op::Write | Op::Flush | Op::Trim | Op::Zero)
    }

    fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.name() == s)
    }
}

/// Which operations a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpSel {
    Any,
    One(Op),
}

impl OpSel {
    fn matches(self, op: Op) -> bool {
        match self {
            OpSel::Any => true,
            OpSel::One(o) => o == op,
        }
    }
}

impl fmt::Display for OpSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpSel::Any => f.write_str("any"),
            OpSel::One(o) => f.write_str(o.name()),
        }
    }
}

/// The errors a rule can inject, named as in errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    Eio,
    Enospc,
    Eperm,
    Einval,
    Enotsup,
    Eshutdown,
}

impl Errno {
    const ALL: [Errno; 6] = [Errno::Eio, Errno::Enospc, Errno::Eperm, Errno::Einval, Errno::Enotsup, Errno::Eshutdown];

    pub fn name(self) -> &'static str {
        match self {
            Errno::Eio => "EIO",
            Errno::Enospc => "ENOSPC",
            Errno::Eperm => "EPERM",
            Errno::Einval => "EINVAL",
            Errno::Enotsup => "ENOTSUP",
            Errno::Eshutdown => "ESHUTDOWN",
        }
    }

    /// The backend error kind the host maps back onto this errno on the NBD wire.
    pub fn kind(self) -> ErrorKind {
        match self {
            Errno::Eio => ErrorKind::Io,
            Errno::Enospc => ErrorKind::NoSpace,
            Errno::Eperm => ErrorKind::ReadOnly,
            Errno::Einval => ErrorKind::Invalid,
            Errno::Enotsup => ErrorKind::NotSupported,
            Errno::Eshutdown => ErrorKind::Shutdown,
        }
    }

    fn parse(s: &str) -> Option<Errno> {
        Errno::ALL.into_iter().find(|e| e.name().eq_ignore_ascii_case(s))
    }

    /// The error a faulted call returns.
    pub fn error(self, op: Op) -> BackendError {
        BackendError::new(self.kind(), format!("fault injected: {} on {}", self.name(), op.name()))
    }
}

/// The part shared by rules, hangs and drops: which calls it applies to and how often.
#[derive(Debug)]
pub struct Matcher {
    pub op: OpSel,
    /// Probability that a matching call (past `after`) fires.
    pub rate: f64,
    /// Active only while this file exists.
    pub trigger: Option<PathBuf>,
    /// Matching calls to let through before the first can fire.
    pub after: u64,
    /// Fire at most this many times.
    pub count: Option<u64>,
    seen: AtomicU64,
    fired: AtomicU64,
}

impl Matcher {
    /// Decide for one call of `op`. A call "matches" when its operation is selected and the
    /// trigger file (if any) exists; only matching calls count towards `after`.
    fn fires(&self, op: Op, rng: &Rng) -> bool {
        if !self.op.matches(op) {
            return false;
        }
        if let Some(t) = &self.trigger {
            if std::fs::symlink_metadata(t).is_err() {
                return false;
            }
        }
        if self.seen.fetch_add(1, Ordering::Relaxed) < self.after {
            return false;
        }
        if self.rate <= 0.0 || (self.rate < 1.0 && rng.next_f64() >= self.rate) {
            return false;
        }
        match self.count {
            None => {
                self.fired.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(c) => {
                self.fired.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| (f < c).then_some(f + 1)).is_ok()
            }
        }
    }

    /// How many times this matcher has fired.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op {}", self.op)?;
        if self.rate < 1.0 {
            write!(f, ", rate {}", self.rate)?;
        }
        if let Some(t) = &self.trigger {
            write!(f, ", while {} exists", t.display())?;
        }
        if self.after > 0 {
            write!(f, ", after {}", self.after)?;
        }
        if let Some(c) = self.count {
            write!(f, ", at most {c} times")?;
        }
        Ok(())
    }
}

/// An error rule.
#[derive(Debug)]
pub struct Rule {
    pub matcher: Matcher,
    pub error: Errno,
}

/// What to do with a call after its delay and hang.
#[derive(Debug)]
pub enum Verdict {
    /// Pass it to the layer below.
    Pass,
    /// Fail it with this error.
    Fail(BackendError),
    /// Report success without passing it down (a lost write).
    Drop,
}

/// A small, lock-free xorshift64 generator: deterministic for a given seed and call order.
#[derive(Debug)]
struct Rng(AtomicU64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(AtomicU64::new(z.max(1)))
    }

    fn step(mut x: u64) -> u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&self) -> f64 {
        let prev = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(Rng::step(x))).unwrap_or(1);
        (Rng::step(prev) >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub const DEFAULT_SEED: u64 = 0x5EED;

/// A parsed fault configuration and its counters.
#[derive(Debug)]
pub struct Engine {
    pub rules: Vec<Rule>,
    /// Per-operation delay, indexed by [`Op::index`].
    delays: [Duration; 7],
    pub hangs: Vec<Matcher>,
    pub drops: Vec<Matcher>,
    pub seed: u64,
    rng: Rng,
}

/// Poll interval while a hang's trigger file exists.
pub const HANG_POLL: Duration = Duration::from_millis(10);

impl Engine {
    /// Parse the filter's config (the JSON of its TOML table).
    pub fn from_config(cfg: &Value) -> Result<Engine, String> {
        let top = as_table(cfg, "config")?;
        check_keys(top, "", &["rules", "delay_ms", "hang", "drop", "seed"])?;
        let seed = match top.get("seed") {
            None => DEFAULT_SEED,
            Some(v) => v.as_u64().ok_or_else(|| format!("`seed`: expected a non-negative integer, got {v}"))?,
        };
        let mut rules = Vec::new();
        if let Some(v) = top.get("rules") {
            let list = v.as_array().ok_or_else(|| format!("`rules`: expected a list of tables, got {v}"))?;
            for (i, r) in list.iter().enumerate() {
                let path = format!("rules[{i}]");
                let t = as_table(r, &path)?;
                check_keys(t, &path, &["op", "error", "rate", "trigger_file", "after", "count"])?;
                let error = match t.get("error") {
                    None => return Err(format!("`{path}.error`: missing (one of {})", errno_names())),
                    Some(v) => v
                        .as_str()
                        .and_then(Errno::parse)
                        .ok_or_else(|| format!("`{path}.error`: expected one of {}, got {v}", errno_names()))?,
                };
                let matcher = matcher(t, &path, None, false)?;
                rules.push(Rule { matcher, error });
            }
        }
        let mut delays = [Duration::ZERO; 7];
        if let Some(v) = top.get("delay_ms") {
            let t = as_table(v, "delay_ms")?;
            let mut any = None;
            let mut set = [None; 7];
            for (k, v) in t {
                let ms = v.as_u64().ok_or_else(|| {
                    format!("`delay_ms.{k}`: expected a non-negative integer of milliseconds, got {v}")
                })?;
                let d = Some(Duration::from_millis(ms));
                match (k.as_str(), Op::parse(k)) {
                    ("any", _) => any = d,
                    (_, Some(op)) => set[op.index()] = d,
                    _ => return Err(format!("unknown key `delay_ms.{k}` (expected one of {}, any)", op_names())),
                }
            }
            for op in Op::ALL {
                delays[op.index()] = set[op.index()].or(any).unwrap_or(Duration::ZERO);
            }
        }
        let hangs = one_or_many(top.get("hang"), "hang", |t, path| {
            check_keys(t, path, &["op", "trigger_file", "rate", "after", "count"])?;
            matcher(t, path, None, true)
        })?;
        let drops = one_or_many(top.get("drop"), "drop", |t, path| {
            check_keys(t, path, &["op", "trigger_file", "rate", "after", "count"])?;
            let m = matcher(t, path, Some(OpSel::One(Op::Write)), false)?;
            if let OpSel::One(op) = m.op {
                if !op.droppable() {
                    return Err(format!(
                        "`{path}.op`: a {} cannot be dropped (only write, flush, trim, zero or any)",
                        op.name()
                    ));
                }
            }
            Ok(m)
        })?;
        Ok(Engine { rules, delays, hangs, drops, seed, rng: Rng::new(seed) })
    }

    /// Whether calls may sleep (delays or hangs configured): the host must then run them off
    /// its reactor, and its call timeout applies.
    pub fn blocks(&self) -> bool {
        !self.hangs.is_empty() || self.delays.iter().any(|d| !d.is_zero())
    }

    /// The delay configured for `op`.
    pub fn delay(&self, op: Op) -> Duration {
        self.delays[op.index()]
    }

    /// The trigger file of the first hang that fires for this call, if any: the call must
    /// wait while it exists.
    pub fn hang(&self, op: Op) -> Option<&Path> {
        self.hangs.iter().find(|h| h.fires(op, &self.rng)).and_then(|h| h.trigger.as_deref())
    }

    /// Fail, drop or pass this call. Rules are checked in order and the first that fires
    /// decides (later rules do not see the call); drops are checked only if no rule fired.
    pub fn verdict(&self, op: Op) -> Verdict {
        if let Some(r) = self.rules.iter().find(|r| r.matcher.fires(op, &self.rng)) {
            return Verdict::Fail(r.error.error(op));
        }
        if op.droppable() && self.drops.iter().any(|d| d.fires(op, &self.rng)) {
            return Verdict::Drop;
        }
        Verdict::Pass
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rules.is_empty() && self.hangs.is_empty() && self.drops.is_empty() && !self.blocks() {
            return f.write_str("no faults configured (pass-through)");
        }
        let mut parts = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            parts.push(format!("rule {i}: {} on {}", r.error.name(), r.matcher));
        }
        let delays: Vec<String> = Op::ALL
            .iter()
            .filter(|o| !self.delay(**o).is_zero())
            .map(|o| format!("{}={}", o.name(), self.delay(*o).as_millis()))
            .collect();
        if !delays.is_empty() {
            parts.push(format!("delay_ms: {}", delays.join(" ")));
        }
        for h in &self.hangs {
            parts.push(format!("hang: {h}"));
        }
        for d in &self.drops {
            parts.push(format!("drop: {d}"));
        }
        parts.push(format!("seed {}", self.seed));
        f.write_str(&parts.join("; "))
    }
}

fn op_names() -> String {
    Op::ALL.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
}

fn errno_names() -> String {
    Errno::ALL.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")
}

fn as_table<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("`{path}`: expected a table, got {v}"))
}

fn check_keys(t: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), String> {
    for k in t.keys() {
        if !allowed.contains(&k.as_str()) {
            let full = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            return Err(format!("unknown key `{full}` (expected one of {})", allowed.join(", ")));
        }
    }
    Ok(())
}

/// A table, or a list of tables (`hang`, `drop`).
fn one_or_many(
    v: Option<&Value>,
    name: &str,
    parse: impl Fn(&Map<String, Value>, &str) -> Result<Matcher, String>,
) -> Result<Vec<Matcher>, String> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Object(t)) => Ok(vec![parse(t, name)?]),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let path = format!("{name}[{i}]");
                parse(as_table(x, &path)?, &path)
            })
            .collect(),
        Some(other) => Err(format!("`{name}`: expected a table or a list of tables, got {other}")),
    }
}

fn matcher(
    t: &Map<String, Value>,
    path: &str,
    default_op: Option<OpSel>,
    trigger_required: bool,
) -> Result<Matcher, String> {
    let op = match (t.get("op"), default_op) {
        (None, Some(d)) => d,
        (None, None) => return Err(format!("`{path}.op`: missing (one of {}, any)", op_names())),
        (Some(v), _) => match v.as_str().map(|s| (s, Op::parse(s))) {
            Some(("any", _)) => OpSel::Any,
            Some((_, Some(op))) => OpSel::One(op),
            _ => return Err(format!("`{path}.op`: expected one of {}, any; got {v}", op_names())),
        },
    };
    let rate = match t.get("rate") {
        None => 1.0,
        Some(v) => match v.as_f64() {
            Some(r) if (0.0..=1.0).contains(&r) => r,
            _ => return Err(format!("`{path}.rate`: expected a number from 0.0 to 1.0, got {v}")),
        },
    };
    let trigger = match t.get("trigger_file") {
        None if trigger_required => {
            return Err(format!("`{path}.trigger_file`: missing (a hang lasts while it exists)"))
        }
        None => None,
        Some(v) => match v.as_str() {
            Some(s) if !s.is_empty() => Some(PathBuf::from(s)),
            _ => return Err(format!("`{path}.trigger_file`: expected a non-empty path, got {v}")),
        },
    };
    let int = |k: &str| -> Result<Option<u64>, String> {
        t.get(k)
            .map(|v| v.as_u64().ok_or_else(|| format!("`{path}.{k}`: expected a non-negative integer, got {v}")))
            .transpose()
    };
    Ok(Matcher {
        op,
        rate,
        trigger,
        after: int("after")?.unwrap_or(0),
        count: int("count")?,
        seen: AtomicU64::new(0),
        fired: AtomicU64::new(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_sdk::serde_json::json;

    fn engine(v: Value) -> Engine {
        Engine::from_config(&v).unwrap()
    }

    fn err(v: Value) -> String {
        Engine::from_config(&v).unwrap_err()
    }

    fn fails(e: &Engine, op: Op) -> Option<(ErrorKind, String)> {
        match e.verdict(op) {
            Verdict::Fail(b) => Some((b.kind, b.context)),
            _ => None,
        }
    }

    #[test]
    fn empty_config_passes_everything() {
        for cfg in [json!({}), json!({ "rules": [] })] {
            let e = engine(cfg);
            assert!(!e.blocks());
            for op in Op::ALL {
                assert!(matches!(e.verdict(op), Verdict::Pass), "{op:?}");
                assert!(e.hang(op).is_none());
                assert_eq!(e.delay(op), Duration::ZERO);
            }
            assert_eq!(e.to_string(), "no faults configured (pass-through)");
        }
    }

    #[test]
    fn rule_applies_to_its_operation_only_with_its_error() {
        let e = engine(json!({ "rules": [{ "op": "write", "error": "ENOSPC" }] }));
        assert_eq!(fails(&e, Op::Write), Some((ErrorKind::NoSpace, "fault injected: ENOSPC on write".into())));
        for op in [Op::Read, Op::Flush, Op::Trim, Op::Zero, Op::Extents, Op::Cache] {
            assert!(fails(&e, op).is_none(), "{op:?}");
        }
        for (name, kind) in [
            ("EIO", ErrorKind::Io),
            ("ENOSPC", ErrorKind::NoSpace),
            ("EPERM", ErrorKind::ReadOnly),
            ("EINVAL", ErrorKind::Invalid),
            ("ENOTSUP", ErrorKind::NotSupported),
            ("eshutdown", ErrorKind::Shutdown),
        ] {
            let e = engine(json!({ "rules": [{ "op": "any", "error": name }] }));
            for op in Op::ALL {
                let (k, msg) = fails(&e, op).unwrap();
                assert_eq!(k, kind);
                assert_eq!(msg, format!("fault injected: {} on {}", name.to_uppercase(), op.name()));
            }
        }
    }

    #[test]
    fn first_firing_rule_wins() {
        let e = engine(json!({ "rules": [
            { "op": "read", "error": "EPERM", "count": 1 },
            { "op": "read", "error": "EIO" },
        ] }));
        assert_eq!(fails(&e, Op::Read).unwrap().0, ErrorKind::ReadOnly);
        assert_eq!(fails(&e, Op::Read).unwrap().0, ErrorKind::Io);
        assert_eq!(fails(&e, Op::Read).unwrap().0, ErrorKind::Io);
        assert_eq!(e.rules[0].matcher.fired(), 1);
        assert_eq!(e.rules[1].matcher.fired(), 2);
    }

    #[test]
    fn after_and_count() {
        let e = engine(json!({ "rules": [{ "op": "write", "error": "EIO", "after": 2, "count": 3 }] }));
        let got: Vec<bool> = (0..8)
            .map(|i| {
                // Calls of other operations do not count towards `after`.
                if i % 2 == 0 {
                    assert!(fails(&e, Op::Read).is_none());
                }
                fails(&e, Op::Write).is_some()
            })
            .collect();
        assert_eq!(got, [false, false, true, true, true, false, false, false]);
        let e = engine(json!({ "rules": [{ "op": "write", "error": "EIO", "count": 0 }] }));
        assert!(fails(&e, Op::Write).is_none());
    }

    #[test]
    fn rate_is_deterministic_for_a_seed_and_roughly_right() {
        let run = |seed: u64| -> Vec<bool> {
            let e = engine(json!({ "seed": seed, "rules": [{ "op": "read", "error": "EIO", "rate": 0.25 }] }));
            (0..4000).map(|_| fails(&e, Op::Read).is_some()).collect()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same sequence");
        assert_ne!(a, run(8), "another seed, another sequence");
        let n = a.iter().filter(|x| **x).count();
        assert!((800..1200).contains(&n), "{n} of 4000 fired at rate 0.25");
        let never = engine(json!({ "rules": [{ "op": "read", "error": "EIO", "rate": 0 }] }));
        assert!((0..1000).all(|_| fails(&never, Op::Read).is_none()));
        let always = engine(json!({ "rules": [{ "op": "read", "error": "EIO", "rate": 1 }] }));
        assert!((0..1000).all(|_| fails(&always, Op::Read).is_some()));
    }

    #[test]
    fn trigger_file_toggles_and_inactive_calls_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("trigger");
        let e = engine(json!({ "rules": [{ "op": "read", "error": "EIO", "trigger_file": t, "after": 1 }] }));
        assert!(fails(&e, Op::Read).is_none());
        assert!(fails(&e, Op::Read).is_none());
        std::fs::write(&t, b"").unwrap();
        assert!(fails(&e, Op::Read).is_none(), "first active call is skipped by `after`");
        assert!(fails(&e, Op::Read).is_some());
        std::fs::remove_file(&t).unwrap();
        assert!(fails(&e, Op::Read).is_none());
        std::fs::write(&t, b"").unwrap();
        assert!(fails(&e, Op::Read).is_some());
    }

    #[test]
    fn drops_only_mutations_and_rules_take_precedence() {
        let e = engine(json!({ "drop": {} }));
        assert!(matches!(e.verdict(Op::Write), Verdict::Drop));
        assert!(matches!(e.verdict(Op::Flush), Verdict::Pass));
        let e = engine(json!({ "drop": { "op": "any" }, "rules": [{ "op": "trim", "error": "EIO" }] }));
        for op in [Op::Write, Op::Flush, Op::Zero] {
            assert!(matches!(e.verdict(op), Verdict::Drop), "{op:?}");
        }
        assert!(matches!(e.verdict(Op::Trim), Verdict::Fail(_)));
        for op in [Op::Read, Op::Extents, Op::Cache] {
            assert!(matches!(e.verdict(op), Verdict::Pass), "{op:?}");
        }
        let e = engine(json!({ "drop": [{ "op": "write", "count": 1 }, { "op": "zero" }] }));
        assert!(matches!(e.verdict(Op::Write), Verdict::Drop));
        assert!(matches!(e.verdict(Op::Write), Verdict::Pass));
        assert!(matches!(e.verdict(Op::Zero), Verdict::Drop));
    }

    #[test]
    fn delays_and_hangs() {
        let e = engine(json!({ "delay_ms": { "read": 10, "any": 3 } }));
        assert!(e.blocks());
        assert_eq!(e.delay(Op::Read), Duration::from_millis(10));
        assert_eq!(e.delay(Op::Flush), Duration::from_millis(3));
        let e = engine(json!({ "delay_ms": { "write": 0 } }));
        assert!(!e.blocks());
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("hang");
        let e = engine(json!({ "hang": { "op": "write", "trigger_file": t } }));
        assert!(e.blocks());
        assert!(e.hang(Op::Write).is_none(), "no trigger file: no hang");
        std::fs::write(&t, b"").unwrap();
        assert_eq!(e.hang(Op::Write), Some(t.as_path()));
        assert!(e.hang(Op::Read).is_none());
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (cfg, want) in [
            (json!({ "rulez": [] }), "unknown key `rulez`"),
            (json!({ "rules": [{ "op": "write", "error": "EIO", "eror": 1 }] }), "unknown key `rules[0].eror`"),
            (json!({ "rules": [{ "op": "write" }] }), "`rules[0].error`: missing"),
            (json!({ "rules": [{ "error": "EIO" }] }), "`rules[0].op`: missing"),
            (json!({ "rules": [{ "op": "wrte", "error": "EIO" }] }), "`rules[0].op`: expected one of"),
            (json!({ "rules": [{ "op": "write", "error": "EAGAIN" }] }), "`rules[0].error`: expected one of"),
            (json!({ "rules": [{ "op": "write", "error": "EIO", "rate": 1.5 }] }), "`rules[0].rate`"),
            (json!({ "rules": [{ "op": "write", "error": "EIO", "after": -1 }] }), "`rules[0].after`"),
            (json!({ "rules": [{ "op": "write", "error": "EIO", "count": "x" }] }), "`rules[0].count`"),
            (json!({ "rules": [{ "op": "write", "error": "EIO", "trigger_file": 3 }] }), "`rules[0].trigger_file`"),
            (json!({ "rules": {} }), "`rules`: expected a list"),
            (json!({ "delay_ms": { "reed": 1 } }), "unknown key `delay_ms.reed`"),
            (json!({ "delay_ms": { "read": 1.5 } }), "`delay_ms.read`"),
            (json!({ "hang": { "op": "write" } }), "`hang.trigger_file`: missing"),
            (json!({ "hang": { "op": "write", "trigger_file": "/x", "foo": 1 } }), "unknown key `hang.foo`"),
            (json!({ "drop": { "op": "read" } }), "`drop.op`: a read cannot be dropped"),
            (json!({ "drop": [{ "op": "write" }, 3] }), "`drop[1]`: expected a table"),
            (json!({ "seed": -3 }), "`seed`"),
            (json!([]), "`config`: expected a table"),
        ] {
            let e = err(cfg.clone());
            assert!(e.contains(want), "{cfg}: got {e:?}, want {want:?}");
        }
    }

    #[test]
    fn summary_names_everything() {
        let e = engine(json!({
            "seed": 9,
            "rules": [{ "op": "write", "error": "ENOSPC", "after": 1, "count": 2, "rate": 0.5, "trigger_file": "/t" }],
            "delay_ms": { "read": 50 },
            "hang": { "op": "flush", "trigger_file": "/h" },
            "drop": { "trigger_file": "/d" },
        }));
        let s = e.to_string();
        for want in [
            "rule 0: ENOSPC on op write, rate 0.5, while /t exists, after 1, at most 2 times",
            "delay_ms: read=50",
            "hang: op flush, while /h exists",
            "drop: op write, while /d exists",
            "seed 9",
        ] {
            assert!(s.contains(want), "{s:?} lacks {want:?}");
        }
    }
}
