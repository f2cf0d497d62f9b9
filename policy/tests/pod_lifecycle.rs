//! Pods whose identity is no longer what their address says: a completed
//! pod whose address a new pod got. It may not open a hole
//! (docs/threat-model.md, "Policy identities").

use std::net::Ipv4Addr;
use strake_policy::compile::{compile, LocalEndpoint};
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
        let db_ep = LocalEndpoint {
            pod: Some(ObjectKey::new("shop", "db")),
            endpoint_id: 1,
            ip: Ipv4Addr::new(10, 244, 1, 30),
        };
        let c = compile(&model, &[db_ep]);
        assert!(
            c.lookup(1, NEW, Direction::Ingress, TCP, 80).is_none(),
            "{phase}: the new pod is judged by its own labels"
        );
    }
}
