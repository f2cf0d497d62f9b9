//! BIRD's control socket, spoken directly (what `birdc` speaks): a greeting,
//! then one command per line; every reply line starts with a four-digit
//! code, `-` when more lines follow and a space on the last one; a line that
//! starts with a space continues the previous code. Codes 0xxx end a
//! successful command, 8xxx and 9xxx a failed one (BIRD's doc/reply_codes).
//!
//! Speaking it directly spares a `birdc` process per scrape and lets the
//! agent run without the client installed (a BIRD sidecar owns the daemon).

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One line of a reply: its code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub code: u16,
    pub text: String,
}

/// A complete reply: every line, the last one's code saying how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub lines: Vec<Line>,
}

impl Reply {
    pub fn code(&self) -> u16 {
        self.lines.last().map_or(0, |l| l.code)
    }

    pub fn ok(&self) -> bool {
        self.code() < 8000
    }

    /// The text of every line, as birdc would print it.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Reads one reply from `r`: lines up to and including the one whose code
/// is followed by a space.
pub fn read_reply(r: &mut impl BufRead) -> Result<Reply> {
    let mut lines = Vec::new();
    let mut code = 0u16;
    loop {
        let mut raw = String::new();
        if r.read_line(&mut raw)? == 0 {
            bail!("BIRD closed the control connection mid-reply");
        }
        let raw = raw.trim_end_matches(['\n', '\r']);
        if let Some(rest) = raw.strip_prefix(' ') {
            lines.push(Line {
                code,
                text: rest.to_string(),
            });
            continue;
        }
        let (head, text) = raw.split_at(raw.len().min(5));
        let digits = head.get(..4).unwrap_or("");
        code = digits
            .parse()
            .map_err(|_| anyhow!("BIRD sent a line without a reply code: {raw:?}"))?;
        lines.push(Line {
            code,
            text: text.to_string(),
        });
        match head.as_bytes().get(4) {
            Some(b'-') => {}
            Some(b' ') | None => return Ok(Reply { lines }),
            _ => bail!("BIRD sent a malformed reply line: {raw:?}"),
        }
    }
}

/// A connection to one BIRD's control socket.
pub struct Control {
    path: PathBuf,
    timeout: Duration,
}

impl Control {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Control {
            path: path.into(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one command and returns its reply, whether BIRD accepted it or
    /// not; fails only when BIRD cannot be reached or talked to.
    pub fn call(&self, command: &str) -> Result<Reply> {
        if command.contains('\n') {
            bail!("a BIRD command is one line: {command:?}");
        }
        let s = UnixStream::connect(&self.path).with_context(|| {
            format!(
                "BIRD is not answering on {} (is it running?)",
                self.path.display()
            )
        })?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        let mut r = BufReader::new(s.try_clone()?);
        let hello = read_reply(&mut r).context("reading BIRD's greeting")?;
        if hello.code() != 1 {
            bail!("BIRD greeted with {:?}", hello.text());
        }
        (&s).write_all(format!("{command}\n").as_bytes())?;
        read_reply(&mut r).with_context(|| format!("reading BIRD's reply to `{command}`"))
    }

    /// Runs a command that must succeed.
    pub fn run(&self, command: &str) -> Result<Reply> {
        let reply = self.call(command)?;
        if !reply.ok() {
            bail!(
                "BIRD refused `{command}`: {} ({})",
                reply.text().trim(),
                reply.code()
            );
        }
        Ok(reply)
    }

    /// Checks `file` with BIRD's own parser, then makes it the running
    /// configuration. A configuration BIRD refuses changes nothing: the
    /// previous one stays in force.
    pub fn configure(&self, file: &Path) -> Result<()> {
        let f = file.display().to_string();
        if f.contains('"') {
            bail!("BIRD cannot be given a path with a quote: {f}");
        }
        self.run(&format!("configure check \"{f}\""))?;
        self.run(&format!("configure \"{f}\""))?;
        Ok(())
    }

    pub fn protocols(&self) -> Result<Vec<crate::show::Protocol>> {
        Ok(crate::show::protocols(&self.run("show protocols all")?))
    }

    pub fn routes(&self) -> Result<Vec<crate::show::Route>> {
        Ok(crate::show::routes(&self.run("show route all")?))
    }

    /// Routes BIRD sends to one session's peer.
    pub fn exported(&self, protocol: &str) -> Result<Vec<crate::show::Route>> {
        Ok(crate::show::routes(
            &self.run(&format!("show route export {protocol}"))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn replies_are_read_up_to_their_last_code() {
        let raw = "2002-Name       Proto      Table      State  Since         Info\n\
                   1002-device1    Device     ---        up     1796259743    \n \
                   k          Kernel     master4    up     1796259743    \n\
                   0000 \n\
                   0001 BIRD 2.0.12 ready.\n";
        let mut r = Cursor::new(raw.as_bytes());
        let reply = read_reply(&mut r).unwrap();
        assert_eq!(reply.lines.len(), 4);
        assert_eq!(reply.lines[2].code, 1002, "a continuation keeps its code");
        assert!(reply.lines[2].text.starts_with("k "));
        assert!(reply.ok());
        assert_eq!(
            read_reply(&mut r).unwrap().code(),
            1,
            "the next reply is left"
        );
    }

    #[test]
    fn a_refusal_and_a_broken_stream_are_told_apart() {
        let mut r = Cursor::new(
            "0002-Reading configuration from /x.conf\n8002 /x.conf:5:13 syntax error, unexpected GATEWAY\n"
                .as_bytes(),
        );
        let reply = read_reply(&mut r).unwrap();
        assert!(!reply.ok());
        assert!(reply.text().contains("syntax error, unexpected GATEWAY"));
        let mut cut = Cursor::new("1002-device1 Device\n".as_bytes());
        assert!(read_reply(&mut cut)
            .unwrap_err()
            .to_string()
            .contains("closed the control connection"));
        let mut junk = Cursor::new("hello\n".as_bytes());
        assert!(read_reply(&mut junk).is_err());
    }

    #[test]
    fn an_absent_daemon_is_named_with_its_socket() {
        let c = Control::new("/nonexistent/bird.ctl");
        let e = format!("{:#}", c.call("show status").unwrap_err());
        assert!(
            e.contains("BIRD is not answering on /nonexistent/bird.ctl"),
            "{e}"
        );
    }
}
