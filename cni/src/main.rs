//! The `strake-cni` binary, as a container runtime executes it.

use std::io::{Read, Write};
use std::process::ExitCode;
use strake_cni::spec::{code, CniError, Env, LATEST};

fn main() -> ExitCode {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(CniError::new(
            code::IO_FAILURE,
            format!("reading the configuration from stdin: {e}"),
        ));
    }
    match strake_cni::run(&env, &stdin) {
        Ok(Some(out)) => {
            let _ = std::io::stdout().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(mut e: CniError) -> ExitCode {
    if e.cni_version.is_empty() {
        e.cni_version = LATEST.to_string();
    }
    let _ =
        std::io::stdout().write_all(serde_json::to_string(&e).expect("serializable").as_bytes());
    // Also on stderr, for whoever reads the runtime's logs.
    eprintln!("strake-cni: {e}");
    ExitCode::FAILURE
}
