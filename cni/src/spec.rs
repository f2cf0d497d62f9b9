//! The CNI specification's data types (1.1.0, with the older versions it can
//! be asked for): network configuration, results, errors, environment.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Versions this plugin speaks. CHECK needs 0.4.0+, GC and STATUS 1.1.0.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// Error codes from the spec ("Error" section), and ours from 100 on.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    /// strake: CHECK found the attachment differs from its result.
    pub const DRIFT: u32 = 100;
    /// strake: the agent failed for a reason of its own.
    pub const AGENT_FAILURE: u32 = 101;
}

/// Compares dotted versions numerically.
pub fn version_at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(v) >= parse(min)
}

/// The error every CNI command prints on failure (stdout, non-zero exit).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    #[serde(default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            cni_version: String::new(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
    pub fn with_details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The plugin's configuration as the runtime hands it over on stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Pod interface MTU; default: the agent's (the uplink's).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Where the agent listens (`@name` abstract, or a path).
    #[serde(default)]
    pub agent_socket: Option<String>,
    /// Seconds to wait for the agent.
    #[serde(default)]
    pub agent_timeout: Option<u64>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpConfig {
    /// Only in results before 1.0.0 ("4" or "6").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// A command's result (ADD), also passed down a chain as `prevResult`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
}

impl CniResult {
    /// Rewrites the result in the shape of `version`: `ips[].version` before
    /// 1.0.0; the 1.1.0 interface and route fields dropped before 1.1.0.
    pub fn for_version(mut self, version: &str) -> Self {
        self.cni_version = version.to_string();
        let pre_1_0 = !version_at_least(version, "1.0.0");
        let pre_1_1 = !version_at_least(version, "1.1.0");
        for ip in &mut self.ips {
            ip.version = if pre_1_0 {
                Some(if ip.address.contains(':') { "6" } else { "4" }.to_string())
            } else {
                None
            };
        }
        if pre_1_1 {
            for i in &mut self.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for r in &mut self.routes {
                r.mtu = None;
                r.advmss = None;
                r.priority = None;
                r.table = None;
                r.scope = None;
            }
        }
        self
    }
}

/// `VERSION`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

/// The CNI_* environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
        }
    }

    /// Names the missing variables among `needed`, in one error.
    pub fn require(&self, needed: &[&str]) -> Result<(), CniError> {
        let missing: Vec<&str> = needed
            .iter()
            .copied()
            .filter(|k| match *k {
                "CNI_CONTAINERID" => self.container_id.is_none(),
                "CNI_NETNS" => self.netns.is_none(),
                "CNI_IFNAME" => self.ifname.is_none(),
                "CNI_PATH" => self.path.is_none(),
                _ => false,
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                code::INVALID_ENV,
                format!("missing environment variables: {}", missing.join(", ")),
            ))
        }
    }

    pub fn container_id(&self) -> Result<&str, CniError> {
        let id = self.container_id.as_deref().unwrap_or("");
        // The spec: alphanumeric, with _ . - after the first character.
        let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_CONTAINERID {id:?} is not a valid container id"),
            ));
        }
        Ok(id)
    }

    pub fn ifname(&self) -> Result<&str, CniError> {
        let n = self.ifname.as_deref().unwrap_or("");
        let ok = !n.is_empty()
            && n.len() <= 15
            && n != "."
            && n != ".."
            && !n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
        if !ok {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME {n:?} is not a valid interface name"),
            ));
        }
        Ok(n)
    }

    /// CNI_ARGS as key/value pairs (`K=V;K2=V2`).
    pub fn args(&self) -> Result<BTreeMap<String, String>, CniError> {
        let mut out = BTreeMap::new();
        for pair in self
            .args
            .as_deref()
            .unwrap_or("")
            .split(';')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                )
            })?;
            out.insert(k.to_string(), v.to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_take_the_shape_of_the_requested_version() {
        let r = CniResult {
            cni_version: LATEST.into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mtu: Some(1500),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "10.0.0.2/32".into(),
                interface: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        };
        let old = r.clone().for_version("0.4.0");
        assert_eq!(old.ips[0].version.as_deref(), Some("4"));
        assert_eq!(old.interfaces[0].mtu, None);
        let new = r.for_version("1.1.0");
        assert_eq!(new.ips[0].version, None);
        assert_eq!(new.interfaces[0].mtu, Some(1500));
        assert!(version_at_least("1.1.0", "1.0.0") && !version_at_least("0.4.0", "1.0.0"));
    }

    #[test]
    fn env_validation_names_what_is_wrong() {
        let e = Env {
            container_id: Some("abc".into()),
            ..Default::default()
        };
        let err = e
            .require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
            .unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        assert!(
            err.msg.contains("CNI_NETNS")
                && err.msg.contains("CNI_IFNAME")
                && !err.msg.contains("CNI_CONTAINERID")
        );
        let bad = Env {
            container_id: Some("-x".into()),
            ifname: Some("a/b".into()),
            ..Default::default()
        };
        assert!(bad.container_id().is_err() && bad.ifname().is_err());
        let args = Env {
            args: Some("IgnoreUnknown=1;K8S_POD_NAME=web".into()),
            ..Default::default()
        };
        assert_eq!(args.args().unwrap()["K8S_POD_NAME"], "web");
        assert!(Env {
            args: Some("oops".into()),
            ..Default::default()
        }
        .args()
        .is_err());
    }
}
