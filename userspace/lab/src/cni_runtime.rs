//! The runtime side of CNI: executing a network configuration list (conflist)
//! as containerd's libcni does. ADD runs the plugins in order, feeding each
//! one's result to the next as `prevResult`, and caches the final result; CHECK
//! and DEL use the cached result, DEL in reverse order; GC and STATUS run every
//! plugin. Plugins run in a chosen network namespace (a lab node's), which is
//! where a real runtime runs them: the host's.

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use strake_cni::spec::{version_at_least, CniError, SUPPORTED_VERSIONS};

/// A parsed conflist.
#[derive(Debug, Clone)]
pub struct ConfList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
    pub disable_check: bool,
    pub disable_gc: bool,
}

impl ConfList {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&bytes).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let v: Value = serde_json::from_slice(bytes).context("conflist is not valid JSON")?;
        let name = v["name"]
            .as_str()
            .ok_or_else(|| anyhow!("conflist has no name"))?
            .to_string();
        // cniVersions (1.1): the highest version both sides know.
        let mut version = v["cniVersion"].as_str().unwrap_or("").to_string();
        if let Some(list) = v["cniVersions"].as_array() {
            if let Some(best) = list
                .iter()
                .filter_map(|x| x.as_str())
                .filter(|x| SUPPORTED_VERSIONS.contains(x))
                .max_by(|a, b| {
                    if version_at_least(a, b) {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Less
                    }
                })
            {
                version = best.to_string();
            }
        }
        if version.is_empty() {
            anyhow::bail!("conflist has no cniVersion");
        }
        let plugins = v["plugins"]
            .as_array()
            .ok_or_else(|| anyhow!("conflist has no plugins"))?
            .iter()
            .map(|p| {
                p.as_object()
                    .cloned()
                    .ok_or_else(|| anyhow!("a plugin entry is not an object"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ConfList {
            name,
            cni_version: version,
            plugins,
            disable_check: v["disableCheck"].as_bool().unwrap_or(false),
            disable_gc: v["disableGC"].as_bool().unwrap_or(false),
        })
    }
}

/// One network attachment of one container.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// CNI_ARGS pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).
    pub args: Vec<(String, String)>,
    /// Capability arguments (portMappings, bandwidth, ...), handed to the
    /// plugins that declare the capability, as `runtimeConfig`.
    pub capability_args: BTreeMap<String, Value>,
}

/// A failed plugin invocation.
#[derive(Debug)]
pub struct InvokeError {
    pub plugin: String,
    pub command: String,
    /// Boxed: errors travel up through every call and should stay small.
    pub error: Box<CniError>,
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.plugin, self.command, self.error)
    }
}

impl std::error::Error for InvokeError {}

/// Executes plugins.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Directories searched for plugin binaries (CNI_PATH).
    pub cni_path: Vec<PathBuf>,
    /// Where ADD results are kept for CHECK and DEL.
    pub cache_dir: PathBuf,
    /// Network namespace the plugins run in (None: the caller's).
    pub netns: Option<PathBuf>,
    pub timeout: Duration,
}

impl Runtime {
    pub fn new(cni_path: Vec<PathBuf>, cache_dir: PathBuf) -> Self {
        Runtime {
            cni_path,
            cache_dir,
            netns: None,
            timeout: Duration::from_secs(60),
        }
    }

    fn cache_file(&self, list: &ConfList, att: &Attachment) -> PathBuf {
        self.cache_dir.join(format!(
            "{}-{}-{}.json",
            list.name, att.container_id, att.ifname
        ))
    }

