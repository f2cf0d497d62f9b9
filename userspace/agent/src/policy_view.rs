//! NetworkPolicy as people see it: `strake policy trace`.

use crate::agent::Agent;
use std::net::Ipv4Addr;
use strake_source::ObjectKey;

impl Agent {
    pub fn policy_trace(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: &str,
    ) -> Result<strake_api::PolicyTraceView, strake_api::ApiError> {
        use strake_api::{ApiError, ErrorKind, PolicyDecisionView};
        use strake_policy::explain::{explain, Endpoint};
        let bad = |m: String| ApiError::new(ErrorKind::InvalidRequest, m);
        let parse = |s: &str| -> Result<Endpoint, ApiError> {
            if let Ok(ip) = s.parse::<Ipv4Addr>() {
                return Ok(Endpoint::Addr(ip));
            }
            let (ns, name) = s
                .split_once('/')
                .ok_or_else(|| bad(format!("{s:?}: give namespace/pod or an IPv4 address")))?;
            Ok(Endpoint::Pod(ObjectKey::new(ns, name)))
        };
        let proto = strake_policy::model::proto_number(&protocol.to_ascii_uppercase())
            .ok_or_else(|| bad(format!("protocol {protocol:?}: use tcp, udp or sctp")))?;
        let (src, dst) = (parse(from)?, parse(to)?);
        // The explainer reads the policies as the API states them, from the
        // current desired state and the node's own endpoint addresses.
        let st = self.state();
        let known: Vec<(ObjectKey, Ipv4Addr)> = crate::endpoints::local_endpoints(&self.ipam)
            .into_iter()
            .filter_map(|l| Some((l.pod?, l.ip)))
            .collect();
        let model = strake_policy::model::Model::build(&st, &known);
        // The destination node's own addresses are always let in.
        let dst_node_ip: Vec<Ipv4Addr> = match &dst {
            Endpoint::Pod(k) => model
                .pod(k)
                .and_then(|p| p.node.as_ref())
                .and_then(|n| st.node_internal_ip(n))
                .into_iter()
                .collect(),
            Endpoint::Addr(_) => vec![],
        };
        let t = explain(&model, &src, &dst, port, proto, &dst_node_ip)
            .map_err(|e| ApiError::new(ErrorKind::NotFound, e))?;
        let view = |d: strake_policy::explain::Decision| PolicyDecisionView {
            pod: d.pod,
            direction: d.direction,
            isolated: d.isolated,
            allowed: d.allowed,
            allowed_by: d.allowed_by,
            reason: d.reason,
        };
        Ok(strake_api::PolicyTraceView {
            from: t.from,
            to: t.to,
            port: t.port,
            protocol: t.protocol,
            allowed: t.allowed,
            egress: t.egress.map(view),
            ingress: t.ingress.map(view),
        })
    }
}
