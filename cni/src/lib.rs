//! strake's CNI plugin (spec 1.1.0: ADD, DEL, CHECK, GC, STATUS, VERSION).
//! The runtime side of the spec (executing a conflist as containerd does)
//! belongs to the lab (`strake_lab::cni_runtime`), not to the plugin.

pub mod plugin;
pub mod spec;

use spec::{code, CniError, Env};

/// Runs one plugin invocation: returns what to print on stdout and whether it
/// succeeded. Errors carry the config's cniVersion when it is known.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<String>, CniError> {
    let command = env.command.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "missing environment variables: CNI_COMMAND",
        )
    })?;
    if command == "VERSION" {
        return Ok(Some(plugin::version_info(stdin)));
    }
    let conf = plugin::parse_conf(stdin)?;
    let r = match command.as_str() {
        "ADD" => plugin::cmd_add(&conf, env),
        "DEL" => plugin::cmd_del(&conf, env),
        "CHECK" => plugin::cmd_check(&conf, env),
        "GC" => plugin::cmd_gc(&conf),
        "STATUS" => plugin::cmd_status(&conf),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
        )),
    };
    r.map_err(|mut e| {
        e.cni_version = conf.cni_version.clone();
        e
    })
}