    /// The result ADD stored for this attachment.
    pub fn cached_result(&self, list: &ConfList, att: &Attachment) -> Option<Value> {
        let bytes = std::fs::read(self.cache_file(list, att)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn plugin_conf(
        &self,
        list: &ConfList,
        plugin: &Map<String, Value>,
        att: Option<&Attachment>,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf.insert("name".into(), json!(list.name));
        conf.insert("cniVersion".into(), json!(list.cni_version));
        if let Some(att) = att {
            let caps: Map<String, Value> = plugin
                .get("capabilities")
                .and_then(|c| c.as_object())
                .map(|caps| {
                    caps.iter()
                        .filter(|(_, on)| on.as_bool() == Some(true))
                        .filter_map(|(k, _)| {
                            att.capability_args.get(k).map(|v| (k.clone(), v.clone()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !caps.is_empty() {
                conf.insert("runtimeConfig".into(), Value::Object(caps));
            }
        }
        if let Some(p) = prev {
            conf.insert("prevResult".into(), p.clone());
        }
        Value::Object(conf)
    }

    pub fn add(&self, list: &ConfList, att: &Attachment) -> Result<Value, InvokeError> {
        let mut prev: Option<Value> = None;
        for p in &list.plugins {
            let conf = self.plugin_conf(list, p, Some(att), prev.as_ref());
            let out = self.exec(p, "ADD", Some(att), &conf)?;
            prev = Some(serde_json::from_slice(&out).map_err(|e| self.bad_output(p, "ADD", e))?);
        }
        let result = prev.unwrap_or(Value::Null);
        let _ = std::fs::create_dir_all(&self.cache_dir);
        if let Ok(mut f) = File::create(self.cache_file(list, att)) {
            let _ = f.write_all(&serde_json::to_vec(&result).unwrap_or_default());
        }
        Ok(result)
    }

    pub fn check(&self, list: &ConfList, att: &Attachment) -> Result<(), InvokeError> {
        if list.disable_check {
            return Ok(());
        }
        let prev = self.cached_result(list, att);
        for p in &list.plugins {
            let conf = self.plugin_conf(list, p, Some(att), prev.as_ref());
            self.exec(p, "CHECK", Some(att), &conf)?;
        }
        Ok(())
    }

    pub fn del(&self, list: &ConfList, att: &Attachment) -> Result<(), InvokeError> {
        let prev = self.cached_result(list, att);
        for p in list.plugins.iter().rev() {
            let conf = self.plugin_conf(list, p, Some(att), prev.as_ref());
            self.exec(p, "DEL", Some(att), &conf)?;
        }
        let _ = std::fs::remove_file(self.cache_file(list, att));
        Ok(())
    }

    /// GC with the attachments that are still valid; everything else of this
    /// network may be collected by the plugins.
    pub fn gc(&self, list: &ConfList, valid: &[(String, String)]) -> Result<(), InvokeError> {
        if list.disable_gc {
            return Ok(());
        }
        let valid: Vec<Value> = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        for p in &list.plugins {
            let mut conf = self.plugin_conf(list, p, None, None);
            conf["cni.dev/valid-attachments"] = Value::Array(valid.clone());
            self.exec(p, "GC", None, &conf)?;
        }
        Ok(())
    }

    pub fn status(&self, list: &ConfList) -> Result<(), InvokeError> {
        for p in &list.plugins {
            let conf = self.plugin_conf(list, p, None, None);
            self.exec(p, "STATUS", None, &conf)?;
        }
        Ok(())
    }

    fn bad_output(&self, p: &Map<String, Value>, cmd: &str, e: serde_json::Error) -> InvokeError {
        InvokeError {
            plugin: plugin_type(p),
            command: cmd.into(),
            error: Box::new(CniError::new(
                999,
                format!("plugin printed a result that is not JSON: {e}"),
            )),
        }
    }

    fn find(&self, name: &str) -> Option<PathBuf> {
        self.cni_path
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    /// Runs one plugin binary with the CNI environment and `conf` on stdin.
    pub fn exec(
        &self,
        p: &Map<String, Value>,
        command: &str,
        att: Option<&Attachment>,
        conf: &Value,
    ) -> Result<Vec<u8>, InvokeError> {
        let ty = plugin_type(p);
        let fail = |code: u32, msg: String| InvokeError {
            plugin: ty.clone(),
            command: command.into(),
            error: Box::new(CniError::new(code, msg)),
        };
        let bin = self.find(&ty).ok_or_else(|| {
            fail(
                999,
                format!("plugin {ty} not found in CNI_PATH {:?}", self.cni_path),
            )
        })?;
        let path = std::env::join_paths(&self.cni_path).unwrap_or_default();
        let mut cmd = Command::new(&bin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(a) = att {
            let args: Vec<String> = a.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            cmd.env("CNI_CONTAINERID", &a.container_id)
                .env("CNI_NETNS", &a.netns)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_ARGS", args.join(";"));
        }
        let ns_file = match &self.netns {
            Some(ns) => Some(
                File::open(ns).map_err(|e| fail(999, format!("opening {}: {e}", ns.display())))?,
            ),
            None => None,
        };
        if let Some(f) = ns_file {
            // SAFETY: setns is async-signal-safe; the fd outlives the fork.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(999, format!("starting {}: {e}", bin.display())))?;
        {
            let mut stdin = child.stdin.take().expect("piped");
            let _ = stdin.write_all(&serde_json::to_vec(conf).expect("serializable"));
        }
        let out =
            wait_with_timeout(child, self.timeout).map_err(|e| fail(999, format!("{e:#}")))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let error = serde_json::from_slice::<CniError>(&out.stdout).unwrap_or_else(|_| {
            CniError::new(999, format!("exited with {}", out.status))
                .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string())
        });
        Err(InvokeError {
            plugin: ty,
            command: command.into(),
            error: Box::new(error),
        })
    }
}

fn plugin_type(p: &Map<String, Value>) -> String {
    p.get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("?")
        .to_string()
}

fn wait_with_timeout(
    mut child: std::process::Child,
    timeout: Duration,
) -> Result<std::process::Output> {
    let deadline = std::time::Instant::now() + timeout;
    // Drain pipes on threads so a chatty plugin cannot block on a full pipe.
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("plugin did not finish within {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Ok(std::process::Output {
        status,
        stdout: t1.join().unwrap_or_default(),
        stderr: t2.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_versions_negotiation_picks_the_highest_known() {
        let l = ConfList::from_json(br#"{"cniVersion":"1.0.0","cniVersions":["0.4.0","1.1.0","9.9.9"],"name":"n","plugins":[{"type":"x"}]}"#).unwrap();
        assert_eq!(l.cni_version, "1.1.0");
    }

    #[test]
    fn plugins_get_name_version_capabilities_and_prev_result() {
        let l = ConfList::from_json(
            br#"{"cniVersion":"1.1.0","name":"net","plugins":[{"type":"a"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        let rt = Runtime::new(vec![], PathBuf::from("/nonexistent"));
        let mut att = Attachment {
            container_id: "c".into(),
            netns: "/x".into(),
            ifname: "eth0".into(),
            args: vec![],
            capability_args: BTreeMap::new(),
        };
        att.capability_args
            .insert("portMappings".into(), json!([{"hostPort": 8080}]));
        att.capability_args.insert("bandwidth".into(), json!({}));
        let prev = json!({"cniVersion":"1.1.0"});
        let c0 = rt.plugin_conf(&l, &l.plugins[0], Some(&att), None);
        assert_eq!(c0["name"], "net");
        assert!(
            c0.get("runtimeConfig").is_none(),
            "no capability declared, none passed"
        );
        let c1 = rt.plugin_conf(&l, &l.plugins[1], Some(&att), Some(&prev));
        assert_eq!(c1["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(c1["runtimeConfig"].get("bandwidth").is_none());
        assert_eq!(c1["prevResult"]["cniVersion"], "1.1.0");
    }
}
