//! Pods whose identity is not (or no longer) what their address says: a pod
//! attached before its Pod object arrived, and a completed pod whose address
//! a new pod got. Neither may open a hole (docs/threat-model.md, "Policy
//! identities").

use std::net::Ipv4Addr;
use strake_policy::compile::{compile, Compiled};
use strake_policy::model::{Direction, Model, TCP};
use strake_source::{ClusterState, ObjectKey};

fn state(yaml: &str) -> ClusterState {
    strake_source::dir::state_from_yaml(yaml).unwrap()
}

fn pod(ns: &str, name: &str, labels: &str, status: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{namespace: {ns}, name: {name}, labels: {{{labels}}}}}\nspec:\n  nodeName: n1\n  containers: [{{name: c, ports: [{{name: http, containerPort: 80}}]}}]\nstatus: {{{status}}}\n---\n"
    )
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: {ns}, name: {name}}}\nspec: {spec}\n---\n")
}

const NEW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 20);
const FROM: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 9);

/// What an endpoint attached for `ns/name` at NEW is judged by, whose Pod
/// object may or may not be in `yaml`: the compiled policy and the identity
/// the endpoint gets (`None`: nothing isolates it).
struct Attached {
    c: Compiled,
    identity: Option<u32>,
}

fn compiled(yaml: &str, ns: &str, name: &str) -> Attached {
    let st = state(yaml);
    let key = ObjectKey::new(ns, name);
    let model = Model::build(&st, &[(key.clone(), NEW)]);
    let c = compile(&model, std::slice::from_ref(&key));
    let identity = c.identity_for(Some(&key));
    Attached { c, identity }
}

impl Attached {
    fn isolation(&self) -> (bool, bool) {
        self.identity
            .map(|i| self.c.isolation(i))
            .unwrap_or_default()
    }
}

fn ingress_allowed(a: &Attached, from: Ipv4Addr, port: u16) -> bool {
    let Some(id) = a.identity else { return true };
    !a.isolation().0
        || a.c
            .lookup(id, from, Direction::Ingress, TCP, port)
            .is_some()
}

#[test]
fn a_pod_attached_before_its_object_arrives_is_isolated_wherever_a_policy_could_select_it() {
    let client = pod("web", "client", "app: client", "podIP: 10.244.2.9");
    let deny_all = policy("shop", "deny", "{podSelector: {}, policyTypes: [Ingress]}");
    let db_only = policy(
        "shop",
        "db",
        "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{namespaceSelector: {}}]}]}",
    );
    let all_from_client = policy(
        "shop",
        "all",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}, {port: http}]}]}",
    );

    // No policy in its namespace: none can select it, whatever its labels.
    let c = compiled(&client, "shop", "late");
    assert_eq!(c.isolation(), (false, false));
    // A default deny: isolated, nothing allowed.
    let c = compiled(&format!("{client}{deny_all}"), "shop", "late");
    assert_eq!(c.isolation(), (true, false));
    assert!(!ingress_allowed(&c, FROM, 80));
    // A policy that selects by labels could select it: isolated, and its
    // rules do not apply before the labels are known (it may not select it).
    let c = compiled(&format!("{client}{db_only}"), "shop", "late");
    assert_eq!(c.isolation(), (true, false));
    assert!(!ingress_allowed(&c, FROM, 80));
    // A policy that selects every pod certainly selects it: its rules apply
    // (named ports wait for the pod's container ports).
    let c = compiled(
        &format!("{client}{db_only}{all_from_client}"),
        "shop",
        "late",
    );
    assert!(ingress_allowed(&c, FROM, 80), "port 80 by number");
    assert!(!ingress_allowed(&c, FROM, 81));
    assert!(
        !ingress_allowed(&c, Ipv4Addr::new(10, 244, 3, 3), 80),
        "not a client"
    );

    // Once the object arrives, its labels decide: not a db, so only the
    // select-all policy applies, named port included.
    let arrived = pod("shop", "late", "app: web", "phase: Running");
    let c = compiled(
        &format!("{client}{db_only}{all_from_client}{arrived}"),
        "shop",
        "late",
    );
    assert_eq!(c.isolation(), (true, false));
    assert!(ingress_allowed(&c, FROM, 80));
    // Policies of other namespaces never select it.
    let c = compiled(
        &format!(
            "{client}{}",
            policy(
                "web",
                "deny",
                "{podSelector: {}, policyTypes: [Ingress, Egress]}"
            )
        ),
        "shop",
        "late",
    );
    assert_eq!(c.isolation(), (false, false));
}

#[test]
fn a_completed_pod_holds_no_identity_for_the_ip_a_new_pod_got() {
    let db_from_trusted = policy(
        "shop",
        "db",
        "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: trusted}}}]}]}",
    );
    let db = pod(
        "shop",
        "db",
        "app: db",
        "phase: Running, podIP: 10.244.1.30",
    );
    for phase in ["Succeeded", "Failed"] {
        // The dead pod sorts after the new one: a last-wins table would pick it.
        let yaml = format!(
            "{db}{db_from_trusted}{}{}",
            pod(
                "apps",
                "new",
                "role: untrusted",
                &format!("phase: Running, podIP: {NEW}")
            ),
            pod(
                "zbatch",
                "old",
                "role: trusted",
                &format!("phase: {phase}, podIP: {NEW}")
            ),
        );
        let st = state(&yaml);
        let model = Model::build(&st, &[]);
        assert!(
            model.pod(&ObjectKey::new("zbatch", "old")).is_none(),
            "{phase}: no identity"
        );
        let db = ObjectKey::new("shop", "db");
        let c = compile(&model, std::slice::from_ref(&db));
        let id = c.identity_of(&db).expect("db is known");
        assert!(c.isolation(id).0, "{phase}: db is isolated");
        assert!(
            c.lookup(id, NEW, Direction::Ingress, TCP, 80).is_none(),
            "{phase}: the new pod is judged by its own labels"
        );
    }
}
