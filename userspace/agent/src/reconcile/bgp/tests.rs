use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// BIRD in memory: a running flag, the file, and counts of what was asked.
#[derive(Clone, Default)]
struct FakeBird {
    running: Arc<AtomicBool>,
    file: Arc<Mutex<Option<String>>>,
    /// What BIRD runs (the file at the last start or configure).
    active: Arc<Mutex<Option<String>>>,
    starts: Arc<AtomicUsize>,
    configures: Arc<AtomicUsize>,
}

impl FakeBird {
    fn active(&self) -> String {
        self.active.lock().unwrap().clone().unwrap_or_default()
    }
}

impl BirdDaemon for FakeBird {
    fn uplink_subnet(&self, _uplink: &str, ip: Ipv4Addr) -> Result<Option<Ipv4Network>> {
        Ok(Some(Ipv4Network::new(ip, 24).unwrap()))
    }
    fn read_config(&self) -> Option<String> {
        self.file.lock().unwrap().clone()
    }
    fn write_config(&self, text: &str) -> Result<()> {
        *self.file.lock().unwrap() = Some(text.into());
        Ok(())
    }
    fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
    fn start(&self) -> Result<()> {
        self.running.store(true, Ordering::SeqCst);
        self.starts.fetch_add(1, Ordering::SeqCst);
        *self.active.lock().unwrap() = self.read_config();
        Ok(())
    }
    fn configure(&self) -> Result<()> {
        anyhow::ensure!(self.running(), "BIRD is not answering");
        self.configures.fetch_add(1, Ordering::SeqCst);
        *self.active.lock().unwrap() = self.read_config();
        Ok(())
    }
    fn protocols(&self) -> Result<Vec<Protocol>> {
        Ok(vec![Protocol {
            name: "peer_10_0_1_1".into(),
            proto: "BGP".into(),
            state: "up".into(),
            since: Some(now_unix() - 30),
            bgp_state: Some("Established".into()),
            routes: strake_bgp::show::RouteCounts {
                imported: 3,
                exported: 1,
                ..Default::default()
            },
            ..Default::default()
        }])
    }
}

const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: a1, labels: {rack: a}}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.1.11}]}
"#;

const BGP: &str = r#"
---
apiVersion: bgp.strake.dev/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 65001, nodeToNodeMesh: false}
---
apiVersion: bgp.strake.dev/v1
kind: BGPPeer
metadata: {name: tor-a}
spec: {peerIP: 10.0.1.1, asNumber: 65001}
"#;

fn phase(bird: &FakeBird, start: bool) -> BgpPhase<FakeBird> {
    BgpPhase::new(
        bird.clone(),
        "a1",
        Arc::new(Mutex::new(Some("eth0".into()))),
        BgpOptions {
            start,
            socket: "/run/bird.ctl".into(),
            log: BirdLog::Stderr,
            lb: ModelOptions::default(),
        },
        Default::default(),
    )
}

fn pass(phase: &mut BgpPhase<FakeBird>, yaml: &str) -> Result<Outcome> {
    let st = strake_source::dir::state_from_yaml(yaml).unwrap();
    phase.reconcile(&Pass {
        state: &st,
        full: false,
        revision: 1,
    })
}

#[test]
fn without_a_configuration_bird_is_left_alone() {
    let bird = FakeBird::default();
    let mut p = phase(&bird, true);
    assert_eq!(pass(&mut p, NODE).unwrap(), Outcome::applied(0));
    assert_eq!(bird.starts.load(Ordering::SeqCst), 0);
    assert!(!p.view.lock().unwrap().enabled);
}

#[test]
fn bird_is_started_configured_once_and_observed() {
    let bird = FakeBird::default();
    let mut p = phase(&bird, true);
    let yaml = format!("{NODE}{BGP}");
    let o = pass(&mut p, &yaml).unwrap();
    assert_eq!(
        o,
        Outcome::Applied {
            changes: 1,
            requeue_after: Some(OBSERVE_EVERY)
        }
    );
    assert_eq!(bird.starts.load(Ordering::SeqCst), 1);
    assert!(bird.active().contains("neighbor 10.0.1.1 as 65001;"));
    assert!(bird
        .active()
        .contains("route 10.244.1.0/24 blackhole; # pod block"));
    // The same state again: nothing written, nothing reconfigured.
    let o = pass(&mut p, &yaml).unwrap();
    assert!(matches!(o, Outcome::Applied { changes: 0, .. }), "{o:?}");
    assert_eq!(bird.configures.load(Ordering::SeqCst), 0);
    let v = p.view.lock().unwrap().clone();
    assert!(v.enabled && v.bird_running);
    assert_eq!(v.as_number, Some(65001));
    let s = &v.sessions[0];
    assert!(s.established, "{s:?}");
    assert_eq!(
        (s.origin.as_str(), s.received, s.sent),
        ("BGPPeer tor-a", 3, 1)
    );
    assert!(s.uptime_seconds.unwrap() >= 30);
    assert_eq!(v.announced[0].why, "pod block");
}

