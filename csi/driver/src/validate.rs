//! What Ceph and the mount tools accept, checked before anything from a request,
//! a Secret or a flag is used.
//!
//! Every string that reaches a librados/librbd call, a helper's command line
//! (`rbd-fuse -p POOL -r IMAGE`, `rbd device map --id USER`), an environment variable
//! (`CEPH_ARGS=--id USER`) or a keyring file (`key = KEY`) passes one of these first.
//! The character sets are deliberately narrower than what Ceph tolerates: a name
//! starting with `-` would be read as an option by the helpers, a newline in a key
//! would add lines to the keyring, and `/` or `@` change what `pool/image@snap` means.
//! Each error names the field and what is allowed, never the value of a secret.

/// Pool, image, user and prefix names: ASCII letters, digits, `.`, `_`, `-`.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn name(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > max {
        return Err(format!("{what} is longer than {max} characters"));
    }
    if let Some(c) = s.chars().find(|c| !is_name_char(*c)) {
        return Err(format!(
            "{what} {s:?} contains {c:?}; use only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    if s.starts_with('-') {
        return Err(format!("{what} {s:?} starts with '-' (it would be read as an option)"));
    }
    Ok(())
}

/// An RBD pool name. Names starting with `.` are Ceph's own (`.mgr`, `.rgw.root`).
pub fn pool(s: &str) -> Result<(), String> {
    name("pool name", s, 128)?;
    if s.starts_with('.') {
        return Err(format!(
            "pool name {s:?} starts with '.', which Ceph reserves for its own pools"
        ));
    }
    Ok(())
}

/// An RBD image name (ours are `<prefix>vol-<uuid>`).
pub fn image(s: &str) -> Result<(), String> {
    name("image name", s, 256)
}

/// `--image-prefix` and `--instance-id`: they become parts of image and object names.
pub fn prefix(what: &str, s: &str) -> Result<(), String> {
    name(what, s, 64)
}

/// A cephx user id, without the `client.` prefix.
pub fn ceph_user(s: &str) -> Result<(), String> {
    name("userID", s, 128)?;
    if s.starts_with('.') {
        return Err(format!("userID {s:?} starts with '.'"));
    }
    Ok(())
}

/// A cephx key: base64 (`ceph auth get-key` prints 40 characters). The value is never
/// echoed in the error.
pub fn cephx_key(s: &str) -> Result<(), String> {
    if !(16..=128).contains(&s.len()) {
        return Err(format!(
            "userKey is {} characters long; a cephx key is base64, about 40 characters (`ceph auth get-key client.<user>`)",
            s.len()
        ));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
    {
        return Err(
            "userKey is not base64 (it holds characters other than A-Z, a-z, 0-9, '+', '/', '='); \
             copy it from `ceph auth get-key client.<user>`"
                .into(),
        );
    }
    Ok(())
}

/// A path the CO gives (staging or target path): absolute, no newline (mountinfo and
/// our state files are line-oriented).
pub fn co_path(what: &str, s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!("{what} {s:?} is not an absolute path"));
    }
    if s.contains(['\n', '\r', '\0']) {
        return Err(format!("{what} contains a newline or NUL"));
    }
    Ok(())
}

/// One mount option from the capability's `mount_flags` (the PV's `mountOptions`).
/// They go to `mount -o` as one argument; options with values (`context=...`) keep
/// their `=`, `:` and `,` inside quotes out.
pub fn mount_flag(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("a mount flag is empty".into());
    }
    if s.starts_with('-') {
        return Err(format!("mount flag {s:?} starts with '-'"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '=' | '.' | ':' | '/' | '@' | '+' | '-')))
    {
        return Err(format!(
            "mount flag {s:?} contains {c:?}; give one option per entry (letters, digits, _ = . : / @ + -)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_change_a_command_line_are_refused() {
        for ok in ["rbd", "replicapool", "ec-data_1", "pool.v2"] {
            assert!(pool(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-p", ".mgr", "a b", "a/b", "a@b", "a\nb", "pööl", &"x".repeat(129)] {
            assert!(pool(bad).is_err(), "{bad:?}");
        }
        assert!(image("csi-strake-vol-0f2c").is_ok());
        assert!(image("--help").is_err());
        assert!(ceph_user("csi-rbd-node").is_ok());
        for bad in ["admin --keyring /etc/shadow", "a\n[client.admin]", "-x", "", "a=b"] {
            assert!(ceph_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_must_be_base64_and_errors_do_not_echo_them() {
        assert!(cephx_key("AQBSdFtlAAAAABAAw1mB3cTqBIm0JX9aUiq3Ug==").is_ok());
        let e = cephx_key("AQBSdFtlAAAAABAA\n[client.admin]\n\tkey = x").unwrap_err();
        assert!(!e.contains("AQBS"), "{e}");
        assert!(cephx_key("short").is_err());
    }

    #[test]
    fn paths_and_mount_flags() {
        assert!(co_path("staging_target_path", "/var/lib/kubelet/x").is_ok());
        assert!(co_path("staging_target_path", "relative").is_err());
        assert!(co_path("target_path", "/a\nb").is_err());
        for ok in [
            "noatime",
            "discard",
            "context=system_u:object_r:container_file_t:s0",
            "uid=1000",
        ] {
            assert!(mount_flag(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-o", "ro,exec", "a b", "x;y"] {
            assert!(mount_flag(bad).is_err(), "{bad:?}");
        }
    }
}
