//! The simulated host on its own, driven by a puppet policy that carries out whatever actions
//! an `Admin { command: "do", args: [actions...] }` lists: the promotion guard and resume, the
//! join, torn key writes, message delivery, and the invariant checks catching two primaries
//! and a promotion that lacks acknowledged writes.

use gateway_sdk::{Action, Event, Host, RecoveryPolicy};
use serde_json::{json, Value};
use sim::world::{Role, World, WorldConfig};
use sim::PolicySource;

struct Puppet;

impl RecoveryPolicy for Puppet {
    fn open(_host: &Host, _config: &Value) -> Result<Self, String> {
        Ok(Puppet)
    }

    fn on_event(&mut self, event: &Event) -> Vec<Action> {
        match event {
            Event::Admin { command, args } if command == "do" => args
                .as_array()
                .map(|a| a.iter().filter_map(|v| Action::from_json(&v.to_string()).ok()).collect())
                .unwrap_or_default(),
            Event::ControllerMessage { from, body } => {
                vec![Action::Log { level: "info".into(), message: format!("got {body} from {from}") }]
            }
            _ => Vec::new(),
        }
    }
}

fn world(src: &PolicySource, write_pm: u32) -> World<'_> {
    let cfg = WorldConfig {
        controllers: 2,
        threshold: None,
        threshold_count: 1,
        report_by: "poll",
        write_pm,
        copy_rate: 2,
        extra: json!({}),
    };
    let mut w = World::new(cfg, src, 1, true);
    w.start_ctrl(0);
    w.start_ctrl(1);
    w.step();
    w.step();
    w
}

fn act(w: &mut World, i: usize, actions: Value) {
    w.command(i, Event::Admin { command: "do".into(), args: actions });
}

fn online(target: &str) -> Value {
    json!({ "type": "go_online", "target": target })
}

#[test]
fn the_promotion_guard_the_epoch_record_and_the_join() {
    let src = PolicySource::in_process::<Puppet>("puppet");
    let mut w = world(&src, 0);
    act(&mut w, 0, json!([online("A@3")]));
    assert_eq!(w.servers[0].role, Role::Offline, "A is at 0, not 3: refused");
    act(&mut w, 0, json!([online("A+B@0")]));
    assert_eq!((w.servers[0].role, w.servers[0].pos, w.acked), (Role::Primary, 1, 1), "epoch record at 1");
    assert_eq!(w.servers[1].role, Role::Secondary);
    w.step();
    assert_eq!(w.servers[1].pos, 1, "resynced from A");
    assert_eq!(w.outcome(), "online A+B");
    assert!(w.violation.is_none());
}

#[test]
fn a_crashed_primary_resumes_its_promotion_but_not_after_a_graceful_stop() {
    let src = PolicySource::in_process::<Puppet>("puppet");
    let mut w = world(&src, 1000);
    act(&mut w, 0, json!([online("A@0")]));
    for _ in 0..5 {
        w.step();
    }
    assert!(w.servers[0].pos > 1 && w.acked == w.servers[0].pos);
    w.crash_server(0);
    w.restart_server(0);
    w.step();
    w.step();
    act(&mut w, 0, json!([online("A@0")]));
    assert_eq!(w.servers[0].role, Role::Primary, "resumed");
    let pos = w.servers[0].pos;
    act(&mut w, 1, json!([{ "type": "shutdown_server", "server": "A", "mode": "immediate" }]));
    assert!(!w.servers[0].up);
    w.restart_server(0);
    w.step();
    w.step();
    act(&mut w, 0, json!([online("A@0")]));
    assert_eq!(w.servers[0].role, Role::Offline, "stopped gracefully since: no resume");
    assert_eq!(w.servers[0].last_final, Some(pos));
    assert!(w.violation.is_none());
}

#[test]
fn a_promotion_lacking_acknowledged_writes_is_caught() {
    let src = PolicySource::in_process::<Puppet>("puppet");
    let mut w = world(&src, 1000);
    act(&mut w, 0, json!([online("A@0")]));
    w.step();
    w.step();
    w.crash_server(0);
    act(&mut w, 1, json!([online("B@0")]));
    let v = w.violation.clone().expect("caught");
    assert!(v.contains("lacks acknowledged writes"), "{v}");
    assert!(w.trace.as_ref().unwrap().last().unwrap().contains("VIOLATION"));
}

#[test]
fn two_primaries_are_caught() {
    let src = PolicySource::in_process::<Puppet>("puppet");
    let mut w = world(&src, 0);
    act(&mut w, 0, json!([online("A+B@0")]));
    w.step();
    assert_eq!(w.servers[1].pos, 1);
    act(&mut w, 1, json!([online("B@1")]));
    let v = w.violation.clone().expect("caught");
    assert!(v.contains("two independent primaries"), "{v}");
}

#[test]
fn a_torn_key_write_crashes_the_controller_and_loses_the_key() {
    let src = PolicySource::in_process::<Puppet>("puppet");
    let mut w = world(&src, 0);
    w.faults.torn_pm = 1000;
    act(&mut w, 0, json!([{ "type": "save_key", "key": { "x": 1 } }, online("A@0")]));
    assert!(!w.ctrls[0].up && w.torn_seen);
    assert_eq!(w.servers[0].role, Role::Offline, "the actions after a torn write are not carried out");
    w.faults.torn_pm = 0;
    w.start_ctrl(0);
    let trace = w.trace.as_ref().unwrap();
    assert!(trace.iter().any(|l| l.contains("c1 <- {\"type\":\"key_loaded\",\"key\":null}")), "{trace:#?}");
}

#[test]
fn messages_are_delivered_later_unless_the_link_is_down() {
    let src = PolicySource::in_process::<Puppet>("puppet");
    let mut w = world(&src, 0);
    w.faults.max_delay = 1;
    act(&mut w, 0, json!([{ "type": "send_to_controller", "to": "*", "body": { "n": 1 } }]));
    w.cc[0][1] = false;
    w.cc[1][0] = false;
    act(&mut w, 0, json!([{ "type": "send_to_controller", "to": "c2", "body": { "n": 2 } }]));
    w.cc[0][1] = true;
    w.cc[1][0] = true;
    w.step();
    let got: Vec<&String> = w.trace.as_ref().unwrap().iter().filter(|l| l.contains("got {")).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("{\\\"n\\\":1} from c1") || got[0].contains("{\"n\":1} from c1"), "{got:?}");
}