#[test]
fn a_restarted_agent_hands_bird_its_configuration_once_even_when_the_file_matches() {
    let bird = FakeBird::default();
    let yaml = format!("{NODE}{BGP}");
    pass(&mut phase(&bird, true), &yaml).unwrap();
    let mut again = phase(&bird, true);
    pass(&mut again, &yaml).unwrap();
    assert_eq!(bird.starts.load(Ordering::SeqCst), 1, "BIRD kept running");
    assert_eq!(bird.configures.load(Ordering::SeqCst), 1);
}

#[test]
fn a_bird_that_died_is_started_again() {
    let bird = FakeBird::default();
    let mut p = phase(&bird, true);
    let yaml = format!("{NODE}{BGP}");
    pass(&mut p, &yaml).unwrap();
    bird.running.store(false, Ordering::SeqCst);
    pass(&mut p, &yaml).unwrap();
    assert_eq!(bird.starts.load(Ordering::SeqCst), 2);
}

#[test]
fn with_a_sidecar_the_phase_waits_for_bird_instead_of_starting_it() {
    let bird = FakeBird::default();
    let mut p = phase(&bird, false);
    match pass(&mut p, &format!("{NODE}{BGP}")).unwrap() {
        Outcome::Waiting { reason, .. } => {
            assert!(
                reason.contains("BIRD is not answering on /run/bird.ctl"),
                "{reason}"
            )
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(bird.starts.load(Ordering::SeqCst), 0);
}

#[test]
fn a_bad_configuration_fails_the_pass_and_keeps_bird_as_it_was() {
    let bird = FakeBird::default();
    let mut p = phase(&bird, true);
    pass(&mut p, &format!("{NODE}{BGP}")).unwrap();
    let before = bird.active();
    let bad = format!(
        "{NODE}{}",
        BGP.replace(
            "asNumber: 65001, nodeToNodeMesh",
            "asNumber: 0, nodeToNodeMesh"
        )
    );
    let e = format!("{:#}", pass(&mut p, &bad).unwrap_err());
    assert!(
        e.contains("BGPConfiguration default: spec.asNumber: 0 is not an AS number"),
        "{e}"
    );
    assert_eq!(bird.active(), before);
}

#[test]
fn a_bad_peer_costs_only_itself_and_is_shown() {
    let bird = FakeBird::default();
    let mut p = phase(&bird, true);
    let yaml = format!(
        "{NODE}{BGP}---\napiVersion: bgp.strake.dev/v1\nkind: BGPPeer\nmetadata: {{name: typo}}\nspec: {{peerIp: 10.0.1.2, asNumber: 65001}}\n"
    );
    pass(&mut p, &yaml).unwrap();
    assert!(bird.active().contains("neighbor 10.0.1.1 as 65001;"));
    assert!(!bird.active().contains("10.0.1.2"));
    let problems = p.view.lock().unwrap().problems.clone();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("BGPPeer typo: spec.peerIp: unknown field"),
        "{problems:?}"
    );
}

#[test]
fn a_deleted_node_or_configuration_idles_bird_so_peers_withdraw_at_once() {
    let bird = FakeBird::default();
    let mut p = phase(&bird, true);
    pass(&mut p, &format!("{NODE}{BGP}")).unwrap();
    // The Node object is gone.
    assert_eq!(pass(&mut p, BGP).unwrap(), Outcome::applied(1));
    assert!(!bird.active().contains("protocol bgp"));
    assert!(!bird.active().contains("10.244.1.0/24"));
    assert!(!p.view.lock().unwrap().enabled);
    // Back, then the configuration goes.
    pass(&mut p, &format!("{NODE}{BGP}")).unwrap();
    assert!(bird.active().contains("protocol bgp"));
    pass(&mut p, NODE).unwrap();
    assert!(!bird.active().contains("protocol bgp"));
    assert_eq!(
        bird.starts.load(Ordering::SeqCst),
        1,
        "BIRD is idled, not stopped"
    );
}

#[test]
fn service_changes_matter_only_when_service_addresses_are_announced() {
    let bird = FakeBird::default();
    let mut p = phase(&bird, true);
    pass(&mut p, &format!("{NODE}{BGP}")).unwrap();
    let st = ClusterState::default();
    let svc = super::super::testutil::service("x", "s", "10.96.0.1", None);
    let change = Change {
        reference: svc.reference().unwrap(),
        old: None,
        new: Some(svc),
    };
    assert!(!p.note(&change, &st), "no service ranges configured");
    let with_ranges = BGP.replace(
        "nodeToNodeMesh: false}",
        "nodeToNodeMesh: false, serviceLoadBalancerIPs: [{cidr: 203.0.113.0/24}]}",
    );
    pass(&mut p, &format!("{NODE}{with_ranges}")).unwrap();
    assert!(p.note(&change, &st));
}
