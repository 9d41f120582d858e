//! The policy's configuration, parsed strictly (an unknown key is an error naming it).
//!
//! ```json
//! { "controller": "c1", "controllers": ["c1", "c2", "c3", "c4"], "servers": ["A", "B"],
//!   "threshold": { "percent": 50 }, "report_by": "poll" }
//! ```
//!
//! * `controller` (required): this controller's id; it must be in `controllers`.
//! * `controllers` (required): every controller of the system (FIG. 1's VTCs), unique ids.
//! * `servers` (required): the two servers of the pair (site A, site B), distinct.
//! * `threshold`: the VTC agreement threshold of steps 462/562; the system goes online with one
//!   server only when the number of controllers electing it is **greater than** the threshold.
//!   `{"count": k}` (the threshold is k controllers) or `{"percent": p}` (p % of the
//!   controllers; the threshold is `floor(p * N / 100)`, so "more than p %" of them must
//!   elect). Default `{"percent": 50}`: more than half. A threshold that two disjoint groups of
//!   controllers could both exceed (`2 * (threshold + 1) <= N`) is refused: it would let two
//!   groups that cannot talk to each other each place a different server online. A threshold
//!   of N or more can never be exceeded and is refused too.
//!
//!   The percentage is taken of the configured controllers. The patent allows the base to be
//!   the controllers operational at shutdown time; a base that differs from one controller to
//!   the next (each sees a different set operational) would break the overlap of any two
//!   electing groups, so every controller uses the same base, and a controller that was not
//!   operational when the key was made simply has no (or an older) key to elect with.
//! * `report_by`: how each controller reports its election (step 464): `"poll"` (default; the
//!   controller that starts an election polls the others, who answer it) or `"broadcast"`
//!   (each controller sends its election to every other controller, so every one can show the
//!   tally). Either way the controller that started the election counts the votes.
//! * `timing` (optional, milliseconds): `election_timeout_ms` (2000), `exchange_ms` (1000; key
//!   exchange and re-sent commands), `retry_ms` (1500; back-off after an election that did not
//!   pass), `stagger_ms` (300 per controller index, so controllers do not all start an election
//!   at once), `stuck_ms` (4000; when to ask about an election this controller voted in and
//!   never heard the end of).
//! * `_break` (test-only, undocumented for operators): deliberately broken variants used by
//!   the simulator's own tests to prove it catches them: `"threshold_ge"` (goes online when the
//!   votes are >= the threshold instead of >) and `"vote_without_key"` (a controller whose key
//!   is missing or torn elects yes, and starts elections, instead of never electing yes).
//!   Never set this in production.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    Count(u32),
    Percent(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportBy {
    Poll,
    Broadcast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    ThresholdGe,
    VoteWithoutKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub election_timeout_ms: u64,
    pub exchange_ms: u64,
    pub retry_ms: u64,
    pub stagger_ms: u64,
    pub stuck_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { election_timeout_ms: 2000, exchange_ms: 1000, retry_ms: 1500, stagger_ms: 300, stuck_ms: 4000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This controller.
    pub me: String,
    /// Every controller, in configuration order (includes `me`).
    pub controllers: Vec<String>,
    /// The two servers, in configuration order (the tie-break order).
    pub servers: [String; 2],
    pub threshold: Threshold,
    pub report_by: ReportBy,
    pub timing: Timing,
    pub brk: Option<Break>,
}

const TOP_KEYS: [&str; 7] = ["controller", "controllers", "servers", "threshold", "report_by", "timing", "_break"];
const TIMING_KEYS: [&str; 5] = ["election_timeout_ms", "exchange_ms", "retry_ms", "stagger_ms", "stuck_ms"];

impl Config {
    pub fn from_json(v: &Value) -> Result<Config, String> {
        let top = v.as_object().ok_or("the config must be a JSON object")?;
        unknown_keys(top, &TOP_KEYS, "")?;
        let me = match top.get("controller") {
            None => return Err("`controller` is required (this controller's id)".into()),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err("`controller` must be a non-empty string".into()),
        };
        let controllers = names(top, "controllers")?;
        if controllers.is_empty() {
            return Err("`controllers` is empty: list every controller".into());
        }
        if !controllers.contains(&me) {
            return Err(format!("`controller` {me:?} is not in `controllers`"));
        }
        let servers = names(top, "servers")?;
        let servers: [String; 2] = match servers.len() {
            2 => [servers[0].clone(), servers[1].clone()],
            n => return Err(format!("`servers` must name the two servers of the pair (got {n})")),
        };
        if servers.iter().any(|s| s.contains('+') || s.contains('@')) {
            return Err("`servers`: a server name may not contain '+' or '@'".into());
        }
        let threshold = match top.get("threshold") {
            None => Threshold::Percent(50),
            Some(Value::Object(t)) => {
                unknown_keys(t, &["count", "percent"], "threshold.")?;
                match (t.get("count"), t.get("percent")) {
                    (Some(c), None) => Threshold::Count(uint(c, "threshold.count")?),
                    (None, Some(p)) => {
                        let p = uint(p, "threshold.percent")?;
                        if p > 100 {
                            return Err(format!("threshold.percent: {p} is more than 100"));
                        }
                        Threshold::Percent(p)
                    }
                    _ => return Err("`threshold` must be {\"count\": k} or {\"percent\": p}".into()),
                }
            }
            Some(_) => return Err("`threshold` must be {\"count\": k} or {\"percent\": p}".into()),
        };
        let report_by = match top.get("report_by").map(|v| v.as_str()) {
            None | Some(Some("poll")) => ReportBy::Poll,
            Some(Some("broadcast")) => ReportBy::Broadcast,
            Some(_) => return Err("`report_by` must be \"poll\" or \"broadcast\"".into()),
        };
        let mut timing = Timing::default();
        if let Some(t) = top.get("timing") {
            let t = t.as_object().ok_or("`timing` must be an object")?;
            unknown_keys(t, &TIMING_KEYS, "timing.")?;
            for (k, v) in t {
                let ms = u64::from(uint(v, &format!("timing.{k}"))?);
                match k.as_str() {
                    "election_timeout_ms" => timing.election_timeout_ms = ms,
                    "exchange_ms" => timing.exchange_ms = ms.max(1),
                    "retry_ms" => timing.retry_ms = ms,
                    "stagger_ms" => timing.stagger_ms = ms,
                    _ => timing.stuck_ms = ms,
                }
            }
        }
        let brk = match top.get("_break").map(|v| v.as_str()) {
            None => None,
            Some(Some("threshold_ge")) => Some(Break::ThresholdGe),
            Some(Some("vote_without_key")) => Some(Break::VoteWithoutKey),
            Some(_) => return Err("`_break` must be \"threshold_ge\" or \"vote_without_key\" (test-only)".into()),
        };
        let cfg = Config { me, controllers, servers, threshold, report_by, timing, brk };
        let (t, n) = (cfg.threshold_count(), cfg.controllers.len());
        if t >= n {
            return Err(format!("threshold {t} of {n} controllers can never be exceeded"));
        }
        if 2 * (t + 1) <= n {
            return Err(format!(
                "threshold {t} of {n} controllers: two groups of {} that cannot talk to each other could each place \
                 a different server online; use a threshold of at least {}",
                t + 1,
                n / 2
            ));
        }
        Ok(cfg)
    }

    /// The VTC agreement threshold as a number of controllers (steps 462/562).
    pub fn threshold_count(&self) -> usize {
        let n = self.controllers.len();
        match self.threshold {
            Threshold::Count(k) => k as usize,
            Threshold::Percent(p) => (p as usize * n) / 100,
        }
    }

    /// Whether `yes` votes place a server online (steps 466/566): more than the threshold.
    pub fn passes(&self, yes: usize) -> bool {
        if self.brk == Some(Break::ThresholdGe) {
            return yes >= self.threshold_count();
        }
        yes > self.threshold_count()
    }

    /// How many controllers must refuse an election before it can never pass.
    pub fn refusals_to_kill(&self) -> usize {
        let n = self.controllers.len();
        // An election passes with more than `t` yes votes; once `n - t` controllers have
        // promised never to vote yes, at most `t` can.
        n - self.threshold_count().min(n)
    }

    pub fn index(&self, controller: &str) -> Option<usize> {
        self.controllers.iter().position(|c| c == controller)
    }

    pub fn my_index(&self) -> usize {
        self.index(&self.me).unwrap_or(0)
    }

    pub fn is_server(&self, name: &str) -> bool {
        self.servers.iter().any(|s| s == name)
    }

    pub fn other(&self, server: &str) -> &str {
        if self.servers[0] == server {
            &self.servers[1]
        } else {
            &self.servers[0]
        }
    }
}

fn unknown_keys(obj: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), String> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("{prefix}{k}: unknown key (known: {})", known.join(", "))),
        None => Ok(()),
    }
}

fn names(top: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    let list = match top.get(key) {
        None => return Err(format!("`{key}` is required")),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(format!("`{key}` must be a list of names")),
    };
    let mut out: Vec<String> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        match v.as_str() {
            Some(s) if !s.is_empty() && s != "*" => {
                if out.iter().any(|o| o == s) {
                    return Err(format!("{key}[{i}]: {s:?} is listed twice"));
                }
                out.push(s.to_owned());
            }
            _ => return Err(format!("{key}[{i}]: must be a non-empty name other than \"*\"")),
        }
    }
    Ok(out)
}

fn uint(v: &Value, key: &str) -> Result<u32, String> {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| format!("{key}: must be a non-negative integer"))
}
