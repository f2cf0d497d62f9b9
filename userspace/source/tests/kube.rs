//! The Kubernetes source against a stand-in API server (an API server cannot
//! run here): list, then watch events, then a watch that expires (410) and
//! a relist that drops what was deleted meanwhile.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strake_source::kube::KubeSource;
use tokio::sync::broadcast;

#[derive(Clone)]
struct Mock {
    /// Items of each collection path, as the next list returns them.
    lists: Arc<Mutex<BTreeMap<String, Vec<Value>>>>,
    /// Watch events: (collection path, event).
    events: broadcast::Sender<(String, Value)>,
    /// Collections served besides the built-in ones (CRDs installed).
    extra: Vec<&'static str>,
}

const BGP_PATHS: [&str; 2] = [
    "/apis/bgp.strake.dev/v1/bgpconfigurations",
    "/apis/bgp.strake.dev/v1/bgppeers",
];

const PATHS: [&str; 6] = [
    "/api/v1/nodes",
    "/api/v1/namespaces",
    "/api/v1/pods",
    "/api/v1/services",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/apis/networking.k8s.io/v1/networkpolicies",
];

async fn serve(State(m): State<Mock>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let watch = req.uri().query().unwrap_or("").contains("watch=true");
    if !PATHS.contains(&path.as_str()) && !m.extra.contains(&path.as_str()) {
        // What an API server answers for a resource it does not serve.
        let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"});
        return Response::builder()
            .status(404)
            .header("content-type", "application/json")
            .body(Body::from(status.to_string()))
            .unwrap();
    }
    if !watch {
        let items = m
            .lists
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or_default();
        let body = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "10"}, "items": items});
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
    }
    // Events for this collection, one JSON object per line; an ERROR event
    // (an expired watch) ends the stream, as the API server does.
    let rx = m.events.subscribe();
    let stream = futures::stream::unfold((rx, path, false), |(mut rx, path, done)| async move {
        if done {
            return None;
        }
        loop {
            match rx.recv().await {
                Ok((p, ev)) if p == path => {
                    let expired = ev["type"] == "ERROR";
                    return Some((
                        Ok::<_, std::io::Error>(format!("{ev}\n")),
                        (rx, path, expired),
                    ));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn pod(ns: &str, name: &str, rv: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "resourceVersion": rv.to_string(), "labels": {"app": name}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}})
}

async fn next_state(
    rx: &mut strake_source::BatchReceiver,
    st: &mut strake_source::ClusterState,
    what: &str,
    ok: impl Fn(&strake_source::ClusterState) -> bool,
) {
    tokio::time::timeout(
        Duration::from_secs(10),
        strake_source::follow_until(rx, st, ok),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    .expect("source alive");
}

#[tokio::test]
async fn lists_watches_and_relists_from_an_api_server() {
    let (events, _) = broadcast::channel(64);
    let mock = Mock {
        lists: Default::default(),
        events: events.clone(),
        extra: Vec::new(),
    };
    {
        let mut l = mock.lists.lock().unwrap();
        l.insert(
            PATHS[0].into(),
            vec![json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "n1", "resourceVersion": "1"},
                "spec": {"podCIDR": "10.244.1.0/24"},
                "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}})],
        );
        l.insert(
            PATHS[1].into(),
            vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "resourceVersion": "2", "labels": {"team": "a"}}})],
        );
        l.insert(PATHS[2].into(), vec![pod("x", "a", 3)]);
    }
    let app = axum::Router::new().fallback(serve).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let (tx, mut rx) = strake_source::channel();
    tokio::spawn(KubeSource::new(client).run(tx));

    // The first snapshot comes only once every kind has listed.
    let mut s = strake_source::ClusterState::default();
    next_state(&mut rx, &mut s, "the initial list", |s| s.pods.len() == 1).await;
    assert_eq!(s.node_internal_ip("n1"), Some("10.0.0.1".parse().unwrap()));
    assert_eq!(
        s.node_pod_cidr("n1"),
        Some(("10.244.1.0".parse().unwrap(), 24))
    );
    assert!(s.namespaces.contains_key("x"));
    let first_revision = s.revision;

    // Watch events: a pod added, another deleted.
    let send = |path: &str, ev: Value| {
        // The watch may not be open yet: retry until someone listens.
        let events = events.clone();
        let path = path.to_string();
        async move {
            for _ in 0..100 {
                if events.receiver_count() > 0 && events.send((path.clone(), ev.clone())).is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("no watch on {path}");
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // watches open
    send(
        PATHS[2],
        json!({"type": "ADDED", "object": pod("x", "b", 11)}),
    )
    .await;
    next_state(&mut rx, &mut s, "pod x/b added", |s| s.pods.len() == 2).await;
    assert!(s.revision > first_revision);
    send(
        PATHS[2],
        json!({"type": "DELETED", "object": pod("x", "a", 12)}),
    )
    .await;
    next_state(&mut rx, &mut s, "pod x/a deleted", |s| s.pods.len() == 1).await;
    assert!(s.pods.keys().any(|k| k.name == "b"));

    // The watch expires; meanwhile x/b went and x/c came: the relist says so.
    mock.lists
        .lock()
        .unwrap()
        .insert(PATHS[2].into(), vec![pod("x", "c", 20)]);
    send(
        PATHS[2],
        json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old resource version"}}),
    )
    .await;
    next_state(&mut rx, &mut s, "the relist", |s| {
        s.pods.len() == 1 && s.pods.keys().any(|k| k.name == "c")
    })
    .await;
    assert!(
        !s.pods.keys().any(|k| k.name == "b"),
        "deleted during the outage: gone after the relist"
    );
    assert_eq!(s.nodes.len(), 1, "other kinds untouched");
}

#[tokio::test]
async fn strake_bgp_resources_come_through_when_their_crds_are_installed() {
    let (events, _) = broadcast::channel(64);
    let mock = Mock {
        lists: Default::default(),
        events: events.clone(),
        extra: BGP_PATHS.to_vec(),
    };
    mock.lists.lock().unwrap().insert(
        BGP_PATHS[1].into(),
        vec![json!({"apiVersion": "bgp.strake.dev/v1", "kind": "BGPPeer",
            "metadata": {"name": "tor", "resourceVersion": "5"},
            "spec": {"peerIP": "10.0.1.1", "asNumber": 65001}})],
    );
    let app = axum::Router::new().fallback(serve).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let (tx, mut rx) = strake_source::channel();
    tokio::spawn(KubeSource::new(kube::Client::try_from(config).unwrap()).run(tx));

    let mut s = strake_source::ClusterState::default();
    next_state(&mut rx, &mut s, "the BGPPeer listed", |s| {
        s.bgp_peers.len() == 1
    })
    .await;
    assert_eq!(s.bgp_peers["tor"].spec["asNumber"], 65001);
    tokio::time::sleep(Duration::from_millis(300)).await; // watches open
    let ev = json!({"type": "ADDED", "object": {"apiVersion": "bgp.strake.dev/v1", "kind": "BGPConfiguration",
        "metadata": {"name": "default", "resourceVersion": "9"}, "spec": {"asNumber": 65010}}});
    for _ in 0..100 {
        if events.receiver_count() > 1 && events.send((BGP_PATHS[0].into(), ev.clone())).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    next_state(&mut rx, &mut s, "the BGPConfiguration watched", |s| {
        s.bgp_configurations.contains_key("default")
    })
    .await;
    assert_eq!(s.bgp_configurations["default"].spec["asNumber"], 65010);
}
